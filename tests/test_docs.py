"""Docs are part of the product: every command, config key, outcome, metric and scenario key
is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from modelwatch import config as cfg
from modelwatch.cli import cli
from modelwatch.metrics import ProbeMetrics
from modelwatch.outcomes import Outcome
from modelwatch.sim.scenario import ERROR_KINDS, ModelBehaviour, Scenario

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}


def documented(text: str, name: str) -> bool:
    return f"`{name}`" in text or re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", text) is not None


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_in_the_readme(command):
    assert f"`modelwatch {command}" in README


def config_keys() -> set[str]:
    keys = set(cfg._TOP_KEYS)
    for model in (cfg.StorageConfig, cfg.ServerConfig, cfg.ProbeConfig, cfg.ProviderConfig,
                  cfg.TargetConfig, cfg.PriceConfig, cfg.StatusConfig, cfg.StatusThresholds):
        keys |= set(model.model_fields)
    return keys


@pytest.mark.parametrize("key", sorted(config_keys()))
def test_every_config_key_is_documented(key):
    assert documented(DOCS["configuration.md"], key)


@pytest.mark.parametrize("outcome", [o.value for o in Outcome])
def test_every_outcome_is_documented(outcome):
    assert f"| `{outcome}` |" in DOCS["probes.md"]


def metric_names() -> set[str]:
    return set(ProbeMetrics(CollectorRegistry(), location="x").family_names())


@pytest.mark.parametrize("name", sorted(metric_names()))
def test_every_metric_is_documented(name):
    assert f"| `{name}` |" in DOCS["metrics.md"]


def test_every_column_is_documented():
    from modelwatch.outcomes import COLUMNS
    for column in COLUMNS:
        assert documented(DOCS["metrics.md"], column), column


@pytest.mark.parametrize("key", sorted(set(Scenario.model_fields) | set(ModelBehaviour.model_fields)
                                       | set(ERROR_KINDS)))
def test_every_scenario_key_and_error_kind_is_documented(key):
    assert documented(DOCS["simulator.md"], key)


def test_readme_links_resolve():
    for link in re.findall(r"\]\((docs/[^)]+)\)", README):
        assert (ROOT / link).exists(), link


def test_the_contributing_guide_names_every_probes_module_and_spec_field():
    import dataclasses

    from modelwatch.probes.spec import ProbeSpec
    guide = DOCS["contributing.md"]
    for module in sorted((ROOT / "src" / "modelwatch" / "probes").glob("*.py")):
        assert f"`{module.name}`" in guide, module.name
    for field in dataclasses.fields(ProbeSpec):
        assert f"`{field.name}`" in guide, field.name
    assert "docs/contributing.md" in README
