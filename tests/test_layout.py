"""The code's layout holds: provider modules stand alone, and the registry is the one list.

A provider module (one whose prober is in the registry and speaks one wire
protocol) imports the neutral modules (base, http, websocket, parsing, spec,
audio) and its family's, never another provider module. A session-shape
module (a voice chain, a conversation) composes provider modules' sans-I/O
pieces into a longer session; no provider module imports one; the probes never import the config loader (it
imports them). Every provider type and kind the registry declares is accepted
by config, read by cost, and documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import modelwatch.probes as registry
from modelwatch.config import ProbeConfig, ProviderConfig, load_config
from modelwatch.cost import is_paid, tokens_per_probe
from modelwatch.outcomes import Outcome

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "src" / "modelwatch"
PROBES_MD = (ROOT / "docs" / "probes.md").read_text()
CONFIGURATION_MD = (ROOT / "docs" / "configuration.md").read_text()
# The voice-agent kinds are session shapes over the wire protocols, not protocols of their own.
SHAPE_KINDS = ("voice-chain", "conversation")
PROVIDER_MODULES = sorted({spec.prober.__module__ for spec in registry.SPECS if spec.kind not in SHAPE_KINDS})
SHAPE_MODULES = sorted({spec.prober.__module__ for spec in registry.SPECS if spec.kind in SHAPE_KINDS})


def runtime_imports(path: Path) -> set[str]:
    """The modules a file imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


def module_file(name: str) -> Path:
    return PACKAGE.parent / (name.replace(".", "/") + ".py")


def test_the_registry_names_the_provider_modules():
    assert PROVIDER_MODULES == ["modelwatch.probes." + m for m in (
        "anthropic", "gemini", "gemini_live", "models", "openai_chat", "openai_realtime", "openai_responses",
        "openai_webrtc")]


@pytest.mark.parametrize("module", PROVIDER_MODULES)
def test_a_provider_module_imports_no_other_provider_module(module):
    others = set(PROVIDER_MODULES) - {module}
    assert not runtime_imports(module_file(module)) & others
    assert not runtime_imports(module_file(module)) & set(SHAPE_MODULES)


def test_the_registry_names_the_session_shape_modules():
    assert SHAPE_MODULES == ["modelwatch.probes." + m for m in ("conversation", "conversation_realtime",
                                                                "voice_chain")]
    assert set(SHAPE_MODULES).isdisjoint(PROVIDER_MODULES)


@pytest.mark.parametrize("path", sorted((PACKAGE / "probes").glob("*.py")) + [PACKAGE / "job.py"],
                         ids=lambda p: p.name)
def test_probes_never_import_the_config_loader(path):
    # config imports the registry; an import back would be a cycle.
    assert "modelwatch.config" not in runtime_imports(path)


@pytest.mark.parametrize("ptype", registry.PROVIDER_TYPES)
def test_every_provider_type_is_accepted_and_documented(ptype):
    assert ProviderConfig(type=ptype, base_url="http://127.0.0.1:9").type == ptype
    assert f"`{ptype}`" in CONFIGURATION_MD
    assert ptype in registry.PROVIDERS and registry.supported_kinds(ptype)


@pytest.mark.parametrize("kind", registry.PROBE_KINDS)
def test_every_kind_is_accepted_and_documented(kind):
    assert ProbeConfig(kind=kind).kind == kind
    assert re.search(rf"^## `kind: {kind}`", PROBES_MD, re.M), f"docs/probes.md has no section for {kind}"


def _sections(kind: str) -> list[str]:
    return re.findall(rf"^## `kind: {kind}`.*$", PROBES_MD, re.M)


@pytest.mark.parametrize("spec", registry.SPECS, ids=lambda s: f"{s.kind}-{s.api}-{'+'.join(s.provider_types)}")
def test_every_spec_is_documented_and_classifies_a_bad_key_as_auth_error(spec):
    for ptype in spec.provider_types:
        assert any(f"`{ptype}`" in h or "every provider type" in h for h in _sections(spec.kind)), (spec.kind, ptype)
    if spec.api != "chat":
        assert f"`api: {spec.api}`" in PROBES_MD
    assert spec.classify(401, {"error": {"message": "bad key"}})[0] is Outcome.AUTH_ERROR


@pytest.mark.parametrize("spec", registry.SPECS, ids=lambda s: f"{s.kind}-{s.api}-{'+'.join(s.provider_types)}")
def test_a_spec_names_the_transport_its_module_uses(spec):
    imports = runtime_imports(module_file(spec.prober.__module__))
    assert ("modelwatch.probes.websocket" in imports) is (spec.transport == "websocket")
    # a WebRTC call is signalled over HTTP: its module reads answers with the HTTP helpers
    assert ("modelwatch.probes.http" in imports) is (spec.transport in ("http", "webrtc"))
    assert ("modelwatch.ice" in imports) is (spec.transport == "webrtc")


def test_config_cost_and_the_daemon_read_every_spec(tmp_path):
    """One provider of every type with every kind it has: all load, and cost reads each spec."""
    providers = "\n".join(f"  p{i}: {{type: {t}, base_url: 'http://127.0.0.1:9/v1', api_key: k}}"
                          for i, t in enumerate(registry.PROVIDER_TYPES))
    targets = "\n".join(
        f"  - {{name: t{i}-{spec.kind}-{spec.api}-{spec.transport}, provider: p{i}, model: m, "
        f"probes: [{{kind: {spec.kind}, api: {spec.api}"
        + (", transport: webrtc" if spec.transport == "webrtc" else "") + "}]}"
        for i, t in enumerate(registry.PROVIDER_TYPES) for spec in registry.SPECS if t in spec.provider_types)
    path = tmp_path / "all.yaml"
    path.write_text(f"providers:\n{providers}\ntargets:\n{targets}\n")
    jobs = load_config(path).jobs
    assert len(jobs) == sum(len(spec.provider_types) for spec in registry.SPECS)
    for job in jobs:
        spec = registry.job_spec(job)
        assert is_paid(job) is spec.paid
        assert tokens_per_probe(job) == spec.estimate(job)
        assert (sum(tokens_per_probe(job)) > 0) is spec.paid
        assert registry.prober_for(job.provider.type, job.probe.kind) is not None
