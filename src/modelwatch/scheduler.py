"""Probe cadence: slots on the monotonic clock decide when, asyncio runs the probes.

Probes that share an interval form one *cadence*: a slot every
``interval / n`` seconds that starts the next of its ``n`` probes in turn.
So start times are spread evenly over the interval (no thundering herd, at
start-up or ever), each probe still runs once per
interval, and the scheduler's own work per wake-up depends on the number of
distinct intervals, not on the number of targets. Slots keep their phase (the
next slot is the planned one plus the period, not "now" plus the period); a
loop that wakes late starts the slots it missed, and one that fell more than
a whole interval behind skips ahead instead of bursting.

Timing runs on the monotonic clock: each cadence keeps its next slot as a
monotonic reading, and the loop sleeps until the earliest one (at most
``MAX_SLEEP_S``). An NTP step of the wall clock therefore neither stalls nor
bursts a cadence. (A job library such as ``schedule`` reads the wall clock,
``datetime.now()``, to decide what is due: it would do both, and here it would
only duplicate the slot the cadence keeps; see the README's dependency table.)
Results keep wall-clock ``ts`` (stamped by the probe runner, not here).

A probe whose previous run is still going is skipped and counted, and
concurrency is bounded globally and per provider. Firing only creates a task,
so a slow probe never delays another.

The kinds of one target never run at once: a server such as llama-cpp-python
ends a running stream when another request arrives, so a target's ``models``
check would break its own REST probe. A probe whose target is busy with
another kind waits for it (up to its own interval, then the run is skipped and
counted); the kinds of a target are placed apart in their cadence so that this
is rare. Before it starts, a probe waits in this order for its target, its
provider's limit and the global limit, for the concurrency slots at most until
one interval after its planned start (then the run is skipped and counted, so
a limit too small for its schedule never queues runs ever later); each wait, and how late the probe
started against its planned slot, goes to the provider's schedule metrics
(``metrics.ProviderSchedule``). When a limit cannot carry its schedule
(``capacity.Saturation``) the log says so once, and once when it can again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from modelwatch.capacity import Saturation
from modelwatch.job import ProbeJob
from modelwatch.metrics import ProbeMetrics, ProviderSchedule
from modelwatch.logs import fields

log = logging.getLogger("modelwatch.scheduler")

MAX_SLEEP_S = 1.0  # wake at least this often, so reloads and stops are noticed
Key = tuple[str, str]


class _Cadence:
    """The probes sharing one interval, started in turn, one per slot."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.members: list[Key] = []
        self.turn = 0
        self.next_slot: float | None = None  # monotonic seconds

    @property
    def period(self) -> float:
        return self.interval / max(len(self.members), 1)

    def spread_kinds(self) -> None:
        """Order members so that the kinds of one target are far apart in the cadence.

        Every target's first kind comes first, then every second kind, and so
        on (a stable sort): the kinds of a target then start about half an
        interval apart instead of in neighbouring slots, where one would wait
        for the other at every run. Members otherwise keep their order.
        """
        seen: Counter[str] = Counter()
        rank = {}
        for key in self.members:
            rank[key] = seen[key[0]]
            seen[key[0]] += 1
        self.members.sort(key=rank.__getitem__)

    def due(self, now: float) -> list[tuple[Key, float]]:
        """The members whose slots have come, each with its slot, advancing the slot clock past ``now``."""
        keys: list[tuple[Key, float]] = []
        slot = now if self.next_slot is None else self.next_slot
        while slot <= now and len(keys) < len(self.members):
            keys.append((self.members[self.turn % len(self.members)], slot))
            self.turn = (self.turn + 1) % len(self.members)
            slot += self.period
        if slot <= now:  # more than a whole interval behind (a stall): skip, don't burst
            slot = now + self.period
        self.next_slot = slot
        return keys


class _ProviderLimit:
    """A provider's concurrency limit, the record of its starts and whether it carries its schedule."""

    __slots__ = ("limit", "semaphore", "record", "saturation")

    def __init__(self, limit: int, record: ProviderSchedule) -> None:
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)
        self.record = record
        self.saturation = Saturation(limit)


class Scheduler:
    """Runs each job every ``job.probe.interval`` seconds until stopped."""

    def __init__(self, run_job: Callable[[ProbeJob], Awaitable[None]], metrics: ProbeMetrics,
                 max_concurrent: int, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._run_job = run_job
        # The one wall-clock reading: later steps of the wall clock never reach the schedule.
        self._wall_anchor = dt.datetime.fromtimestamp(wall())
        self._monotonic = monotonic
        self._mono_anchor = monotonic()
        self._metrics = metrics
        self._max_concurrent = max_concurrent
        self._global = asyncio.Semaphore(max_concurrent)
        self._global_saturation = Saturation(max_concurrent)
        self._providers: dict[str, _ProviderLimit] = {}
        # Targets with more than one kind: one lock each, so their kinds never overlap.
        self._target_locks: dict[str, asyncio.Lock] = {}
        self._holders: set[asyncio.Task] = set()
        self._jobs: dict[Key, ProbeJob] = {}
        self._cadences: dict[float, _Cadence] = {}
        self._running: dict[Key, asyncio.Task] = {}
        self._wake = asyncio.Event()

    def now(self) -> dt.datetime:
        """The scheduler's clock as a date: the wall anchor plus monotonic time elapsed (never jumps)."""
        return self._wall_anchor + dt.timedelta(seconds=self._monotonic() - self._mono_anchor)

    @property
    def jobs(self) -> list[ProbeJob]:
        """The jobs scheduled now."""
        return list(self._jobs.values())

    def set_jobs(self, jobs: tuple[ProbeJob, ...] | list[ProbeJob]) -> tuple[list, list]:
        """Schedule exactly these jobs; unchanged ones keep their place. Returns (added, removed)."""
        wanted = {job.key: job for job in jobs}
        for job in wanted.values():  # checked before anything changes: a refused set leaves the old one
            if not 0 < job.probe.interval < math.inf:
                raise ValueError(f"interval of {job.target}/{job.probe.kind} is not a finite positive "
                                 f"number of seconds: {job.probe.interval!r}")
        removed = [job for key, job in self._jobs.items() if wanted.get(key) != job]
        added = [job for key, job in wanted.items() if self._jobs.get(key) != job]
        touched = set()
        for job in removed:
            del self._jobs[job.key]
            self._cadences[job.probe.interval].members.remove(job.key)
            touched.add(job.probe.interval)
        for job in added:
            self._jobs[job.key] = job
            self._cadences.setdefault(job.probe.interval, _Cadence(job.probe.interval)).members.append(job.key)
            touched.add(job.probe.interval)
        now = self._monotonic()
        for n, interval in enumerate(sorted(touched)):
            self._cadences[interval].spread_kinds()
            self._retime(self._cadences[interval], now, offset=n / max(len(touched), 1))
        self._plan_capacity()
        self._wake.set()
        return added, removed

    def _plan_capacity(self) -> None:
        """Planned starts per second behind each limit, and the locks of multi-kind targets."""
        rates: dict[str, float] = {}
        for job in self._jobs.values():
            rates[job.provider_name] = rates.get(job.provider_name, 0.0) + 1.0 / job.probe.interval
            self._provider_limit(job)
        for name in [n for n in self._providers if n not in rates]:  # a reload removed the provider
            del self._providers[name]
            self._metrics.schedule.pop(name, None)
        for name, rate in rates.items():
            self._providers[name].saturation.rate = rate
        self._global_saturation.rate = sum(rates.values())
        self._plan_target_locks()

    def _plan_target_locks(self) -> None:
        """One lock per target with more than one kind, kept across reloads while it is held.

        A target that a reload gives a second kind may have its first kind's
        probe running without a lock: the new lock is taken on behalf of that
        probe until it ends, so the new kind cannot start alongside it.
        """
        kinds = Counter(job.target for job in self._jobs.values())
        old = self._target_locks
        self._target_locks = {t: old.get(t) or asyncio.Lock() for t, n in kinds.items() if n > 1}
        # A lock held by a probe still running stays, so what starts next for its target waits for it.
        self._target_locks.update((t, lock) for t, lock in old.items() if lock.locked())
        for target, lock in self._target_locks.items():
            if target not in old:
                running = [task for key, task in self._running.items() if key[0] == target]
                if running:
                    holder = asyncio.get_running_loop().create_task(_hold(lock, running))
                    self._holders.add(holder)  # a reference, so the task is not collected while it runs
                    holder.add_done_callback(self._holders.discard)

    def set_max_concurrent(self, max_concurrent: int) -> None:
        """Apply a new global limit (a reload) to the probes started from now on.

        Probes already running keep the semaphore they hold, so for as long as
        they run the two limits add up; nothing is cancelled to make room.
        """
        if max_concurrent != self._max_concurrent:
            self._max_concurrent = max_concurrent
            self._global = asyncio.Semaphore(max_concurrent)
            self._global_saturation.limit = max_concurrent

    def _provider_limit(self, job: ProbeJob) -> _ProviderLimit:
        limit = job.provider.max_concurrent_probes
        held = self._providers.get(job.provider_name)
        if held is None:
            record = self._metrics.provider_schedule(job.provider_name, limit)
            held = self._providers[job.provider_name] = _ProviderLimit(limit, record)
        elif held.limit != limit:  # a reload changed the limit: a new semaphore, the same history
            held.limit = held.record.limit = held.saturation.limit = limit
            held.semaphore = asyncio.Semaphore(limit)
        return held

    def _retime(self, cadence: _Cadence, now: float, offset: float) -> None:
        """Drop a cadence left empty; give a new one its first slot (a kept one keeps its next)."""
        if not cadence.members:
            del self._cadences[cadence.interval]
            return
        if cadence.next_slot is None:  # a new cadence: stagger it against the others
            cadence.next_slot = now + cadence.period * offset

    async def run(self) -> None:
        """Fire due slots until cancelled."""
        while True:
            idle = self._idle_seconds()
            delay = MAX_SLEEP_S if idle is None else min(max(idle, 0.0), MAX_SLEEP_S)
            self._wake.clear()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):  # no extra task per wake-up, unlike wait_for
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._run_pending()

    def _idle_seconds(self) -> float | None:
        """Seconds until the earliest slot of any cadence, on the monotonic clock (None: no cadence)."""
        slots = [c.next_slot for c in self._cadences.values() if c.next_slot is not None]
        return None if not slots else min(slots) - self._monotonic()

    def _run_pending(self) -> None:
        """Start the probes of every cadence whose slot has come, earliest slot first."""
        now = self._monotonic()
        due = [c for c in self._cadences.values() if c.next_slot is not None and c.next_slot <= now]
        for cadence in sorted(due, key=lambda c: c.next_slot):
            try:
                self._fire(cadence)
            except Exception:  # noqa: BLE001 - the schedule must outlive any one bad run
                log.exception("scheduler run failed")

    def _fire(self, cadence: _Cadence) -> None:
        for key, slot in cadence.due(self._monotonic()):
            self._start(self._jobs[key], slot)

    def _start(self, job: ProbeJob, planned: float) -> None:
        """Start a probe for its slot ``planned`` (monotonic), unless its previous run still goes."""
        if job.key in self._running:
            self._metrics.skip(job)
            log.info("run skipped, previous still going", extra=fields(target=job.target, kind=job.probe.kind))
            return
        task = asyncio.get_running_loop().create_task(self._guarded(job, planned))
        self._running[job.key] = task
        task.add_done_callback(lambda _t, k=job.key: self._running.pop(k, None))

    async def _guarded(self, job: ProbeJob, planned: float) -> None:
        """Wait for the target, then a provider slot, then a global slot; run the probe; record it all.

        The provider slot comes before the global one, so that a probe queued
        behind its provider's limit holds no global slot that other providers'
        probes could use.
        """
        waited = time.perf_counter()
        lock = self._target_locks.get(job.target)
        if lock is not None and not await self._target_free(job, lock):
            return
        try:
            provider = self._provider_limit(job)
            # The semaphores as they are now: a reload may replace either while this run holds it.
            provider_slots, global_slots = provider.semaphore, self._global
            target_at = time.perf_counter()
            if not await self._slot(job, provider_slots, planned):
                return
            try:
                provider_at = time.perf_counter()
                if not await self._slot(job, global_slots, planned):
                    return
                try:
                    started = time.perf_counter()
                    provider.record.started(max(0.0, self._monotonic() - planned), target_at - waited,
                                            provider_at - target_at, started - provider_at)
                    await self._run(job)
                    self._ran(job, provider, time.perf_counter() - started)
                finally:
                    global_slots.release()
            finally:
                provider_slots.release()
        finally:
            if lock is not None:
                lock.release()

    async def _slot(self, job: ProbeJob, limit: asyncio.Semaphore, planned: float) -> bool:
        """Take a concurrency slot, waiting at most until one interval after the planned start.

        By then the run's next slot has come: a run that could not start within
        its own interval is skipped and counted, so a limit too small for its
        schedule makes probes late by at most an interval instead of queueing
        them ever later (the state change is logged once, see ``_ran``).
        """
        wait = planned + job.probe.interval - self._monotonic()
        return await self._take(job, limit, wait, logging.DEBUG, "no concurrency slot within its interval")

    async def _target_free(self, job: ProbeJob, lock: asyncio.Lock) -> bool:
        """Take the target's lock, waiting at most one interval of the job (False: run skipped)."""
        return await self._take(job, lock, job.probe.interval, logging.INFO,
                                "another kind of the target still going for a whole interval")

    async def _take(self, job: ProbeJob, primitive: asyncio.Lock | asyncio.Semaphore, wait_s: float,
                    level: int, why: str) -> bool:
        """Acquire ``primitive`` within ``wait_s``, else count the run as skipped and say ``why``."""
        try:
            async with asyncio.timeout(max(wait_s, 0.0)):  # a free one is taken without waiting
                await primitive.acquire()
            return True
        except TimeoutError:
            self._metrics.skip(job)
            log.log(level, f"run skipped, {why}", extra=fields(target=job.target, kind=job.probe.kind))
            return False

    async def _run(self, job: ProbeJob) -> None:
        self._metrics.in_flight.inc()
        try:
            await self._run_job(job)
        except Exception:  # noqa: BLE001 - one job's bug must not stop the schedule
            log.exception("probe run failed", extra=fields(target=job.target, kind=job.probe.kind))
        finally:
            self._metrics.in_flight.dec()

    def _ran(self, job: ProbeJob, provider: _ProviderLimit, duration_s: float) -> None:
        """Feed a probe's duration to its limits' saturation; log a limit that changed state."""
        saturation = provider.saturation
        changed = saturation.observe(duration_s)
        provider.record.needed = saturation.needed
        if changed is not None:
            _log_saturation(job.provider_name, saturation, changed)
        changed = self._global_saturation.observe(duration_s)
        if changed is not None:
            _log_saturation(None, self._global_saturation, changed)

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


async def _hold(lock: asyncio.Lock, tasks: list[asyncio.Task]) -> None:
    """Hold ``lock`` until ``tasks`` end (probes that started before their target had a lock)."""
    async with lock:
        await asyncio.wait(tasks)


def _log_saturation(provider: str | None, saturation: Saturation, behind: bool) -> None:
    """One line per change of state: a limit fell behind its schedule, or caught up again."""
    event = ("concurrency limit cannot carry the schedule, probes start late" if behind else
             "concurrency limit carries the schedule again")
    where = {"limit": "global"} if provider is None else {"limit": "provider", "provider": provider}
    log.log(logging.WARNING if behind else logging.INFO, event, extra=fields(
        **where, max_concurrent_probes=saturation.limit, needed=f"{saturation.needed:.1f}",
        probes_per_s=f"{saturation.rate:.2f}", mean_probe_s=f"{saturation.mean_s:.3f}"))


class LoopLag:
    """How late the event loop wakes a timer: the daemon's own honesty signal.

    Every tick is observed in the lag histogram and kept for a while, so that
    each probe can record the worst lag seen while it ran (``loop_lag_s``): a
    timing taken while the loop was late by that much includes the daemon's
    own delay, and says so, instead of blaming the provider for it.
    """

    def __init__(self, metrics: ProbeMetrics, every_s: float = 0.1, keep_s: float = 900.0) -> None:
        self._metrics = metrics
        self._every_s = every_s
        self._ticks: deque[tuple[float, float]] = deque(maxlen=int(keep_s / every_s))  # (end, lag)
        self._tick_start: float | None = None
        self._stopped = False

    async def watch(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._tick_start = start = loop.time()
                await asyncio.sleep(self._every_s)
                end = loop.time()
                lag = max(0.0, end - start - self._every_s)
                self._ticks.append((end, lag))
                self._metrics.loop_lag.observe(lag)
        finally:
            # Stopped (shutdown): the tick under way will never end, and reading its age as lag
            # would give probes finishing in the stop grace seconds of lag that never happened.
            self._tick_start = None
            self._stopped = True

    def worst_since(self, since: float) -> float | None:
        """The worst lag of the ticks that ended at or after loop time ``since``, the tick under way
        included; None once the watch has stopped (nothing watched the end of the probe)."""
        if self._stopped:
            return None
        now = asyncio.get_running_loop().time()
        worst = 0.0 if self._tick_start is None else max(0.0, now - self._tick_start - self._every_s)
        for end, lag in reversed(self._ticks):
            if end < since:
                break
            worst = max(worst, lag)
        return worst
