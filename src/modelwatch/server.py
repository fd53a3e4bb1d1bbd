"""The daemon's HTTP endpoint: /metrics, /-/healthy and /-/reload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Reloader = Callable[[], Awaitable[tuple[bool, str]]]


def create_app(registry: CollectorRegistry, reload: Reloader | None = None) -> web.Application:
    """The aiohttp application serving the daemon's endpoints."""
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        # Rendering thousands of series is CPU work: keep it off the probing loop's thread.
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def do_reload(request: web.Request) -> web.Response:
        if reload is None:
            return web.Response(status=404, text="reload is not available\n")
        ok, message = await reload()
        return web.Response(status=200 if ok else 500, text=message + "\n")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="modelwatch: see /metrics and /-/healthy\n")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_post("/-/reload", do_reload)
    app.router.add_put("/-/reload", do_reload)
    app.router.add_get("/", index)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; return the runner and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no getter
    return runner, bound
