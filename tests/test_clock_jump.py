"""A wall-clock step (NTP) neither stalls nor bursts the schedule: timing is monotonic.

The real :class:`~modelwatch.scheduler.Scheduler` runs in-process with its
clock functions injected: the wall clock it is given jumps by an hour back and
forth while real (monotonic) time passes, and every probe start is counted.
The system clock itself is never touched. Where Debian's libfaketime is
installed, the real daemon also runs with its wall clock stepped under it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import pytest
from pathlib import Path

from prometheus_client import CollectorRegistry

from conftest import free_port, write_config
from daemon_helpers import http_get, metric, rows, wait_for
from test_cost import budget_config

from modelwatch.cost import utc_day_start

from modelwatch.config import ProbeConfig, ProbeJob, ProviderConfig
from modelwatch.metrics import ProbeMetrics
from modelwatch.scheduler import Scheduler

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

INTERVAL = 0.5
HOUR = 3600.0


def _jobs(names: list[str]) -> list[ProbeJob]:
    provider = ProviderConfig(type="openai", base_url="http://127.0.0.1:9")
    return [ProbeJob(target=n, provider_name="p", provider=provider, api_key=None, model="m",
                     probe=ProbeConfig(kind="rest", interval=INTERVAL), location=None)
            for n in names]


class JumpingWall:
    """A wall clock that an NTP daemon steps: real time plus a settable offset."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return time.time() + self.offset


def test_scheduler_clock_ignores_wall_steps_and_follows_monotonic():
    wall, mono = JumpingWall(), [1000.0]
    sched = Scheduler(lambda job: asyncio.sleep(0), ProbeMetrics(CollectorRegistry()), 4,
                      wall=wall, monotonic=lambda: mono[0])
    t0 = sched.now()
    wall.offset = -HOUR
    assert sched.now() == t0  # a step back of the wall clock is invisible
    mono[0] += 2.5
    wall.offset = +HOUR
    assert (sched.now() - t0).total_seconds() == 2.5  # only monotonic time moves it


def test_wall_clock_jumps_neither_stall_nor_burst_the_cadence():
    wall = JumpingWall()
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def run_job(job: ProbeJob) -> None:
        starts[job.target].append(time.monotonic())

    async def main() -> tuple[float, list[float]]:
        sched = Scheduler(run_job, ProbeMetrics(CollectorRegistry()), 4, wall=wall)
        sched.set_jobs(_jobs(["a", "b"]))
        task = asyncio.get_running_loop().create_task(sched.run())
        begin = time.monotonic()
        jumps = []
        await asyncio.sleep(1.0)
        for step in (-HOUR, +2 * HOUR, -HOUR):  # back an hour, forward two, back to true time
            wall.offset += step
            jumps.append(time.monotonic())
            await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return begin, jumps

    begin, jumps = asyncio.run(main())
    assert wall.reads == 1  # the anchor of now(): the cadence itself never reads the wall clock
    end = jumps[-1] + 1.5
    expected = (end - begin) / INTERVAL  # 11 runs per job
    for target, times in starts.items():
        # No stall: a job never waits much longer than its interval, across every jump.
        gaps = [b - a for a, b in zip([begin, *times], [*times, end])]
        assert max(gaps) < 3 * INTERVAL, (target, gaps)
        # No burst: around each jump, one second holds about two runs, not a catch-up flood.
        for jump in jumps:
            in_window = [t for t in times if jump <= t < jump + 1.0]
            assert 1 <= len(in_window) <= 3, (target, jump - begin, in_window)
        assert expected - 3 <= len(times) <= expected + 2, (target, len(times))


LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                                "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")
                    if Path(p).exists()), None)


def test_daemon_under_a_stepping_wall_clock_keeps_its_cadence(tmp_path, sim_url):
    """The real daemon with libfaketime stepping its wall clock (monotonic left real)."""
    assert LIBFAKETIME, "libfaketime is missing: apt-get install -y faketime (.ci/run does)"
    port = free_port()
    db = tmp_path / "modelwatch.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"}, interval=f"{INTERVAL}s",
                       listen=f"127.0.0.1:{port}", db=db)
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = dict(os.environ, LD_PRELOAD=LIBFAKETIME, FAKETIME_TIMESTAMP_FILE=str(offset),
               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(_ts(db)) >= 2 or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read()
        added = {}
        for step in ("-3600", "+3600", "+0"):  # back an hour, then an hour ahead, then true time
            before = len(_ts(db))
            offset.write_text(step + "\n")
            # six intervals of real time: on a loaded machine the daemon's loop has stalled for up
            # to 2 s right after a step (loop_lag_s shows it; with the status page on and off, so
            # likely libfaketime re-reading its file on every clock call under FAKETIME_NO_CACHE);
            # a phase must outlast that to judge the cadence
            time.sleep(3.0)
            added[step] = len(_ts(db)) - before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    ts = _ts(db)
    steps = [b - a for a, b in zip(ts, ts[1:])]
    # The cadence went through the steps: about six runs per phase, never none, never a flood...
    assert all(1 <= n <= 9 for n in added.values()), added
    # ...and the stored ts is the (faked) wall time, so the steps really reached the daemon.
    assert min(steps) < -3000 and max(steps) > 6000, steps


def _ts(db: Path) -> list[float]:
    if not db.exists():
        return []
    try:
        return [r["ts"] for r in rows(db, "SELECT ts FROM probe_results ORDER BY rowid")]
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return []


def test_a_paused_budget_resumes_when_the_wall_clock_passes_utc_midnight(tmp_path, sim_url):
    """The budget's day is wall time (UTC): the real daemon, paused at 23:59:45, resumes after midnight."""
    assert LIBFAKETIME, "libfaketime is missing: apt-get install -y faketime (.ci/run does)"
    db = tmp_path / "mw.db"
    cfg, port = budget_config(tmp_path, sim_url, 0.03, db)
    to_midnight = int(utc_day_start(time.time()) + 86400 - time.time())
    offset = tmp_path / "faketime"
    offset.write_text(f"+{to_midnight - 15}\n")  # 15 s before the next UTC midnight
    env = dict(os.environ, LD_PRELOAD=LIBFAKETIME, FAKETIME_TIMESTAMP_FILE=str(offset),
               FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        paused = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_budget_paused") == 1 and metric(
            t, "modelwatch_budget_skipped_runs_total") >= 2 and t, 12)
        spent_yesterday = metric(paused, "modelwatch_budget_spent_usd")
        paid_before = metric(paused, "modelwatch_probes_total", target="paid")
        assert spent_yesterday >= 0.03
        offset.write_text(f"+{to_midnight + 30}\n")  # the clock passes midnight
        resumed = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total", target="paid") > paid_before and t, 10)
        assert metric(resumed, "modelwatch_budget_spent_usd") < spent_yesterday  # a new day's spend
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    err = proc.stderr.read()
    assert "paid probes paused until UTC midnight" in err and "paid probes resumed" in err, err
    midnight = utc_day_start(max(r["ts"] for r in rows(db)))
    paid = [r["ts"] for r in rows(db, "SELECT ts FROM probe_results WHERE target='paid' ORDER BY ts")]
    assert any(t < midnight for t in paid) and any(t >= midnight for t in paid)
