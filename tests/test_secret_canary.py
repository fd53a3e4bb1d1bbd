"""Canary keys never escape: every keyed command and the daemon, against endpoints that refuse
and echo them, leave no trace of a key in any output, database column or metric.

Extends tests/test_secrets.py (the redaction rules) end to end: real CLI
processes and a real daemon at debug level against the real simulator, which
accepts only another key and so answers every probe the way providers refuse a
key (OpenAI's 401 echoes ``sk-proj-****...WXYZ``). Also: a redirect is never
followed with the key, and third-party debug loggers forced to DEBUG print no
header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, start_process
from daemon_helpers import http_get, running_daemon, wait_for
from modelwatch.config import load_config
from modelwatch.probes import prober_for, supported_kinds
from modelwatch.probes.base import new_http_session, run_probe

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
    out = {key, "*" + key[-4:], "." + key[-4:], key[-4:] + "\""}
    out |= {key[i:i + 8] for i in range(len(key) - 7) if i + 8 > len(prefix)}
    return out


ALL_FRAGMENTS = {f: ptype for ptype, (k, p) in CANARIES.items() for f in fragments(k, p)}


def assert_clean(where: str, text: str) -> None:
    leaks = sorted({f for f in ALL_FRAGMENTS if f in text})
    lowered = text.lower()
    leaks += [k for k, _ in CANARIES.values() if k.lower() in lowered and k not in leaks]
    assert not leaks, f"{where} leaks {leaks}: ...{text[max(0, text.find(leaks[0]) - 80):][:200]}"


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


def canary_config(path: Path, sim_url: str, port: int, *, interval: str = "1s") -> Path:
    lines = [f"storage: {{path: {path.parent / 'canary.db'}}}", f"server: {{listen: '127.0.0.1:{port}'}}",
             f"defaults: {{interval: {interval}, timeout: 3s}}", "providers:"]
    for ptype, (key, _) in CANARIES.items():
        extra = ", api_version: '2025-04-01-preview'" if ptype == "azure-openai" else ""
        lines.append(f"  {ptype}: {{type: {ptype}, base_url: '{sim_url}{BASE_PATH[ptype]}', "
                     f"api_key: '{key}'{extra}}}")
    # One accepted key, so the daemon's debug lines ("probe ok") show debug output was really on.
    lines.append(f"  good: {{type: openai, base_url: '{sim_url}/v1', api_key: '{ACCEPTED}'}}")
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
    # models probe reads it as an unexpected status (it never asks to follow).
    summary = [(r.target, r.kind, r.outcome, r.error_code, r.http_status) for r in results]
    assert all(r.outcome == "protocol_error" and r.http_status == 307
               and r.error_code in ("redirect", "http_307") for r in results), summary
    assert records, "the forced DEBUG loggers recorded nothing: the check would be empty"
    for r in results:
        assert_clean(f"result {r.target}/{r.kind}", repr(r))
    assert_clean("third-party DEBUG logs", "\n".join(records))
