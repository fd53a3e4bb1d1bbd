"""The daemon's HTTP endpoint: /metrics, /-/healthy and /-/reload."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from modelwatch.metrics import ProbeMetrics

Reloader = Callable[[], Awaitable[tuple[bool, str]]]
Health = Callable[[], str | None]  # None when healthy, else what is wrong


def create_app(metrics: ProbeMetrics, reload: Reloader | None = None,
               health: Health | None = None) -> web.Application:
    """The aiohttp application serving the daemon's endpoints."""
    app = web.Application()

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        chunks = await metrics.render()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            # zlib releases the GIL while it compresses, so a worker thread costs the loop nothing.
            body = await asyncio.get_running_loop().run_in_executor(None, _gzip, chunks)
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
        return web.Response(text="modelwatch: see /metrics and /-/healthy\n")

    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_post("/-/reload", do_reload)
    app.router.add_put("/-/reload", do_reload)
    app.router.add_get("/", index)
    return app


def _gzip(chunks: list[bytes]) -> bytes:
    return gzip.compress(b"".join(chunks), compresslevel=1)


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; return the runner and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no getter
    return runner, bound
