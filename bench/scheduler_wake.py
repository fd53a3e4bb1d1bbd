"""The scheduler's own CPU per wake-up of its loop: the idle check and the due check, nothing due.

A cadence's loop wakes about once per probe start (a slot every interval / n), so this is the
scheduler's bookkeeping per probe, apart from starting the probe itself. 1,000 probes in four
intervals (four cadences); the monotonic clock is injected and stands still after the first
slots, so every timed call finds nothing due. No network, no daemon. It calls the scheduler's
private ``_idle_seconds`` and ``_run_pending``, which 0.1.0 (with ``schedule``) has too, so the
same script measures either: PYTHONPATH=/path/to/other/src .venv/bin/python bench/scheduler_wake.py

Example:  .venv/bin/python bench/scheduler_wake.py
"""

from __future__ import annotations

import asyncio
import timeit

from prometheus_client import CollectorRegistry

from modelwatch.config import ProbeConfig, ProbeJob, ProviderConfig
from modelwatch.metrics import ProbeMetrics
from modelwatch.scheduler import Scheduler

PROBES = 1000
INTERVALS = (0.5, 1.0, 2.0, 4.0)
CALLS = 200_000


def jobs() -> list[ProbeJob]:
    provider = ProviderConfig(type="openai", base_url="http://127.0.0.1:9", max_concurrent_probes=1000)
    return [ProbeJob(target=f"t{i}", provider_name="p", provider=provider, api_key=None, model="m",
                     probe=ProbeConfig(kind="rest", interval=INTERVALS[i % len(INTERVALS)]), location=None)
            for i in range(PROBES)]


async def main() -> None:
    clock = [1000.0]
    sched = Scheduler(lambda job: asyncio.sleep(0), ProbeMetrics(CollectorRegistry()), 1000,
                      monotonic=lambda: clock[0])
    sched.set_jobs(jobs())
    sched._run_pending()  # the first slots; the clock then stands still, so nothing is due

    def wake() -> None:
        sched._idle_seconds()
        sched._run_pending()

    best = min(timeit.repeat(wake, number=CALLS, repeat=5)) / CALLS
    print(f"{best * 1e6:.2f} us per wake-up ({PROBES} probes in {len(INTERVALS)} intervals, best of 5)")


if __name__ == "__main__":
    asyncio.run(main())
