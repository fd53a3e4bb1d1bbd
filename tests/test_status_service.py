"""The status site served by a real daemon: headers, caching, CORS, secrets, a dying worker, the CLI."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import TEST_KEY, free_port, write_config
from daemon_helpers import metric, running_daemon, wait_for

pytestmark = pytest.mark.slow

OTHER = "https://www.example.com"


def fetch(url: str, **headers: str) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def daemon(sim_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    port = free_port()
    config = write_config(tmp / "modelwatch.yaml", sim_url, {"gpt-4o-mini": "gpt-4o-mini"},
                          listen=f"127.0.0.1:{port}")
    with config.open("a") as f:
        f.write("status:\n  refresh: 1s\n  min_runs: 2\n"
                f"  frame_ancestors: ['{OTHER}']\n  cors_origins: ['{OTHER}']\n")
    with running_daemon(config, port) as (proc, url):
        wait_for(lambda: _runs(url) >= 3, 30, every=0.3)
        yield proc, url, tmp / "modelwatch.db", config


def _runs(url: str) -> int:
    status, _, body = fetch(url + "/api/v1/status")
    if status != 200:
        return 0
    return json.loads(body)["targets"][0]["probes"][0]["windows"]["24h"]["runs"]


def test_pages_have_a_strict_policy_and_only_embeds_may_be_framed(daemon):
    _, url, _, _ = daemon
    status, headers, body = fetch(url + "/")
    assert status == 200 and b'id="banner"' in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    _, headers, body = fetch(url + "/embed/gpt-4o-mini")
    assert f"frame-ancestors {OTHER}" in headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in headers
    assert b"Errors" in body


def test_etag_answers_304_and_gzip_is_offered(daemon):
    _, url, _, _ = daemon
    status, headers, _ = fetch(url + "/api/v1/targets/gpt-4o-mini")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=5"  # refresh 1 s, at least 5
    # the snapshot changes every second: ask again at once until both fall in one snapshot
    for _ in range(20):
        _, h1, _ = fetch(url + "/api/v1/targets/gpt-4o-mini")
        s2, h2, b2 = fetch(url + "/api/v1/targets/gpt-4o-mini", **{"If-None-Match": h1["ETag"]})
        if s2 == 304:
            assert b2 == b""
            break
    else:
        pytest.fail("never a 304 for an unchanged snapshot")
    _, headers, zipped = fetch(url + "/api/v1/targets/gpt-4o-mini", **{"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip" and "Accept-Encoding" in headers["Vary"]
    assert json.loads(gzip.decompress(zipped))["target"] == "gpt-4o-mini"


def test_cors_only_for_configured_origins(daemon):
    _, url, _, _ = daemon
    _, headers, _ = fetch(url + "/api/v1/status", Origin=OTHER)
    assert headers["Access-Control-Allow-Origin"] == OTHER
    _, headers, _ = fetch(url + "/api/v1/status", Origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in headers
    assert "Origin" in headers["Vary"]  # a shared cache must not hand this answer to the allowed origin
    _, headers, _ = fetch(url + "/", Origin=OTHER)
    assert "Access-Control-Allow-Origin" not in headers  # pages are not an API


def test_no_key_material_anywhere_on_the_site(daemon, tmp_path):
    _, url, db, config = daemon
    out = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "modelwatch", "status", "-c", str(config), "--out", str(out)],
                   check=True, capture_output=True, timeout=60)
    bodies = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    for path in ("/", "/targets/gpt-4o-mini/", "/embed/gpt-4o-mini", "/api/v1/status",
                 "/api/v1/targets/gpt-4o-mini", "/api/v1/incidents", "/badge/gpt-4o-mini.svg"):
        bodies.append(fetch(url + path)[2])
    assert len(bodies) > 20
    for body in bodies:
        assert TEST_KEY.encode() not in body and TEST_KEY[-12:].encode() not in body


def test_the_page_equals_the_report_and_the_database(daemon):
    _, url, db, config = daemon
    snap = json.loads(fetch(url + "/api/v1/targets/gpt-4o-mini")[2])
    w = snap["probes"][0]["windows"]["24h"]
    time.sleep(0.5)  # rows of probes that ended before as_of are committed by now
    since, as_of = _ts(w["since"]), _ts(snap["as_of"]) + 1  # as_of is printed to the whole second
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    stored = conn.execute("SELECT count(*), sum(outcome != 'ok') FROM probe_results WHERE target = ? "
                          "AND ts >= ? AND ts < ?", ["gpt-4o-mini", since, as_of]).fetchone()
    # a probe that started before as_of but was not yet written when the snapshot was read
    in_flight = conn.execute("SELECT count(*) FROM probe_results WHERE target = ? AND ts >= ? AND ts < ?",
                             ["gpt-4o-mini", as_of - 3, as_of]).fetchone()[0]
    conn.close()
    assert stored[0] - in_flight <= w["runs"] <= stored[0]
    report = subprocess.run([sys.executable, "-m", "modelwatch", "report", "--db", str(db), "--since",
                             w["since"], "--until", snap["as_of"], "--source", "rollups", "--format", "json"],
                            check=True, capture_output=True, text=True, timeout=60)
    [row] = json.loads(report.stdout)
    assert row["probes"] >= w["runs"]  # the report reads later: it may count more of the same hour
    if row["probes"] == w["runs"]:
        assert row["ttft_p50_s"] == w["ttft_p50_s"] and row["availability"] == w["availability"]


def test_a_worker_that_dies_is_replaced_and_counted(daemon):
    proc, url, _, _ = daemon
    worker = _worker_pid(proc.pid)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: (_metrics_value(url, "modelwatch_status_refresh_failures_total") or 0) >= 1, 15, every=0.2)
    wait_for(lambda: _worker_pid(proc.pid, allow_missing=True) not in (None, worker), 15, every=0.2)
    wait_for(lambda: fetch(url + "/api/v1/status")[0] == 200, 20, every=0.2)  # 503 until its first snapshot
    assert fetch(url + "/")[0] == 200


def _worker_pid(parent: int, allow_missing: bool = False) -> int | None:
    """The status worker: the daemon's child process running multiprocessing's spawn main."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"multiprocessing.spawn" in cmdline and b"spawn_main" in cmdline:
            return int(entry.name)
    if allow_missing:
        return None
    raise AssertionError("no status worker process")


def _metrics_value(url: str, name: str) -> float | None:
    status, _, body = fetch(url + "/metrics")
    return metric(body.decode(), name) if status == 200 else None


def test_status_in_the_terminal_names_every_probe(daemon):
    _, _, db, config = daemon
    out = subprocess.run([sys.executable, "-m", "modelwatch", "status", "--db", str(db)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert "gpt-4o-mini" in out and "AVAIL 90d" in out and "as of" in out


def test_status_without_a_database_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "modelwatch", "status", "--db", str(tmp_path / "none.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no database" in done.stderr


def test_a_reload_shows_new_targets_and_settings(daemon):
    _, url, _, config = daemon
    text = config.read_text()
    config.write_text(text.replace("targets:\n", "targets:\n  - name: added-later\n    provider: sim\n"
                                   "    model: gpt-4o-mini\n    probes: [{kind: rest}]\n", 1)
                      .replace("min_runs: 2", "min_runs: 2\n  title: Reloaded title"))
    from daemon_helpers import http_post
    assert http_post(url + "/-/reload")[0] == 200
    # the next snapshot, whose build the reload started, shows them
    wait_for(lambda: len(json.loads(fetch(url + "/api/v1/status")[2])["targets"]) == 2, 10, every=0.2)
    status = json.loads(fetch(url + "/api/v1/status")[2])
    assert [t["target"] for t in status["targets"]] == ["added-later", "gpt-4o-mini"]  # config order
    assert b"Reloaded title" in fetch(url + "/")[2]


def test_with_the_status_page_off_the_root_says_so_and_the_api_is_gone(sim_url, tmp_path):
    port = free_port()
    config = write_config(tmp_path / "modelwatch.yaml", sim_url, {"gpt-4o-mini": "gpt-4o-mini"},
                          listen=f"127.0.0.1:{port}")
    with config.open("a") as f:
        f.write("status: {enabled: false}\n")
    with running_daemon(config, port) as (proc, url):
        status, _, body = fetch(url + "/")
        assert status == 200 and b"status.enabled is false" in body
        assert fetch(url + "/api/v1/status")[0] == 404
        assert _worker_pid(proc.pid, allow_missing=True) is None


def _ts(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("header, gz", [("gzip", True), ("gzip, deflate, br", True), ("br;q=1, GZIP;q=0.5", True),
                                        ("gzip;q=0", False), ("identity", False), ("", False), ("*", True)])
def test_accept_encoding_is_read_with_its_q_values(header, gz):
    from modelwatch.status.service import _accepts_gzip
    assert _accepts_gzip(header) is gz
