"""The shipped probe catalogs (``probes/*.yaml``): each loads, is priced and is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelwatch.config import load_config
from modelwatch.cost import daily_cost_usd

ROOT = Path(__file__).parent.parent
CATALOGS = sorted((ROOT / "probes").glob("*.yaml"))
DUMMY_ENV = {name: "dummy-key-for-check-config" for name in (
    "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY")}
DUMMY_ENV["AZURE_OPENAI_RESOURCE"] = "example-resource"
PROVIDER_CATALOGS = {"openai", "azure-openai", "anthropic", "gemini", "openrouter", "local"}


def main_config(tmp_path: Path, include: str) -> Path:
    path = tmp_path / "modelwatch.yaml"
    path.write_text(f"storage: {{path: {tmp_path / 'mw.db'}}}\ninclude: ['{include}']\n")
    return path


def check_config(config: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(config)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def test_one_catalog_per_provider():
    assert {p.stem for p in CATALOGS} == PROVIDER_CATALOGS


@pytest.mark.slow
@pytest.mark.parametrize("catalog", CATALOGS, ids=lambda p: p.stem)
def test_catalog_passes_check_config_with_dummy_keys(tmp_path, catalog):
    done = check_config(main_config(tmp_path, str(catalog)), DUMMY_ENV)
    assert done.returncode == 0, done.stdout + done.stderr


def test_all_catalogs_together_have_unique_names(tmp_path, monkeypatch):
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(main_config(tmp_path, str(ROOT / "probes" / "*.yaml")))
    assert len({j.provider_name for j in cfg.jobs}) == 8  # vllm, ollama and llama-cpp-python share local.yaml
    for job in cfg.jobs:
        assert job.target.split("/")[0] in {"openai", "azure", "anthropic", "gemini", "openrouter", "vllm",
                                            "ollama", "llama-cpp-python"}
        assert job.price is not None, job.target  # the budget can count every probe
        assert job.probe.max_tokens <= 64 and len(job.probe.prompt) <= 20  # probes stay tiny
        assert job.probe.interval >= 30


@pytest.mark.slow
def test_a_catalog_without_its_key_names_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env |= {k: v for k, v in DUMMY_ENV.items() if k != "ANTHROPIC_API_KEY"}
    config = main_config(tmp_path, str(ROOT / "probes" / "anthropic.yaml"))
    done = subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(config)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert "environment variable ANTHROPIC_API_KEY is not set" in done.stderr


def test_seed_realtime_model_has_text_and_audio_beside_its_rest_sibling(tmp_path, monkeypatch):
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    jobs = load_config(main_config(tmp_path, str(ROOT / "probes" / "openai.yaml"))).jobs
    realtime = {j.probe.modality for j in jobs
                if j.model == "gpt-4o-mini-realtime-preview" and j.probe.kind == "realtime"}
    assert realtime == {"text", "audio"}
    assert any(j.model == "gpt-4o-mini" and j.probe.kind == "rest" for j in jobs)


@pytest.mark.parametrize("catalog", CATALOGS, ids=lambda p: p.stem)
def test_docs_state_each_catalogs_daily_cost(tmp_path, catalog, monkeypatch):
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    jobs = load_config(main_config(tmp_path, str(catalog))).jobs
    usd = sum(daily_cost_usd(j) or 0.0 for j in jobs)
    docs = (ROOT / "docs" / "probes.md").read_text()
    row = re.search(rf"^\| `probes/{re.escape(catalog.name)}` \|.*\| \$([0-9.]+) \|$", docs, re.M)
    assert row, f"docs/probes.md has no cost row for {catalog.name}"
    assert float(row.group(1)) == pytest.approx(usd, abs=0.005)


def sdk_model_ids() -> dict[str, set[str]]:
    """Model ids the installed official SDKs know, by provider type (their ``Literal`` model lists)."""
    from typing import get_args

    from anthropic.types import ModelParam
    from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
    from openai.types.shared import ChatModel

    def literals(tp) -> set[str]:  # noqa: ANN001 - a typing construct
        args = get_args(tp)
        return {a for a in args if isinstance(a, str)} | {x for a in args if not isinstance(a, str)
                                                           for x in literals(a)}

    realtime = literals(RealtimeSessionCreateRequest.model_fields["model"].annotation)
    return {"openai": literals(ChatModel) | realtime, "anthropic": literals(ModelParam)}


# Catalog ids the SDKs do not list, each with the reason it is still right to ship.
NOT_IN_SDK: dict[str, str] = {}


def test_sdk_model_lists_are_read():
    known = sdk_model_ids()
    assert {"gpt-4o-mini", "gpt-4o-mini-realtime-preview"} <= known["openai"]
    assert "claude-haiku-4-5" in known["anthropic"]


@pytest.mark.parametrize("catalog", ["openai", "azure-openai", "anthropic"])
def test_catalog_model_ids_are_known_to_the_installed_sdk(tmp_path, catalog, monkeypatch):
    """A model the SDK no longer lists has usually been retired: update the catalog (or allow-list it)."""
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AZURE_OPENAI_CHAT_DEPLOYMENT", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_REALTIME_DEPLOYMENT", raising=False)
    jobs = load_config(main_config(tmp_path, str(ROOT / "probes" / f"{catalog}.yaml"))).jobs
    known = sdk_model_ids()["anthropic" if catalog == "anthropic" else "openai"]
    unknown = sorted({j.model for j in jobs} - known - set(NOT_IN_SDK))
    assert unknown == [], f"{catalog}.yaml: not in the installed SDK's model list: {unknown}"


def test_llama_cpp_python_is_probed_the_way_it_can_answer(tmp_path):
    """It ignores max_completion_tokens, and any second request (a models probe too) interrupts it."""
    jobs = [j for j in load_config(main_config(tmp_path, str(ROOT / "probes" / "local.yaml"))).jobs
            if j.provider_name == "llama-cpp-python"]
    assert [(j.probe.kind, j.probe.max_tokens_field) for j in jobs] == [("rest", "max_tokens")]
    assert jobs[0].provider.finish_reason == "required"  # an interrupted stream must show
