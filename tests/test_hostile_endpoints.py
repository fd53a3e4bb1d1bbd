"""Hostile endpoints cannot hold a probe past its timeout or make the process's memory grow.

A tiny loopback server, written here and run in its own process (so what it
allocates is not counted against the prober), serves an endless SSE stream, a
flood, a huge body, a giant WebSocket frame, a body that trickles one byte a
second, and raw sockets that accept and then never answer or dribble the
status line. Each probe goes through the real ``run_probe`` with a small
timeout and byte cap and must end within its timeout (plus grace) with a
classified outcome, while the prober's peak RSS grows by far less than the
server sent.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

TIMEOUT_S, TTFT_S, GRACE_S = 3.0, 2.0, 1.5
CAP = 1_048_576
MEMORY_BOUND = 64 * 1_048_576
HUGE = 200 * 1_048_576  # far beyond the cap and the memory bound
GIANT_FRAME = 96 * 1_048_576

SERVER = r'''
import asyncio, json, sys, zlib
from aiohttp import web

CHUNK = ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}]}) + "\n\n").encode()
HUGE, GIANT = int(sys.argv[1]), int(sys.argv[2])
FINISH = ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
          "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n").encode()


def gzipped(pieces, times=1):
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(piece) for _ in range(times) for piece in pieces]
    return b"".join(out) + z.flush()


GZIP_OK = gzipped([CHUNK * 3, FINISH, b"data: [DONE]\n\n"])
# 64 MiB of valid chunks (never [DONE]) in about 64 KiB: far under the cap on the wire
GZIP_BOMB = gzipped([CHUNK * 4096], times=64 * 1_048_576 // (len(CHUNK) * 4096))

async def stream(request, headers={"Content-Type": "text/event-stream"}):
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    return resp

async def handle(request):
    mode = request.match_info["mode"]
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if mode == "giant":
            await ws.send_str('{"type":"session.created","pad":"' + "x" * GIANT + '"}')
        else:  # endless: valid-looking events forever, never the one awaited
            while True:
                await ws.send_str('{"type":"rate_limits.updated","rate_limits":[]}')
                await asyncio.sleep(0.01)
        await asyncio.sleep(60)
        return ws
    if mode == "endless":  # valid chunks forever, no [DONE]
        resp = await stream(request)
        while True:
            await resp.write(CHUNK)
            await asyncio.sleep(0.02)
    if mode == "flood":  # valid chunks as fast as the socket takes them
        resp = await stream(request)
        while True:
            await resp.write(CHUNK * 512)
    if mode == "huge":  # one enormous body; for SSE a single line that never ends
        sse = request.method == "POST"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if sse else "application/json",
                                           "Content-Length": str(HUGE)})
        await resp.prepare(request)
        block = (b"data: " if sse else b"") + b"x" * (1_048_576 - (6 if sse else 0))
        await resp.write(block)
        for _ in range(HUGE // 1_048_576 - 1):
            await resp.write(b"x" * 1_048_576)
        return resp
    if mode in ("gzipok", "gzipbomb"):  # gzip although the probe asked for identity
        body = GZIP_OK if mode == "gzipok" else GZIP_BOMB
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
        await resp.prepare(request)
        await resp.write(body[:10])  # the gzip header alone inflates to nothing: not the end
        await asyncio.sleep(0.05)
        for start in range(10, len(body), 16384):
            await resp.write(body[start:start + 16384])
        return resp
    if mode == "trickle":  # a valid chunk, one byte a second
        resp = await stream(request)
        for byte in CHUNK:
            await resp.write(bytes([byte]))
            await asyncio.sleep(1.0)
        return resp
    raise web.HTTPNotFound()

async def silent(reader, writer):
    await asyncio.sleep(3600)

async def dribble(reader, writer):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n":
        writer.write(bytes([byte]))
        await asyncio.sleep(1.0)

async def main():
    app = web.Application()
    app.router.add_route("*", "/{mode}/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    raw = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (silent, dribble)]
    ports = {"http": site._server.sockets[0].getsockname()[1],
             "silent": raw[0].sockets[0].getsockname()[1], "dribble": raw[1].sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


@pytest.fixture(scope="module")
def hostile():
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(HUGE), str(GIANT_FRAME)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(10)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark (Linux clear_refs 5) and return the RSS now, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


CASES = [
    # (name, provider type, kind, mode or raw port, outcome, error_code)
    ("endless SSE stream", "openai", "rest", "endless", "timeout", "total"),
    ("SSE flood", "openai", "rest", "flood", "protocol_error", "response_too_large"),
    ("huge SSE line", "openai", "rest", "huge", "protocol_error", "response_too_large"),
    ("huge anthropic stream", "anthropic", "rest", "huge", "protocol_error", "response_too_large"),
    ("huge gemini stream", "gemini", "rest", "huge", "protocol_error", "response_too_large"),
    ("huge model list", "openai", "models", "huge", "protocol_error", "response_too_large"),
    ("giant WebSocket frame", "openai", "realtime", "giant", "protocol_error", "frame_too_large"),
    ("giant Gemini Live frame", "gemini", "realtime", "giant", "protocol_error", "frame_too_large"),
    ("endless WebSocket events", "openai", "realtime", "wsendless", "timeout", "session"),
    ("gzip-encoded SSE stream", "openai", "rest", "gzipok", "ok", None),
    ("gzip bomb SSE stream", "openai", "rest", "gzipbomb", "protocol_error", "response_too_large"),
    ("gzip bomb anthropic stream", "anthropic", "rest", "gzipbomb", "protocol_error", "response_too_large"),
    ("gzip bomb gemini stream", "gemini", "rest", "gzipbomb", "protocol_error", "response_too_large"),
    ("body trickling a byte a second", "openai", "rest", "trickle", "timeout", "ttft"),
    ("status line trickling a byte a second", "openai", "rest", ":dribble", "timeout", "ttfb"),
    ("accepts but never answers", "openai", "rest", ":silent", "timeout", "ttfb"),
    ("realtime: accepts but never answers", "openai", "realtime", ":silent", "timeout", "ttfb"),
]


@pytest.mark.parametrize("name,ptype,kind,mode,outcome,code", CASES, ids=[c[0] for c in CASES])
def test_hostile_endpoint_ends_in_time_with_bounded_memory(tmp_path, hostile, name, ptype, kind,
                                                          mode, outcome, code):
    port = hostile[mode[1:]] if mode.startswith(":") else hostile["http"]
    prefix = "" if mode.startswith(":") else f"/{mode}"
    base = f"http://127.0.0.1:{port}{prefix}/v1"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"defaults: {{timeout: {TIMEOUT_S:g}s, ttft_timeout: {TTFT_S:g}s, max_response_bytes: {CAP}}}\n"
        f"providers:\n  p: {{type: {ptype}, base_url: '{base}', api_key: 'sk-test-Hostile0000111122223333'}}\n"
        f"targets:\n  - {{name: t, provider: p, model: m, probes: [{{kind: {kind}}}]}}\n")
    job = load_config(cfg).jobs[0]

    async def go():
        async with new_http_session() as http:
            return await run_probe(job, http, prober_for(ptype, kind))

    before = _reset_peak()
    started = time.monotonic()
    result = asyncio.run(go())
    took = time.monotonic() - started
    growth = _status_kb("VmHWM") * 1024 - before

    assert (result.outcome, result.error_code) == (outcome, code), result
    if mode == "gzipbomb":  # stopped by what it inflated to, not by the 64 KiB that came
        assert "once inflated (Content-Encoding gzip)" in result.error and result.ttfb_s is not None
    assert took < TIMEOUT_S + GRACE_S, f"{name}: the probe ran {took:.1f}s past its {TIMEOUT_S}s timeout"
    assert growth < MEMORY_BOUND, f"{name}: peak RSS grew by {growth / 1_048_576:.0f} MiB"
