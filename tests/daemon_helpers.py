"""Running ``modelwatch run`` as a real process and reading what it exposes."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


@contextlib.contextmanager
def running_daemon(config: Path, port: int, *args: str):
    """Start the daemon, wait for /-/healthy, yield (process, base URL); SIGTERM it at exit."""
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", *args, "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(url + "/-/healthy") == "OK\n" or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read()
        yield proc, url
    finally:
        stop_daemon(proc)


def stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM a daemon still running; SIGKILL it if it has not stopped within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def http_post(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate, timeout: float, every: float = 0.05):  # noqa: ANN001, ANN201
    """Poll until ``predicate()`` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def samples(metrics_text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} from an exposition text."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of a sample over series whose labels include ``labels``."""
    total = 0.0
    for (sname, pairs), value in samples(metrics_text).items():
        if sname == name and set(labels.items()) <= set(pairs):
            total += value
    return total


def rows(db: Path, sql: str = "SELECT * FROM probe_results ORDER BY ts", params=()) -> list[dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def assert_one_at_a_time_per_target(results: list[dict], served: dict[str, dict]) -> None:
    """Each target's requests, as the simulator served them, never overlap; different targets' do.

    ``results`` are probe rows (or ``probe --json`` lines), ``served`` the simulator's log by
    request id. The simulator's log has no clock of its own to compare, so it tells which target
    each request belonged to (a models request names no model) and that it was served; the
    request lies inside its probe's span (sent after ``ts``, answered before ``ts + duration_s``),
    so probe spans that never overlap mean requests that never did.
    """
    spans = {}
    for r in results:
        entry = served[r["request_id"]]  # the simulator served this very request ...
        assert entry["actual_duration_s"] <= r["duration_s"]  # ... inside the probe's span
        spans.setdefault(r["target"], []).append((r["ts"], r["ts"] + r["duration_s"] - 0.002))
    for target, mine in spans.items():
        assert max_overlap(mine) == 1, (target, sorted(mine))
    assert max_overlap([s for mine in spans.values() for s in mine]) > 1


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
