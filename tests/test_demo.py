"""``modelwatch demo`` as a new user meets it: status page URL first, then a line per probe result."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from modelwatch.cli import demo_line
from modelwatch.outcomes import ProbeResult

# 21:40:03  flaky-model  rest  rate_limited  http 429  total 127 ms
LINE = re.compile(r"^(\d\d:\d\d:\d\d)  (\S+) +(rest|realtime|models|voice-chain|conversation) +(\S+) +(.*)$")


def result(**values) -> ProbeResult:
    base = {"ts": time.time(), "target": "gpt-4o-mini", "provider": "sim", "model": "gpt-4o-mini",
            "kind": "rest", "outcome": "ok"}
    return ProbeResult(**(base | values))


def test_probe_lines_are_short_and_aligned():
    ok = demo_line(result(ttft_s=0.1834, duration_s=0.31), 12, 8)
    failed = demo_line(result(target="flaky-model", outcome="rate_limited", http_status=429, duration_s=1.24),
                       12, 8)
    slow = demo_line(result(target="slow-model", ttft_s=1.84, duration_s=2.05), 12, 8)
    timeout = demo_line(result(outcome="timeout", error_code="first_token_timeout", duration_s=10.0), 12, 8)
    listing = demo_line(result(kind="models", duration_s=0.003), 12, 8)
    assert ok.endswith("  gpt-4o-mini   rest      ok             ttft 183 ms  total 310 ms")
    assert failed.endswith("  flaky-model   rest      rate_limited   http 429  total 1.2 s")
    assert slow.endswith("ttft 1.8 s  total 2.0 s")
    assert timeout.endswith("  timeout        first_token_timeout  total 10.0 s")
    assert listing.endswith("  models    ok             total 3 ms")
    assert len({line.index(" ok ") + 1 for line in (ok, slow)} | {failed.index("rate_limited")}) == 1
    for line in (ok, failed, slow, timeout, listing):
        assert LINE.match(line), line


@pytest.mark.slow
def test_demo_prints_the_status_page_first_then_probe_results_as_they_happen(tmp_path):
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "demo", "--for", "25s",
                             "--db", str(tmp_path / "demo.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []  # (seconds since start, line), as read
    try:
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended = time.monotonic() - started
    text = [line for _, line in lines]
    assert re.fullmatch(r"Status page: http://127\.0\.0\.1:\d+/", text[0]), text[:3]
    url = text[0].removeprefix("Status page: ")
    assert f"  metrics:   {url}metrics" in text and any(line.startswith("  report:    modelwatch report --db ")
                                                           for line in text)
    probes = [(at, LINE.match(line)) for at, line in lines if LINE.match(line)]
    assert len({m[2] for _, m in probes}) >= 6, text  # several targets, each with its own lines
    assert probes[0][0] < ended - 10, "probe lines came only at the end, not as they happened"
    flaky = [m[4] for _, m in probes if m[2] == "flaky-model"]
    assert "ok" in flaky and set(flaky) - {"ok"}, flaky  # the flaky model fails within 25 s, every run
    assert any(m[2] == "flaky-model" and re.match(r"http [45]\d\d  total ", m[5]) for _, m in probes), flaky
    # aligned: every line's outcome column starts at the same offset
    assert len({m.start(4) for _, m in probes}) == 1
