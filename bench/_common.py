"""Helpers shared by the benchmark scripts: child processes, CPU clocks, statistics.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def modelwatch_cmd(*args: str) -> list[str]:
    """The command line of ``modelwatch ARGS`` from this interpreter's environment."""
    exe = VENV_BIN / "modelwatch"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "modelwatch", *args]


def start_sim(scenario: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``modelwatch sim`` on a free loopback port; return (process, base URL)."""
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(modelwatch_cmd("sim", "--listen", "127.0.0.1:0", "--scenario", str(scenario)),
                                stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        stop_process(proc)
        raise RuntimeError(f"simulator did not start: {line!r}; see {log}")
    return proc, match.group(1)


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM a child we started, wait up to ``timeout`` s, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def http(method: str, url: str, timeout: float = 10.0) -> bytes:
    """One plain HTTP request to a loopback URL; returns the body or raises."""
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            http("GET", url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def sim_requests(sim_url: str) -> list[dict]:
    """The simulator's request log (oldest first)."""
    return json.loads(http("GET", sim_url + "/_sim/requests", timeout=30))


def clear_sim_requests(sim_url: str) -> None:
    """Empty the simulator's request log."""
    http("DELETE", sim_url + "/_sim/requests")


def sleep_until(wall: float) -> None:
    """Sleep until the wall-clock time ``wall`` (time.time() scale)."""
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """p50, p99 and max of a list of seconds, in milliseconds."""
    return {"p50": pct(values_s, 50) * 1000, "p99": pct(values_s, 99) * 1000,
            "max": (max(values_s) if values_s else float("nan")) * 1000, "n": len(values_s)}


def fmt(value: float, digits: int = 2) -> str:
    """A number for a Markdown table; '-' for NaN or None."""
    if value is None or value != value:  # noqa: PLR0124 - NaN check
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, and the number of online CPUs."""
    name = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} CPUs"


def replace_section(path: Path, marker: str, body: str) -> None:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``path``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")


def _git(*args: str) -> str:
    """Output of a read-only git command in this repository ('' on failure)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def src_fingerprint() -> str:
    """What the measured code is: the committed src/ tree plus any uncommitted diff under src/.

    Unlike the commit, it does not change when only tests or docs are committed.
    """
    import hashlib

    diff = _git("diff", "HEAD", "--", "src") + _git("ls-files", "--others", "--exclude-standard", "src")
    return _git("rev-parse", "HEAD:src") + ":" + hashlib.sha1(diff.encode()).hexdigest()[:12]


def code_version(loop: str | None = None) -> str:
    """Commit of the tree being measured (read-only git calls) and the daemon's loop (default: its own choice)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "src").splitlines()
    if loop is None:
        try:
            from modelwatch.loop import loop_name

            loop = loop_name()
        except ImportError:
            loop = "asyncio"
    # "XY path"; _git() strips the output, so the first line may have lost its leading blank
    files = [line.split(None, 1)[-1].removeprefix("src/modelwatch/") for line in dirty]
    mark = f" (src modified: {', '.join(files[:3])}{', ...' if len(files) > 3 else ''})" if files else ""
    return f"modelwatch {head}{mark}, {loop} loop"
