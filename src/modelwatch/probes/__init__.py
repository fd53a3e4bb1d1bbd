"""The probe registry: one prober per (provider type, kind).

Config validation reads the valid kinds from here, so adding a provider means
one new module and one line below.
"""

from __future__ import annotations

from modelwatch.probes.anthropic import probe_anthropic
from modelwatch.probes.base import Prober
from modelwatch.probes.gemini import probe_gemini
from modelwatch.probes.gemini_live import probe_gemini_live
from modelwatch.probes.models import probe_models
from modelwatch.probes.openai_realtime import probe_openai_realtime
from modelwatch.probes.openai_responses import probe_openai_rest

PROBERS: dict[tuple[str, str], Prober] = {
    # Chat Completions, or the Responses API with ``api: responses``
    ("openai", "rest"): probe_openai_rest,
    ("openai-compatible", "rest"): probe_openai_rest,
    ("azure-openai", "rest"): probe_openai_rest,
    ("openai", "realtime"): probe_openai_realtime,
    ("openai-compatible", "realtime"): probe_openai_realtime,
    ("azure-openai", "realtime"): probe_openai_realtime,
    ("gemini", "rest"): probe_gemini,  # streamGenerateContent (SSE)
    ("gemini", "realtime"): probe_gemini_live,
    ("anthropic", "rest"): probe_anthropic,  # Messages streaming
    # the free check: no tokens, so a spent budget does not pause it
    **{(ptype, "models"): probe_models
       for ptype in ("openai", "openai-compatible", "azure-openai", "anthropic", "gemini")},
}


def supported_kinds(provider_type: str) -> set[str]:
    """The probe kinds a provider type has."""
    return {kind for (ptype, kind) in PROBERS if ptype == provider_type}


def prober_for(provider_type: str, kind: str) -> Prober:
    """The prober for a provider type and kind (config validation guarantees it exists)."""
    return PROBERS[(provider_type, kind)]
