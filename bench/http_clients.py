"""CPU cost per streamed Chat Completions request of candidate HTTP clients.

Starts ``modelwatch sim`` in its own process (model ``fast``: no delays, 8
content chunks), then, in this process, sends the same streaming request with
each client and measures this process's CPU time (``time.process_time``, all
threads) per request. The simulator's CPU is not counted. Every client's bytes
go through the same SSE decoder (``modelwatch.sse``), so the difference between
rows is the HTTP client. Rounds alternate between clients to spread out drift.

Clients (``--clients``):
  httpx          httpx.AsyncClient, its default transport (httpcore)
  httpx-aiohttp  httpx.AsyncClient over httpx_aiohttp.AiohttpTransport
  aiohttp        aiohttp.ClientSession (what the probe uses)
  openai         the openai SDK's streaming create() (on httpx; parses every chunk)

Event loops (``--loops``): ``asyncio`` (the standard loop) and ``uvloop``, the
loop the daemon runs on where installed.

Connections (``--connections``): ``fresh`` opens a new TCP connection per
request, as a probe does (aiohttp TCPConnector(force_close=True), httpx with no
keep-alive); ``keepalive`` reuses pooled connections, for reference.

Example:  .venv/bin/python bench/http_clients.py --requests 500 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    code_version,
    cpu_model,
    fmt,
    markdown_table,
    replace_section,
    start_sim,
    stop_process,
)

from modelwatch.sse import SSEDecoder

CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp", "openai")
SCENARIO = """\
seed: 1
models:
  fast: {ttfb_ms: 0, ttft_ms: 0, jitter_ms: 0, inter_token_ms: 0, tokens: 8}
"""
KEY = "sk-bench-000000000000"
BODY = (b'{"model":"fast","messages":[{"role":"user","content":"Say OK"}],"stream":true,'
        b'"stream_options":{"include_usage":true},"max_completion_tokens":16}')
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream",
           "Accept-Encoding": "identity", "Authorization": f"Bearer {KEY}"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

Fetch = Callable[[], Awaitable[None]]


def check_events(decoder: SSEDecoder, chunks: list[bytes]) -> None:
    """Decode the raw stream and insist it ended with ``[DONE]``."""
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    if not events or events[-1].data != "[DONE]":
        raise RuntimeError(f"stream did not end with [DONE] ({len(events)} events)")


def _httpx_limits(mode: str) -> httpx.Limits:
    """httpx pool limits: no keep-alive for 'fresh'."""
    keep = 0 if mode == "fresh" else 64
    return httpx.Limits(max_connections=64, max_keepalive_connections=keep)


def _aiohttp_session(mode: str) -> aiohttp.ClientSession:
    """An aiohttp session; force_close=True (a connection per request) for 'fresh', as the probe does."""
    connector = aiohttp.TCPConnector(force_close=(mode == "fresh"), limit=64)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False)


@contextlib.asynccontextmanager
async def httpx_client(url: str, mode: str, via_aiohttp: bool) -> AsyncIterator[Fetch]:
    """A fetch() over httpx, with its own transport or httpx_aiohttp's."""
    transport = None
    if via_aiohttp:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(client=_aiohttp_session(mode))
    async with httpx.AsyncClient(limits=_httpx_limits(mode), transport=transport) as client:
        async def fetch() -> None:
            async with client.stream("POST", url, content=BODY, headers=HEADERS) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}")
                check_events(SSEDecoder(), [chunk async for chunk in resp.aiter_raw()])
        yield fetch


@contextlib.asynccontextmanager
async def aiohttp_client(url: str, mode: str) -> AsyncIterator[Fetch]:
    """A fetch() over a plain aiohttp session, reading the stream as the probe does."""
    async with _aiohttp_session(mode) as session:
        async def fetch() -> None:
            async with session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                chunks = []
                while chunk := await resp.content.readany():
                    chunks.append(chunk)
                check_events(SSEDecoder(), chunks)
        yield fetch


@contextlib.asynccontextmanager
async def openai_client(url: str, mode: str) -> AsyncIterator[Fetch]:
    """A fetch() through the openai SDK (httpx underneath, chunks parsed into models)."""
    import openai

    base = url.rsplit("/chat/completions", 1)[0]
    async with httpx.AsyncClient(limits=_httpx_limits(mode)) as http_client:
        client = openai.AsyncOpenAI(base_url=base, api_key=KEY, http_client=http_client, max_retries=0)

        async def fetch() -> None:
            stream = await client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "Say OK"}], stream=True,
                stream_options={"include_usage": True}, max_completion_tokens=16)
            chunks = [chunk async for chunk in stream]
            if not chunks or chunks[-1].usage is None:
                raise RuntimeError("stream ended without the usage chunk")
        yield fetch


def client_factory(name: str, url: str, mode: str) -> contextlib.AbstractAsyncContextManager[Fetch]:
    """The async context manager yielding fetch() for client ``name``."""
    if name == "httpx":
        return httpx_client(url, mode, via_aiohttp=False)
    if name == "httpx-aiohttp":
        return httpx_client(url, mode, via_aiohttp=True)
    if name == "aiohttp":
        return aiohttp_client(url, mode)
    if name == "openai":
        return openai_client(url, mode)
    raise ValueError(f"unknown client {name}")


async def run_batch(fetch: Fetch, count: int, concurrency: int) -> tuple[float, float]:
    """Send ``count`` requests, at most ``concurrency`` at a time; return (CPU s, wall s)."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await asyncio.wait_for(fetch(), 10)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def measure(url: str, loop: str, args: argparse.Namespace) -> dict:
    """(CPU s, wall s) of every round for each (client, connections, loop)."""
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for mode in args.connections:
        for rnd in range(args.rounds):
            order = args.clients if rnd % 2 == 0 else list(reversed(args.clients))
            for name in order:
                async with client_factory(name, url, mode) as fetch:
                    await run_batch(fetch, args.warmup, args.concurrency)
                    cpu, wall = await run_batch(fetch, args.requests, args.concurrency)
                results.setdefault((name, mode, loop), []).append((cpu, wall))
                print(f"  {loop:<7} {mode:<9} round {rnd + 1} {name:<14} "
                      f"{cpu / args.requests * 1000:6.3f} ms CPU/request  ({args.requests / wall:5.0f} req/s)",
                      flush=True)
    return results


def run_on(loop: str, coro):
    """Run ``coro`` on a new asyncio or uvloop event loop."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def render(results: dict, args: argparse.Namespace) -> str:
    """The Markdown table: median CPU ms per request, its range, and the ratio to aiohttp."""
    rows = []
    base_key = ("aiohttp", "fresh", "asyncio")
    base_runs = results.get(base_key)
    base = statistics.median(c / args.requests * 1000 for c, _ in base_runs) if base_runs else float("nan")
    for (name, mode, loop), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        per_req = [cpu / args.requests * 1000 for cpu, _ in runs]
        med = statistics.median(per_req)
        rows.append([f"`{name}`", mode, loop, fmt(med, 3), f"{fmt(min(per_req), 3)}-{fmt(max(per_req), 3)}",
                     fmt(med / base, 2) + "x"])
    header = ["client", "connections", "loop", "CPU ms/request (median)", "range over rounds",
              "vs aiohttp, fresh, asyncio"]
    return markdown_table(header, rows)


def environment() -> str:
    """One line describing the machine and library versions."""
    v = importlib.metadata.version
    return (f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {platform.python_version()}; "
            f"aiohttp {v('aiohttp')}, httpx {v('httpx')}, httpx-aiohttp {v('httpx-aiohttp')}, "
            f"openai {v('openai')}, uvloop {v('uvloop')}; {code_version('LOOP').replace(', LOOP loop', '')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--clients", default=",".join(CLIENTS), help=f"comma list of {', '.join(CLIENTS)}")
    p.add_argument("--connections", default="fresh,keepalive", help="comma list of fresh, keepalive")
    p.add_argument("--loops", default="asyncio,uvloop", help="comma list of asyncio, uvloop")
    p.add_argument("--requests", type=int, default=500, help="measured requests per client and round")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each batch")
    p.add_argument("--rounds", type=int, default=3, help="rounds per client (median is reported)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--write", action="store_true", help=f"write the table into {DOCS}")
    args = p.parse_args(argv)
    args.clients = [c for c in args.clients.split(",") if c]
    args.connections = [c for c in args.connections.split(",") if c]
    args.loops = [c for c in args.loops.split(",") if c]
    if not args.loops or not set(args.loops) <= {"asyncio", "uvloop"}:
        p.error("--loops takes asyncio and/or uvloop")
    for c in args.clients:
        if c not in CLIENTS:
            p.error(f"unknown client {c}")
    if not set(args.connections) <= {"fresh", "keepalive"}:
        p.error("--connections takes fresh and/or keepalive")
    if not (1 <= args.requests <= 100_000 and 1 <= args.rounds <= 20):
        p.error("--requests must be 1..100000 and --rounds 1..20")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write it to docs/benchmarks.md."""
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="modelwatch-bench-"))
    (work / "scenario.yaml").write_text(SCENARIO)
    sim = None
    try:
        sim, sim_url = start_sim(work / "scenario.yaml", work / "sim.log")
        print(f"simulator at {sim_url}; {args.requests} requests x {args.rounds} rounds, "
              f"concurrency {args.concurrency}", flush=True)
        results = {}
        for loop in args.loops:
            results.update(run_on(loop, measure(sim_url + "/v1/chat/completions", loop, args)))
    finally:
        stop_process(sim)
    table = render(results, args)
    env = environment()
    command = "python bench/http_clients.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{env}\n\n{table}")
    if args.write:
        replace_section(DOCS, "http-clients", f"Run: {env}.  \nCommand: `{command.strip()}`\n\n{table}")
        print(f"\nwrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
