"""The probe registry: one prober per (provider type, kind).

Config validation reads the valid kinds from here, so adding a provider means
one new module and one line below.
"""

from __future__ import annotations

from modelwatch.probes.base import Prober
from modelwatch.probes.openai_chat import probe_openai_chat

PROBERS: dict[tuple[str, str], Prober] = {
    ("openai", "rest"): probe_openai_chat,
    ("openai-compatible", "rest"): probe_openai_chat,
}


def supported_kinds(provider_type: str) -> set[str]:
    """The probe kinds a provider type has."""
    return {kind for (ptype, kind) in PROBERS if ptype == provider_type}


def prober_for(provider_type: str, kind: str) -> Prober:
    """The prober for a provider type and kind (config validation guarantees it exists)."""
    return PROBERS[(provider_type, kind)]
