"""Canary keys never escape: every keyed command and the daemon, against endpoints that refuse
and echo them, leave no trace of a key in any output, database column or metric.

Extends tests/test_secrets.py (the redaction rules) end to end: real CLI
processes and a real daemon at debug level against the real simulator, which
accepts only another key and so answers every probe the way providers refuse a
key (OpenAI's 401 echoes ``sk-proj-****...WXYZ``). Also: a redirect is never
followed with the key, and third-party debug loggers forced to DEBUG print no
header. A small echoing server (real aiohttp, in a thread) goes further than any
provider: it puts the key in every masked shape (``sk-pr...QZXW``, ``sk-proj…QZXW``,
``...QZXW``, upper case) into its error bodies and into the ``x-request-id`` and
``request-id`` headers probes store as the request id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp import web

from conftest import free_port, start_process
from daemon_helpers import http_get, running_daemon, wait_for
from modelwatch.config import load_config
from modelwatch.probes import prober_for, supported_kinds
from modelwatch.probes.base import MAX_REQUEST_ID_LEN, new_http_session, run_probe
from modelwatch.secrets import REDACTED

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

# Each canary ends in letters no hex request id or timestamp contains, so its masked tail is findable.
CANARIES = {  # provider type -> (key, its public prefix)
    "openai": ("sk-proj-CANARY7f3a9b2c4d5e6f708192a3b4c5dQZXW", "sk-proj-"),
    "azure-openai": ("AZCANARY0a1b2c3d4e5f60718293a4b5c6dQZXV", ""),
    "anthropic": ("sk-ant-api03-CANARYk9J8h7G6f5E4d3C2b1A0zYxQZXU", "sk-ant-api03-"),
    "gemini": ("AIzaSyCANARYq1w2e3r4t5y6u7i8o9p0aQZXT", "AIza"),
    "openai-compatible": ("sk-CANARYcompat1234567890abcdefghQZXS", "sk-"),
}
BASE_PATH = {"openai": "/v1", "azure-openai": "/openai/v1", "anthropic": "/v1", "gemini": "/v1beta",
             "openai-compatible": "/v1"}
ACCEPTED = "sk-test-OnlyThisOneIsAccepted0000"


def fragments(key: str, prefix: str) -> set[str]:
    """The key, every 8-char window that reaches past its public prefix, and its masked tail."""
    tail = key[-4:]
    out = {key, tail + "\"", *(mask + tail for mask in "*.…")}
    out |= {key[i:i + 8] for i in range(len(key) - 7) if i + 8 > len(prefix)}
    return {f.lower() for f in out}


ALL_FRAGMENTS = {f: ptype for ptype, (k, p) in CANARIES.items() for f in fragments(k, p)}


def assert_clean(where: str, text: str) -> None:
    """No canary, in any letter case, whole, as an 8-char piece or as a masked tail."""
    lowered = text.lower()
    leaks = sorted({f for f in ALL_FRAGMENTS if f in lowered})
    at = lowered.find(leaks[0]) if leaks else 0
    assert not leaks, f"{where} leaks {leaks}: ...{text[max(0, at - 80):][:200]}"


@pytest.fixture(scope="module")
def refusing_sim(tmp_path_factory):
    """A simulator that accepts only ACCEPTED: every canary gets the provider's refusal."""
    scenario = tmp_path_factory.mktemp("sim") / "scenario.yaml"
    scenario.write_text(f"keys: [{ACCEPTED}]\ndefault: {{ttft_ms: 5, tokens: 2}}\n")
    proc, match = start_process(["sim", "--listen", "127.0.0.1:0", "--scenario", str(scenario)],
                                r"listening on (\S+)")
    yield match.group(1)
    proc.terminate()
    proc.wait(10)


def canary_config(path: Path, sim_url: str, port: int, *, interval: str = "1s",
                  good_url: str | None = None) -> Path:
    lines = [f"storage: {{path: {path.parent / 'canary.db'}}}", f"server: {{listen: '127.0.0.1:{port}'}}",
             f"defaults: {{interval: {interval}, timeout: 3s}}", "providers:"]
    for ptype, (key, _) in CANARIES.items():
        extra = ", api_version: '2025-04-01-preview'" if ptype == "azure-openai" else ""
        lines.append(f"  {ptype}: {{type: {ptype}, base_url: '{sim_url}{BASE_PATH[ptype]}', "
                     f"api_key: '{key}'{extra}}}")
    # One accepted key, so the daemon's debug lines ("probe ok") show debug output was really on.
    lines.append(f"  good: {{type: openai, base_url: '{good_url or sim_url}/v1', api_key: '{ACCEPTED}'}}")
    lines.append("targets:")
    lines.append("  - {name: t-good, provider: good, model: m-good, probes: [{kind: rest}]}")
    for ptype in CANARIES:
        kinds = ", ".join(f"{{kind: {k}}}" for k in sorted(supported_kinds(ptype)))
        lines.append(f"  - {{name: t-{ptype}, provider: {ptype}, model: m-{ptype}, probes: [{kinds}]}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelwatch", "--log-level", "debug", *args],
                          capture_output=True, text=True, timeout=60)


def dump_db(db: Path) -> str:
    """Every column of every row of every table, as text."""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "probe_results" in tables
        out = []
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                out.append(repr(row))
        return "\n".join(out)
    finally:
        con.close()


def test_every_keyed_command_and_the_daemon_leak_no_key(tmp_path, refusing_sim):
    port = free_port()
    cfg = canary_config(tmp_path / "c.yaml", refusing_sim, port)
    db = tmp_path / "canary.db"

    outputs = {}
    for name, args in {"check-config": ["check-config", "-c", str(cfg)],
                       "probe": ["probe", "-c", str(cfg)],
                       "probe --json": ["probe", "-c", str(cfg), "--json"],
                       "probe --dry-run": ["probe", "-c", str(cfg), "--dry-run"]}.items():
        proc = cli(*args)
        outputs[name] = proc
        assert_clean(f"{name} stdout", proc.stdout)
        assert_clean(f"{name} stderr", proc.stderr)
    assert outputs["check-config"].returncode == 0, outputs["check-config"].stderr
    assert outputs["probe"].returncode == 1  # every canary probe refused
    results = [json.loads(line) for line in outputs["probe --json"].stdout.splitlines() if line.strip()]
    expected = sum(len(supported_kinds(p)) for p in CANARIES) + 1
    assert len(results) == expected
    assert {r["outcome"] for r in results if r["provider"] == "openai"} == {"auth_error"}, results
    assert sum(r["outcome"] == "auth_error" for r in results) >= len(CANARIES)  # echoes provoked

    with running_daemon(cfg, port, "--log-level", "debug") as (proc, url):
        wait_for(lambda: db.exists() and dump_db(db).count("auth_error") >= 2 * len(CANARIES), 20)
        metrics_text = http_get(url + "/metrics")
        index = http_get(url + "/")
    out, err = proc.communicate(timeout=15)
    assert "auth_error" in metrics_text
    assert_clean("/metrics", metrics_text)
    assert_clean("status page", index or "")
    assert_clean("daemon stdout", out)
    assert_clean("daemon stderr (debug)", err)
    assert "level=debug" in err and "probe ok" in err  # debug output really was on

    table = dump_db(db)
    assert "auth_error" in table
    # The sim really echoed the masked key, and what was stored is the redacted echo.
    assert "Incorrect API key provided: <redacted>" in table, table[:2000]
    assert_clean("SQLite", table)

    for fmt in ("table", "json", "csv"):
        rep = cli("report", "-c", str(cfg), "--since", "1h", "--format", fmt)
        assert rep.returncode == 0, rep.stderr
        assert "t-openai" in rep.stdout
        assert_clean(f"report --format {fmt}", rep.stdout + rep.stderr)


def sent_key(request: web.Request) -> str:
    """The key a probe sent, in whichever header its provider type uses."""
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bearer or next((request.headers[h] for h in ("api-key", "x-goog-api-key", "x-api-key")
                           if h in request.headers), "")


def masked_forms(key: str) -> list[str]:
    """The shapes providers (and careless proxies) echo a key in."""
    tail = key[-4:]
    return [key, key.upper(), f"{key[:8]}...{tail}", f"{key[:6]}…{tail}", f"{key[:5]}***...{tail}",
            f"...{tail}", f"{key[:3]}…{tail}", f"{key[:7]}{'*' * 20}{tail}"]


async def echo(request: web.Request) -> web.Response:
    """Refuse every request with 401, echoing its key in the body and as the request id."""
    n = next(ECHOES)
    key = sent_key(request)
    forms = masked_forms(key)
    message = (f"Incorrect API key provided: {forms[-1]}. Also seen as " + ", ".join(forms[1:-1])
               + f"; the whole key: {key}.")
    body = {"type": "error", "request_id": f"req_{n} {forms[(n + 2) % len(forms)]}",
            "error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key",
                      "status": "UNAUTHENTICATED"}}
    # Longer than any request id, so the cap shows too; every other answer leaves out
    # request-id, so Anthropic's probe takes the body's.
    headers = {"x-request-id": f"req_{n} {forms[n % len(forms)]} {'r' * 200}"}
    if n % 2 == 0:
        headers["request-id"] = f"req_{n} {forms[(n + 1) % len(forms)]}"
    return web.json_response(body, status=401, headers=headers)


ECHOES = itertools.count()


@pytest.fixture(scope="module")
def echoing_server():
    """The echo server on a loopback port, run by its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_keys_echoed_masked_in_bodies_and_request_ids_leak_nowhere(tmp_path, echoing_server,
                                                                   refusing_sim):
    port = free_port()
    cfg = canary_config(tmp_path / "c.yaml", echoing_server, port, good_url=refusing_sim)
    db = tmp_path / "canary.db"

    for name, args in {"check-config": ["check-config", "-c", str(cfg)],
                       "probe": ["probe", "-c", str(cfg)],
                       "probe --json": ["probe", "-c", str(cfg), "--json"]}.items():
        proc = cli(*args)
        assert_clean(f"{name} stdout", proc.stdout)
        assert_clean(f"{name} stderr", proc.stderr)
        if name == "probe --json":
            results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    canaries = [r for r in results if r["target"] != "t-good"]
    assert len(canaries) == sum(len(supported_kinds(p)) for p in CANARIES)
    assert all(r["outcome"] == "auth_error" for r in canaries), canaries
    # The echo really reached the results: the request ids and error texts, redacted.
    assert all(r["request_id"] and r["request_id"].startswith("req_") for r in canaries), canaries
    assert sum(REDACTED in r["request_id"] for r in canaries) >= len(CANARIES), canaries
    assert all(len(r["request_id"]) <= MAX_REQUEST_ID_LEN for r in canaries), canaries
    assert all("Also seen as" in r["error"] for r in canaries if r["error"]), canaries

    with running_daemon(cfg, port, "--log-level", "debug") as (proc, url):
        wait_for(lambda: db.exists() and dump_db(db).count("Also seen as") >= 2 * len(canaries), 20)
        metrics_text = http_get(url + "/metrics")
        index = http_get(url + "/")
    out, err = proc.communicate(timeout=15)
    assert_clean("/metrics", metrics_text)
    assert_clean("status page", index or "")
    assert_clean("daemon stdout", out)
    assert_clean("daemon stderr (debug)", err)
    assert "level=debug" in err and "probe ok" in err  # debug output really was on
    assert "Also seen as" in err  # the failures, with the echoing text, were logged

    table = dump_db(db)
    con = sqlite3.connect(db)
    try:
        ids = [r[0] for r in con.execute("SELECT request_id FROM probe_results WHERE target != 't-good'")]
    finally:
        con.close()
    assert ids and all(i and i.startswith("req_") and len(i) <= MAX_REQUEST_ID_LEN for i in ids), ids
    assert_clean("SQLite", table)

    for fmt in ("table", "json", "csv"):
        rep = cli("report", "-c", str(cfg), "--since", "1h", "--format", fmt)
        assert rep.returncode == 0, rep.stderr
        assert "t-openai" in rep.stdout
        assert_clean(f"report --format {fmt}", rep.stdout + rep.stderr)


class _Recorder(BaseHTTPRequestHandler):
    """The redirect's destination: records every request's headers."""

    seen: list[dict] = []

    def _any(self) -> None:
        _Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def _any(self) -> None:
        # Read the body first, as a real server does: one closed with an upload unread (a voice
        # chain's audio) resets the connection, and the client may never see the 307.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(307)
        self.send_header("Location", _Redirector.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def _serve(handler) -> ThreadingHTTPServer:  # noqa: ANN001
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_redirects_are_not_followed_with_the_key_and_debug_loggers_print_no_header(tmp_path):
    recorder, redirector = _serve(_Recorder), _serve(_Redirector)
    _Redirector.target = f"http://127.0.0.1:{recorder.server_address[1]}"
    _Recorder.seen.clear()
    base = f"http://127.0.0.1:{redirector.server_address[1]}"
    cfg = canary_config(tmp_path / "c.yaml", base, free_port())
    jobs = load_config(cfg).jobs

    # Third-party loggers forced to DEBUG (as a careless operator might), captured in full.
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(logging.Formatter("%(name)s %(message)s").format(record))

    names = ("", "aiohttp", "aiohttp.client", "aiohttp.internal", "asyncio", "websockets", "urllib3",
             "httpx", "httpcore", "modelwatch")
    saved = {n: logging.getLogger(n).level for n in names}
    handler = Capture(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)

    async def go():
        async with new_http_session() as http:
            return await asyncio.gather(*(run_probe(j, http, prober_for(j.provider.type, j.probe.kind))
                                          for j in jobs))
    try:
        results = asyncio.run(go(), debug=True)
    finally:
        logging.getLogger().removeHandler(handler)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        recorder.shutdown()
        redirector.shutdown()

    assert len(results) == len(jobs)
    assert _Recorder.seen == []  # the other origin saw nothing, with or without a key
    # Every kind saw the 307 and stopped there: rest and realtime refuse it ("redirect"), the
    # models probe reads it as an unexpected status (it never asks to follow); a voice chain and a
    # conversation refuse it in their first step ("stt:redirect", "turn1:redirect").
    summary = [(r.target, r.kind, r.outcome, r.error_code, r.http_status) for r in results]
    assert all(r.outcome == "protocol_error" and r.http_status == 307
               and r.error_code in ("redirect", "http_307", "stt:redirect", "turn1:redirect") for r in results), summary
    assert {r.error_code for r in results if r.kind in ("voice-chain", "conversation")} >= {"stt:redirect",
                                                                                             "turn1:redirect"}
    assert records, "the forced DEBUG loggers recorded nothing: the check would be empty"
    for r in results:
        assert_clean(f"result {r.target}/{r.kind}", repr(r))
    assert_clean("third-party DEBUG logs", "\n".join(records))
