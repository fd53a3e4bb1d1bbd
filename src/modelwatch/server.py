"""The daemon's HTTP endpoint: /metrics, /-/healthy, /-/reload and the status site."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from modelwatch.metrics import ProbeMetrics
from modelwatch.status.service import StatusService, add_routes

Reloader = Callable[[], Awaitable[tuple[bool, str]]]
Health = Callable[[], str | None]  # None when healthy, else what is wrong


def create_app(metrics: ProbeMetrics, reload: Reloader | None = None,
               health: Health | None = None, status: StatusService | None = None) -> web.Application:
    """The aiohttp application serving the daemon's endpoints (and the status site when given)."""
    app = web.Application()
    exposition = _Exposition(metrics)

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        gz = "gzip" in request.headers.get("Accept-Encoding", "")
        chunks, body = await exposition.get(gz)
        if gz:
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                    "Content-Encoding": "gzip"})
        resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        resp.content_length = sum(len(c) for c in chunks)
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def healthy(request: web.Request) -> web.Response:
        problem = health() if health else None
        if problem:
            return web.Response(status=503, text=problem + "\n")
        return web.Response(text="OK\n")

    async def do_reload(request: web.Request) -> web.Response:
        if reload is None:  # Prometheus' lifecycle API is opt-in for the same reason
            return web.Response(status=403, text="reload over HTTP is disabled: set server.enable_reload: "
                                "true, or send SIGHUP (systemctl reload modelwatch)\n")
        ok, message = await reload()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="modelwatch: see /metrics and /-/healthy (the status page is off: "
                                 "status.enabled is false)\n")

    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_post("/-/reload", do_reload)
    app.router.add_put("/-/reload", do_reload)
    if status is not None:
        add_routes(app, status)
    else:
        app.router.add_get("/", index)
    return app


MIN_RENDER_INTERVAL_S = 0.25


class _Exposition:
    """/metrics bodies, rendered one at a time and at most every ``MIN_RENDER_INTERVAL_S``.

    A scrape costs 13-19 ms of CPU at 1,000 targets; 62 gzip scrapes a second once
    moved innocent TTFT medians by 200 ms. Scrapes that come in a burst share one
    rendering (at most 0.25 s old), so whatever hits the port, the probes keep the CPU.
    """

    def __init__(self, metrics: ProbeMetrics) -> None:
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._at = float("-inf")
        self._chunks: list[bytes] = []
        self._gzipped: bytes | None = None

    async def get(self, gz: bool) -> tuple[list[bytes], bytes | None]:
        """The current chunks, and their gzip form when ``gz``."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._at >= MIN_RENDER_INTERVAL_S:
                self._chunks = await self._metrics.render()
                self._gzipped = None
                self._at = loop.time()
            if gz and self._gzipped is None:
                # zlib releases the GIL while it compresses, so a worker thread costs the loop nothing.
                self._gzipped = await loop.run_in_executor(None, _gzip, self._chunks)
            return self._chunks, self._gzipped


def _gzip(chunks: list[bytes]) -> bytes:
    return gzip.compress(b"".join(chunks), compresslevel=1)


# The daemon's port must not cost the probes their file descriptors (issue 17: 1,100 half-open
# connections made 252 probes fail with "Too many open files"): connections beyond the cap are
# closed as they are accepted, and one that sends no complete request within the idle timeout
# (a slowloris, or a keep-alive connection left idle) is closed by aiohttp.
MAX_CONNECTIONS = 256
IDLE_TIMEOUT_S = 10.0


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once, counted."""

    def __init__(self, on_refused: Callable[[], None]) -> None:
        self._on_refused = on_refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._on_refused()
        transport.abort()


class Endpoint:
    """The listening socket and the application behind it."""

    def __init__(self, runner: web.AppRunner, listener: asyncio.AbstractServer) -> None:
        self._runner = runner
        self._listener = listener

    @property
    def port(self) -> int:
        return self._listener.sockets[0].getsockname()[1]

    async def cleanup(self) -> None:
        """Stop accepting, close every connection and the application."""
        self._listener.close()
        await self._runner.cleanup()


async def start_server(app: web.Application, host: str, port: int, *,
                       max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT_S,
                       on_refused: Callable[[], None] = lambda: None) -> tuple[Endpoint, int]:
    """Start serving ``app``; return the endpoint and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=idle_timeout)
    await runner.setup()
    server = runner.server

    def connection() -> asyncio.Protocol:
        if len(server.connections) >= max_connections:
            return _Refused(on_refused)
        return server()

    listener = await asyncio.get_running_loop().create_server(connection, host, port, backlog=128,
                                                              reuse_address=True)
    endpoint = Endpoint(runner, listener)
    return endpoint, endpoint.port
