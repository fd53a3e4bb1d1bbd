"""Probe cadence: ``schedule`` decides when, asyncio runs the probes.

Each job is a ``schedule`` interval job whose first run is offset so that
start times spread evenly over the interval (no thundering herd). Runs keep
their phase (the next run is the planned time plus the interval, not "now"
plus the interval), a run that finds its previous run still going is skipped
and counted, and concurrency is bounded globally and per provider. Firing a
run only creates a task, so a slow probe never delays another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

import schedule

from modelwatch.config import ProbeJob
from modelwatch.metrics import ProbeMetrics

log = logging.getLogger("modelwatch.scheduler")

MAX_SLEEP_S = 1.0  # wake at least this often, so reloads and stops are noticed


class Scheduler:
    """Runs each job every ``job.probe.interval`` seconds until stopped."""

    def __init__(self, run_job: Callable[[ProbeJob], Awaitable[None]], metrics: ProbeMetrics,
                 max_concurrent: int) -> None:
        self._run_job = run_job
        self._metrics = metrics
        self._sched = schedule.Scheduler()
        self._global = asyncio.Semaphore(max_concurrent)
        self._per_provider: dict[str, asyncio.Semaphore] = {}
        self._entries: dict[tuple[str, str], tuple[ProbeJob, schedule.Job]] = {}
        self._running: dict[tuple[str, str], asyncio.Task] = {}
        self._fired: list[tuple[schedule.Job, dt.datetime, dt.timedelta]] = []
        self._wake = asyncio.Event()

    @property
    def jobs(self) -> list[ProbeJob]:
        """The jobs scheduled now."""
        return [job for job, _ in self._entries.values()]

    def set_jobs(self, jobs: tuple[ProbeJob, ...] | list[ProbeJob]) -> tuple[list, list]:
        """Schedule exactly these jobs; unchanged ones keep their cadence. Returns (added, removed)."""
        wanted = {job.key: job for job in jobs}
        removed = [job for key, (job, _) in self._entries.items() if wanted.get(key) != job]
        for job in removed:
            self._sched.cancel_job(self._entries.pop(job.key)[1])
        added = [job for key, job in wanted.items() if key not in self._entries]
        now = dt.datetime.now()
        for i, job in enumerate(added):
            sjob = self._sched.every(job.probe.interval).seconds
            sjob.do(self._fire, job.key, sjob)
            offset = job.probe.interval * i / max(len(added), 1)
            sjob.next_run = now + dt.timedelta(seconds=offset)
            self._entries[job.key] = (job, sjob)
        self._wake.set()
        return added, removed

    async def run(self) -> None:
        """Fire due jobs until cancelled."""
        while True:
            idle = self._sched.idle_seconds
            delay = MAX_SLEEP_S if idle is None else min(max(idle, 0.0), MAX_SLEEP_S)
            self._wake.clear()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
            try:
                self._sched.run_pending()
            except Exception:  # noqa: BLE001 - the schedule must outlive any one bad run
                log.exception("scheduler run failed")
            finally:
                self._keep_phase()

    def _fire(self, key: tuple[str, str], sjob: schedule.Job) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        job = entry[0]
        self._fired.append((sjob, sjob.next_run, dt.timedelta(seconds=job.probe.interval)))
        if key in self._running:
            self._metrics.skipped.labels(*self._metrics.job_labels(job)).inc()
            log.info("run skipped, previous still going target=%s kind=%s", job.target, job.probe.kind)
            return
        task = asyncio.get_running_loop().create_task(self._guarded(job))
        self._running[key] = task
        task.add_done_callback(lambda _t, k=key: self._running.pop(k, None))

    def _keep_phase(self) -> None:
        """Next run = planned + interval (skipping missed slots), not now + interval."""
        now = dt.datetime.now()
        for sjob, planned, period in self._fired:
            nxt = planned + period
            while nxt <= now:
                nxt += period
            sjob.next_run = nxt
        self._fired.clear()

    async def _guarded(self, job: ProbeJob) -> None:
        sem = self._per_provider.setdefault(
            job.provider_name, asyncio.Semaphore(job.provider.max_concurrent_probes))
        async with self._global, sem:
            self._metrics.in_flight.inc()
            try:
                await self._run_job(job)
            except Exception:  # noqa: BLE001 - one job's bug must not stop the schedule
                log.exception("probe run failed target=%s kind=%s", job.target, job.probe.kind)
            finally:
                self._metrics.in_flight.dec()

    async def drain(self, grace_s: float) -> int:
        """Let running probes finish for up to ``grace_s``, then cancel the rest; return how many."""
        tasks = list(self._running.values())
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)


async def watch_loop_lag(metrics: ProbeMetrics, every_s: float = 0.1) -> None:
    """Observe how late the loop wakes a timer; the daemon's own honesty signal."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(every_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - start - every_s))
