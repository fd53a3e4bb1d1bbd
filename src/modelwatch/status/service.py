"""The status site in the daemon: a worker process refreshed on a timer, answers cached per refresh.

The event loop never reads the database or renders a page for the status site: it sends a
path to the worker process (:mod:`modelwatch.status.worker`) and keeps the bytes that come
back until the next refresh, so a popular badge or the index costs one dictionary lookup. At
most ``MAX_WAITING`` requests wait for the worker at once; more get 503 at once, so a flood of
distinct URLs costs the worker's core, never the probes' loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from aiohttp import web

from modelwatch.figures import timestamp
from modelwatch.logs import fields
from modelwatch.status import worker
from modelwatch.status.site import Answer
from modelwatch.status.snapshot import Series, Settings

log = logging.getLogger("modelwatch.status")

MAX_WAITING = 32
MAX_CACHED = 512
ANSWER_TIMEOUT_S = 10.0
POLL_S = 1.0
BASE_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'"


class StatusService:
    """Serves the status site from a worker process that refreshes every ``refresh_s``."""

    def __init__(self, db_path: str, settings: Settings, series: Sequence[Series], *, refresh_s: float,
                 frame_ancestors: Sequence[str], cors_origins: Sequence[str], metrics=None) -> None:  # noqa: ANN001
        self._args = (db_path, settings, tuple(series))
        self.refresh_s = refresh_s
        self.frame_ancestors = tuple(frame_ancestors)
        self.cors_origins = tuple(cors_origins)
        self._metrics = metrics
        self._pool: ProcessPoolExecutor | None = None
        self._cache: OrderedDict[tuple, tuple[Answer, str]] = OrderedDict()
        self._as_of: str | None = None
        self._waiting = 0
        self._task: asyncio.Task | None = None
        self._failing = False

    def start(self) -> None:
        """Start the worker and the refresh timer."""
        self._pool = self._new_pool()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the daemon has threads (the store's writer) that a fork would copy mid-flight.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=worker.start, initargs=self._args)

    async def stop(self) -> None:
        """Stop the timer and the worker."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, lambda: pool.shutdown(cancel_futures=True))

    async def configure(self, settings: Settings, series: Sequence[Series], refresh_s: float,
                        frame_ancestors: Sequence[str], cors_origins: Sequence[str]) -> None:
        """A reload: new probes and settings, shown from the next snapshot (its build starts now)."""
        self._args = (self._args[0], settings, tuple(series))
        self.refresh_s = refresh_s
        self.frame_ancestors, self.cors_origins = tuple(frame_ancestors), tuple(cors_origins)
        await self._call(worker.configure, settings, tuple(series))
        await self.refresh(force=True)

    async def _call(self, fn, *args):  # noqa: ANN001, ANN202
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            return await asyncio.wait_for(loop.run_in_executor(pool, fn, *args), ANSWER_TIMEOUT_S)
        except BrokenProcessPool:  # the worker died (killed, out of memory): start another one
            if pool is not self._pool:  # another call saw it die first and replaced it
                raise
            log.error("status page worker stopped; starting a new one")
            self._pool = self._new_pool()
            pool.shutdown(wait=False, cancel_futures=True)
            self._as_of = None  # "starting" until the new worker's first snapshot: it has none yet
            self._cache.clear()
            raise

    async def _refresh_forever(self) -> None:
        # Polled every second (a cheap call): the worker starts a build when refresh_s has passed
        # since the last one began and none is running, and a finished one is served at once.
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_S)

    async def refresh(self, force: bool = False) -> bool:
        """Ask the worker for a new snapshot when due; take a finished one. False on a failure."""
        try:
            as_of, took, error = await self._call(worker.refresh, self.refresh_s, force)
            if error is not None:
                raise RuntimeError(error)
        except Exception as exc:  # noqa: BLE001 - the page keeps its last figures and says so
            if self._metrics is not None:
                self._metrics.status_failures.inc()
            if not self._failing:
                log.error("status page refresh failed; serving the last figures",
                          extra=fields(error=f"{type(exc).__name__}: {exc}"[:300]))
            self._failing = True
            return False
        if as_of is None or as_of == self._as_of:
            return True
        if self._failing:
            log.info("status page refreshes again")
        self._failing = False
        self._as_of = as_of
        self._cache.clear()
        if self._metrics is not None:
            self._metrics.status_refresh.set(round(took, 6))
            self._metrics.status_as_of.set(timestamp(as_of))
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Any GET under the status site's paths."""
        if self._as_of is None:
            return web.Response(status=503, text="the status page is starting; try again in a few seconds\n",
                                headers={"Retry-After": "2", "Cache-Control": "no-store"})
        key = (request.path, tuple(sorted(request.query.items())))
        cached = self._cache.get(key)
        if cached is None:
            if self._waiting >= MAX_WAITING:
                return web.Response(status=503, text="busy\n", headers={"Retry-After": "1"})
            self._waiting += 1
            try:
                answer = await self._call(worker.answer, request.raw_path.split("?", 1)[0], dict(request.query))
            except Exception as exc:  # noqa: BLE001 - one line to the client, details in the log
                log.warning("status page request failed", extra=fields(path=request.path[:200],
                                                                        error=type(exc).__name__))
                return web.Response(status=503, text="the status page could not answer; try again\n",
                                    headers={"Retry-After": "2"})
            finally:
                self._waiting -= 1
            cached = (answer, f'"{answer.etag}"')
            if answer.status != 503:  # "starting" is not an answer to keep for the snapshot
                self._cache[key] = cached
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        answer, etag = cached
        body = answer.body
        gz = answer.gzipped is not None and _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        if gz:
            body, etag = answer.gzipped, etag[:-1] + '-gz"'  # a strong ETag per representation
        headers = self._headers(answer, etag, request.headers.get("Origin"))
        if answer.gzipped is not None:
            headers["Vary"] = ", ".join(filter(None, [headers.get("Vary"), "Accept-Encoding"]))
        if answer.status == 200 and etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=answer.status, body=body, headers={
            **headers, "Content-Type": answer.content_type})

    def _headers(self, answer: Answer, etag: str, origin: str | None) -> dict[str, str]:
        max_age = 3600 if answer.role == "static" else int(min(300, max(5, self.refresh_s)))
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}",
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        if answer.role == "embed":
            headers["Content-Security-Policy"] = f"{BASE_CSP}; frame-ancestors {' '.join(self.frame_ancestors)}"
        else:
            headers["Content-Security-Policy"] = f"{BASE_CSP}; frame-ancestors 'none'"
            headers["X-Frame-Options"] = "DENY"
        if answer.role in ("api", "badge") and self.cors_origins:
            if "*" in self.cors_origins:
                headers["Access-Control-Allow-Origin"] = "*"
            else:  # the answer depends on Origin whether or not this one is allowed: say so to caches
                headers["Vary"] = "Origin"
                if origin in self.cors_origins:
                    headers["Access-Control-Allow-Origin"] = origin
        return headers


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (``gzip;q=0`` refuses it)."""
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def settings_from(status) -> Settings:  # noqa: ANN001 - config.StatusConfig
    """The snapshot's settings from the ``status:`` config section."""
    t = status.thresholds
    return Settings(title=status.title, min_runs=status.min_runs, state_runs=status.state_runs,
                    incident_failures=status.incident_failures,
                    thresholds=(("degraded", t.degraded), ("partial_outage", t.partial_outage),
                                ("major_outage", t.major_outage)))


def series_from(jobs) -> list[Series]:  # noqa: ANN001 - ProbeJob sequence
    """The probes the page shows: every configured probe, targets and kinds in config order, each
    with what its ttft_s times (``modality``: a first audio or a first token, as the metrics say)."""
    from modelwatch.probes import probe_info  # the probe registry: only where a config is read

    return [Series(job.target, job.probe.kind, job.provider_name, job.model, info["modality"], info["transport"])
            for job in jobs for info in (probe_info(job),)]


def for_config(config, db_path: str | None = None, metrics=None) -> StatusService:  # noqa: ANN001
    """The service a daemon with ``config`` runs."""
    status = config.status
    return StatusService(str(db_path or config.storage.path), settings_from(status), series_from(config.jobs),
                         refresh_s=status.refresh, frame_ancestors=status.frame_ancestors,
                         cors_origins=status.cors_origins, metrics=metrics)


PATHS = ("/", "/index.html", "/pages/{rest:.+}", "/static/{rest:.+}", "/targets/{rest:.+}", "/embed/{rest:.+}",
         "/api/v1/{rest:.+}", "/badge/{rest:.+}")


def add_routes(app: web.Application, service: StatusService) -> None:
    """Route the status site's paths to ``service`` (GET and HEAD)."""
    for path in PATHS:
        app.router.add_get(path, service.handle)
