"""``ProbeJob``: one scheduled probe, the unit the scheduler, the probers and the store pass around.

It lives apart from :mod:`modelwatch.config` so that the probers can name it
without importing the config loader, which itself reads the probe registry
(:mod:`modelwatch.probes`): config -> probes -> job, never back.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing config here would close the loop
    from modelwatch.config import PriceConfig, ProbeConfig, ProviderConfig
    from modelwatch.secrets import Secret


@dataclasses.dataclass(frozen=True)
class ProbeJob:
    """One scheduled probe: a target's probe with its provider resolved."""

    target: str
    provider_name: str
    provider: ProviderConfig
    api_key: Secret | None
    model: str
    probe: ProbeConfig
    location: str | None
    price: PriceConfig | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(target, kind): unique in a config, the identity of a series."""
        return (self.target, self.probe.kind)
