"""The probe registry: one prober per (provider type, kind).

Config validation reads the valid kinds from here, so adding a provider means
one new module and one line below.
"""

from __future__ import annotations

from modelwatch.probes.base import Prober
from modelwatch.probes.openai_chat import probe_openai_chat
from modelwatch.probes.openai_realtime import probe_openai_realtime

PROBERS: dict[tuple[str, str], Prober] = {
    ("openai", "rest"): probe_openai_chat,
    ("openai-compatible", "rest"): probe_openai_chat,
    ("azure-openai", "rest"): probe_openai_chat,
    ("openai", "realtime"): probe_openai_realtime,
    ("openai-compatible", "realtime"): probe_openai_realtime,
    ("azure-openai", "realtime"): probe_openai_realtime,
}


def supported_kinds(provider_type: str) -> set[str]:
    """The probe kinds a provider type has."""
    return {kind for (ptype, kind) in PROBERS if ptype == provider_type}


def prober_for(provider_type: str, kind: str) -> Prober:
    """The prober for a provider type and kind (config validation guarantees it exists)."""
    return PROBERS[(provider_type, kind)]
