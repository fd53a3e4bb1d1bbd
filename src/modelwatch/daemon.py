"""The daemon: scheduler, probes, store, metrics and HTTP endpoint on one asyncio loop."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import resource
import signal
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from modelwatch.config import Config, ConfigError, load_config, parse_listen
from modelwatch.cost import DailyBudget, is_paid, utc_day_start
from modelwatch.job import ProbeJob
from modelwatch.metrics import ProbeMetrics
from modelwatch.outcomes import LocalFault, Outcome, ProbeResult
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe
from modelwatch.scheduler import LoopLag, Scheduler
from modelwatch.server import create_app, start_server
from modelwatch.status.service import StatusService
from modelwatch.status.service import for_config as status_service
from modelwatch.status.service import series_from, settings_from
from modelwatch.store import Store, cost_since
from modelwatch.systemd import notify, reloading_message, watchdog, watchdog_interval
from modelwatch.logs import fields

log = logging.getLogger("modelwatch.daemon")

STOP_GRACE_S = 5.0  # in-flight probes get this long to finish on shutdown
RELOAD_SPACING_S = 1.0  # reloads start at least this far apart, however many are asked for
LAGGED_S = 0.1  # a probe that saw the loop this late is counted in modelwatch_probes_lagged_total


class Daemon:
    """One running modelwatch: owns the loop-side state between start and stop."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 on_result: Callable[[ProbeResult], None] | None = None) -> None:
        self.config = config
        # Called on the loop with every recorded result (``modelwatch demo`` prints them): it must
        # return at once, as a queue put does. None (``run``) changes nothing.
        self.on_result = on_result
        self.registry = registry or CollectorRegistry()
        self.metrics = ProbeMetrics(self.registry, config.location)
        self.url: str | None = None
        self.store: Store | None = None
        self.status: StatusService | None = None
        self._scheduler: Scheduler | None = None
        self._http = None
        self.budget: DailyBudget | None = None
        self._paused = False
        self._clock = time.time
        self._lag = LoopLag(self.metrics)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._reload_wanted = False  # a reload asked for while starting: run it once started
        self._reloads: set[asyncio.Task] = set()
        self._scheduling: asyncio.Task | None = None
        self._local_faults: set[str] = set()  # reasons logged since probes last reached a provider
        self._reload_lock = asyncio.Lock()
        self._reload_next = 0.0  # loop time before which no reload starts
        self._reload_queued: asyncio.Future | None = None  # the reload every new caller joins

    async def run(self, stop: asyncio.Event, on_ready: Callable[[str], None] | None = None) -> None:
        """Run until ``stop`` is set, then shut down cleanly."""
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.config
        self._fd_limit = raise_fd_limit()
        self.store = await loop.run_in_executor(None, self._open_store)
        await self._set_budget(cfg)
        self._http = new_http_session()
        self._scheduler = Scheduler(self._probe, self.metrics, cfg.max_concurrent_probes)
        host, port = parse_listen(cfg.server.listen)
        reloader = self.reload if cfg.server.enable_reload else None
        if cfg.status.enabled:
            self.status = status_service(cfg, metrics=self.metrics)
            self.status.start()
        runner, bound = await start_server(create_app(self.metrics, reloader, self.problem, self.status),
                                           host, port, on_refused=self.metrics.http_refused.inc)
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())
        self.metrics.set_shard(cfg.shard)
        self._apply_jobs(cfg.jobs)
        # Everything allocated so far lives as long as the daemon: keep it out of full garbage
        # collections, whose pauses (20-35 ms at 1,000 targets) land in the readings.
        gc.freeze()
        scheduling = self._scheduling = loop.create_task(self._scheduler.run())
        scheduling.add_done_callback(_scheduler_ended)
        tasks = [scheduling, loop.create_task(self._lag.watch())]
        ping_every = watchdog_interval()
        if ping_every:
            tasks.append(loop.create_task(watchdog(ping_every, alive=lambda: self.problem() is None)))
        log.info("started", extra=fields(url=self.url, targets=len({j.target for j in cfg.jobs}),
                                         probes=len(cfg.jobs), db=cfg.storage.path,
                                         open_files_limit=self._fd_limit))
        notify(f"READY=1\nSTATUS=probing {len(cfg.jobs)} probes, serving {self.url}")
        if on_ready:
            on_ready(self.url)
        self._started = True
        if self._reload_wanted:
            self.request_reload()
        try:
            await stop.wait()
        finally:
            notify("STOPPING=1")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self._reloads, return_exceptions=True)
            dropped = await self._scheduler.drain(STOP_GRACE_S)
            await runner.cleanup()
            if self.status is not None:
                await self.status.stop()
            await self._http.close()
            await loop.run_in_executor(None, self.store.close)
            log.info("stopped", extra=fields(cancelled_probes=dropped))

    def problem(self) -> str | None:
        """What stops the daemon from doing its job, or None: for /-/healthy and the watchdog."""
        if self._scheduling is not None and self._scheduling.done():
            return "scheduler stopped: no probe starts"
        if self.store is not None and not self.store.healthy():
            return "store writer stopped: results are not being saved"
        return None

    def _open_store(self) -> Store:
        storage = self.config.storage
        return Store(storage.path, storage.retention, on_error=self.metrics.store_errors.inc,
                     on_pending=self.metrics.store_pending.set,
                     on_dropped=self.metrics.store_dropped.inc,
                     rollup_retention_s=storage.rollup_retention)

    def _apply_jobs(self, jobs: tuple[ProbeJob, ...]) -> None:
        added, removed = self._scheduler.set_jobs(jobs)
        for job in removed:
            self.metrics.remove_job(job)
        for job in added:
            self.metrics.add_job(job)

    async def _set_budget(self, cfg: Config) -> None:
        """Track the daily budget, counting what today's probes already cost before a restart."""
        if cfg.budget is None:
            self.budget, self._paused = None, False
            self.metrics.budget_limit.set(0)
            self.metrics.budget_paused.set(0)
            return
        if self.budget is not None:  # a reload: same day's spend (the budget rolls its own day)
            self.budget.daily_usd = cfg.budget.daily_usd
        else:  # first start, or a budget added by a reload: the store knows what today cost so far
            loop = asyncio.get_running_loop()
            spent = await loop.run_in_executor(None, cost_since, cfg.storage.path,
                                               utc_day_start(self._clock()))
            budget = DailyBudget(cfg.budget.daily_usd, self._clock)
            budget.restore(spent)
            self.budget = budget  # assigned only now: no probe sees a budget without today's spend
        self.metrics.budget_limit.set(cfg.budget.daily_usd)
        self._budget_changed()

    def _budget_changed(self) -> None:
        budget = self.budget
        self.metrics.budget_spent.set(budget.spent_usd)
        paused = budget.exhausted()
        if paused != self._paused:
            self._paused = paused
            if paused:
                log.warning("daily budget used up, paid probes paused until UTC midnight",
                            extra=fields(spent_usd=f"{budget.spent_usd:.4f}", daily_usd=f"{budget.daily_usd:.4f}"))
            else:
                log.info("paid probes resumed", extra=fields(spent_usd=f"{budget.spent_usd:.4f}",
                                                             daily_usd=f"{budget.daily_usd:.4f}"))
        self.metrics.budget_paused.set(1 if paused else 0)

    async def _probe(self, job: ProbeJob) -> None:
        if self.budget is not None and is_paid(job):
            self._budget_changed()  # notices a new UTC day as well
            if self.budget.exhausted():
                self.metrics.budget_skipped.inc()
                return
        since = self._loop.time()
        try:
            result = await run_probe(job, self._http, prober_for(job.provider.type, job.probe.kind))
        except LocalFault as fault:
            self.metrics.local_failures.labels(fault.reason).inc()
            if fault.reason not in self._local_faults:
                self._local_faults.add(fault.reason)
                log.error("probes fail inside modelwatch, not at the provider; not recorded as "
                          "provider outcomes", extra=fields(reason=fault.reason, error=str(fault)))
            return
        if self._local_faults and result.connect_s is not None:
            log.warning("probes reach providers again after a local fault",
                        extra=fields(reasons=",".join(sorted(self._local_faults))))
            self._local_faults.clear()
        lag = self._lag.worst_since(since)
        result = dataclasses.replace(result, loop_lag_s=None if lag is None else round(lag, 4))
        if lag is not None and lag >= LAGGED_S:
            self.metrics.probes_lagged.inc()
        self.metrics.observe(result)
        self.store.submit(result)
        if self.budget is not None:
            self.budget.add(result.cost_usd, result.ts)
            self._budget_changed()
        _log_result(result)
        if self.on_result is not None:
            self.on_result(result)

    def request_reload(self) -> None:
        """Reload in the background (SIGHUP); while still starting, once started.

        A reload during start-up would tell systemd READY=1 before the daemon is
        (arming the watchdog while a long migration still runs) and would find
        no scheduler to give the jobs to.
        """
        if not self._started:
            if not self._reload_wanted:
                log.info("reload asked for while starting: it runs once started")
            self._reload_wanted = True
            return
        self._reload_wanted = False
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)  # a reference, so the task is not collected while it runs
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> tuple[bool, str]:
        """Load the config file again; swap jobs only if all of it is valid and applies.

        Reloads run one at a time, at least ``RELOAD_SPACING_S`` apart. A caller
        arriving while one runs joins the next one, which reads the file after
        every caller asked: a flood of requests costs one reload a second, not
        one thread parsing YAML per request.
        """
        if not self._started:
            return False, "modelwatch is still starting: reload again once it is ready"
        if self._reload_queued is not None:
            return await asyncio.shield(self._reload_queued)
        loop = asyncio.get_running_loop()
        queued = self._reload_queued = loop.create_future()
        try:
            async with self._reload_lock:
                wait = self._reload_next - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._reload_queued = None  # later callers want a read after this one
                result = await self._reload_once()
                self._reload_next = loop.time() + RELOAD_SPACING_S
        except BaseException:
            if self._reload_queued is queued:
                self._reload_queued = None
            queued.cancel()
            raise
        queued.set_result(result)
        return result

    async def _reload_once(self) -> tuple[bool, str]:
        notify(reloading_message())
        ok, message = False, "reload failed"
        try:
            ok, message = await self._reload()
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the running config stays
            log.error("reload failed, keeping the running config",
                      extra=fields(error=f"{type(exc).__name__}: {exc}"))
            message = f"reload failed: {type(exc).__name__}"
        finally:  # whatever happened, systemd must not be left thinking we are still reloading
            if not ok:
                self.metrics.reload_ok.set(0)
            status = f"probing {len(self.config.jobs)} probes, serving {self.url}" if ok else \
                "reload failed, running the previous config"
            notify(f"READY=1\nSTATUS={status}")
        return ok, message

    async def _reload(self) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_config, self.config.path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config",
                      extra=fields(problems=len(exc.problems), first=exc.problems[0]))
            return False, "reload failed: " + "; ".join(exc.problems)
        if new.location != self.config.location or new.storage != self.config.storage \
                or new.server != self.config.server or new.status.enabled != self.config.status.enabled:
            log.warning("reload: storage, server, location and status.enabled changes need a restart")
            new = _keep_static(new, self.config)
        old = self.config
        try:  # all or nothing: the scheduler either takes every new job or keeps the old ones
            added, removed = self._scheduler.set_jobs(new.jobs)
        except Exception:
            self._scheduler.set_jobs(old.jobs)
            raise
        for job in removed:
            self.metrics.remove_job(job)
        for job in added:
            self.metrics.add_job(job)
        self.config = new
        await self._set_budget(new)
        self._scheduler.set_max_concurrent(new.max_concurrent_probes)
        if self.status is not None:
            st = new.status
            try:  # the probes have their new config; a busy or dead status worker must not undo that
                await self.status.configure(settings_from(st), series_from(new.jobs), st.refresh,
                                            st.frame_ancestors, st.cors_origins)
            except Exception as exc:  # noqa: BLE001 - the page catches up with its next snapshot
                log.warning("reload: the status page takes the new config with its next snapshot",
                            extra=fields(error=type(exc).__name__))
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())
        self.metrics.set_shard(new.shard)
        log.info("reloaded", extra=fields(probes=len(new.jobs)))
        return True, f"reloaded {len(new.jobs)} probes"


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the soft limit on open files toward the hard one; return the limit in force.

    Each probe holds a socket, and 1,024 (the usual soft default) is what a few hundred
    probes plus a burst of connections to our own port can reach: a probe that then cannot
    open its socket would read as the provider's connect_error.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _scheduler_ended(task: asyncio.Task) -> None:
    if not task.cancelled():  # it only ever ends by cancellation: anything else is a bug
        log.error("scheduler stopped, no probe will start; the watchdog goes silent",
                  extra=fields(error=str(task.exception())))


def _keep_static(new: Config, old: Config) -> Config:
    status = new.status.model_copy(update={"enabled": old.status.enabled})
    return dataclasses.replace(new, storage=old.storage, server=old.server, location=old.location, status=status,
                               jobs=tuple(dataclasses.replace(j, location=old.location) for j in new.jobs))


def _log_result(r: ProbeResult) -> None:
    if r.outcome == Outcome.OK.value:
        log.debug("probe ok", extra=fields(target=r.target, kind=r.kind, ttft_s=r.ttft_s, duration_s=r.duration_s))
    else:
        log.info("probe failed", extra=fields(target=r.target, kind=r.kind, outcome=r.outcome,
                                              error_code=r.error_code, http_status=r.http_status,
                                              loop_lag_s=r.loop_lag_s, error=r.error))


def install_signal_handlers(stop: asyncio.Event, daemon: Daemon | None = None) -> None:
    """SIGTERM/SIGINT set ``stop``; SIGHUP reloads the config."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if daemon is not None:
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
