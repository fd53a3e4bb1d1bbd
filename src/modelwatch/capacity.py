"""Concurrency sizing: can a limit carry the schedule it serves?

A limit of ``max_concurrent_probes`` carries a schedule when, on average, the
probes it serves need no more slots than it has. By Little's law the slots in
use are the starts per second times the seconds each probe holds a slot:
``sum(duration / interval)`` over the probes. Above the limit, probes queue for
a slot, every start slips later and runs are skipped.

Two estimates of that need, one before and one while running:

* :func:`shortfalls` (``modelwatch check-config``) uses a typical duration per
  probe kind, :data:`TYPICAL_DURATION_S`, capped by the probe's ``timeout``;
* :class:`Saturation` (the daemon) uses the durations it measures and notices
  when a limit stops carrying its schedule and when it carries it again.
"""

from __future__ import annotations

import dataclasses
import math

from modelwatch.config import Config, ProbeConfig
from modelwatch.job import ProbeJob

# What a healthy probe of each kind typically takes against a hosted API (a tiny prompt, a
# 16-token cap): a streamed REST answer well under a second, a realtime session with its
# WebSocket handshake and one short response about two, a model list a few hundred ms.
TYPICAL_DURATION_S = {"rest": 1.0, "realtime": 2.0, "models": 0.3}


def expected_duration(probe: ProbeConfig) -> float:
    """Seconds a probe of this kind typically holds a concurrency slot (never more than its timeout)."""
    return min(TYPICAL_DURATION_S.get(probe.kind, 1.0), probe.timeout)


def needed_slots(jobs: list[ProbeJob] | tuple[ProbeJob, ...]) -> float:
    """Slots these probes keep busy on average: ``sum(expected duration / interval)``."""
    return sum(expected_duration(j.probe) / j.probe.interval for j in jobs)


@dataclasses.dataclass(frozen=True)
class Shortfall:
    """A limit that the schedule's expected concurrency exceeds."""

    provider: str | None  # None: the global max_concurrent_probes
    limit: int
    probes: int
    needed: float

    def message(self) -> str:
        """One line for check-config, naming the limit, what it is and what is needed."""
        kinds = ", ".join(f"{k} {v:g}s" for k, v in TYPICAL_DURATION_S.items())
        where = f"provider {self.provider}: max_concurrent_probes" if self.provider else \
            "max_concurrent_probes (global)"
        whose = "its" if self.provider else "all"
        return (f"{where} is {self.limit} but {whose} {self.probes} probes need about {self.needed:.1f} "
                f"at once (probes x expected duration / interval, expected: {kinds}, at most the "
                f"timeout): the schedule will slip; raise it to at least {math.ceil(round(self.needed, 6))} "
                f"or lengthen intervals")


def shortfalls(config: Config) -> list[Shortfall]:
    """The provider limits, then the global one, that the config's schedule would exceed."""
    by_provider: dict[str, list[ProbeJob]] = {}
    for job in config.jobs:
        by_provider.setdefault(job.provider_name, []).append(job)
    found = []
    for name, jobs in sorted(by_provider.items()):
        limit, needed = jobs[0].provider.max_concurrent_probes, needed_slots(jobs)
        if needed > limit:
            found.append(Shortfall(name, limit, len(jobs), needed))
    needed = needed_slots(config.jobs)
    if needed > config.max_concurrent_probes:
        found.append(Shortfall(None, config.max_concurrent_probes, len(config.jobs), needed))
    return found


class Saturation:
    """Whether one limit carries its schedule, from the durations of the probes it let run.

    ``rate`` is the planned starts per second of the probes behind the limit
    (``sum(1 / interval)``); the mean duration is a running average over the
    last ~``1 / ALPHA`` probes. ``needed = rate * mean`` is compared with the
    limit after ``MIN_RUNS`` probes: above it the limit is *behind*, and it is
    back once ``needed`` falls below ``RECOVER_BELOW`` of it (so a need that
    hovers at the limit does not flap). :meth:`observe` is a few float
    operations: it runs once per probe.
    """

    ALPHA = 0.05
    MIN_RUNS = 8
    RECOVER_BELOW = 0.9

    __slots__ = ("limit", "rate", "mean_s", "runs", "behind")

    def __init__(self, limit: int, rate: float = 0.0) -> None:
        self.limit = limit
        self.rate = rate
        self.mean_s = 0.0
        self.runs = 0
        self.behind = False

    @property
    def needed(self) -> float:
        """Slots the schedule needs on average, from the measured durations."""
        return self.rate * self.mean_s

    def observe(self, duration_s: float) -> bool | None:
        """Record one probe's duration; return the new state if it changed (True: behind), else None."""
        self.runs += 1
        self.mean_s += (duration_s - self.mean_s) * max(self.ALPHA, 1.0 / self.runs)
        if self.runs < self.MIN_RUNS:
            return None
        needed = self.rate * self.mean_s
        if not self.behind and needed > self.limit:
            self.behind = True
            return True
        if self.behind and needed < self.limit * self.RECOVER_BELOW:
            self.behind = False
            return False
        return None
