"""Storage faults under the real daemon: a locked database, a read-only one, a full disk.

Each test runs ``modelwatch run`` against the simulator with its database on a real file,
injects the fault for real, and checks that probing and /metrics go on, that the failure
is counted in ``modelwatch_store_errors_total`` and logged once (and its end once), that
the rows wait in memory meanwhile, and that every row reaches SQLite once the fault clears.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, write_config
from daemon_helpers import http_get, metric, rows, running_daemon, wait_for

from modelwatch.store import open_db

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

TARGETS = {f"f{i}": "healthy" for i in range(5)}
INTERVAL_S = 0.2
# A target's consecutive probes are one interval apart; this bounds a stall or a lost row
# (a missing row leaves a gap of two intervals or more), it does not measure performance.
MAX_GAP_S = INTERVAL_S + 1.0


def scrape(url: str) -> str:
    text = http_get(url + "/metrics")
    assert text is not None, "/metrics must answer during a storage fault"
    return text


def run_through_fault(tmp_path: Path, sim_url: str, db: Path, inject, clear,  # noqa: ANN001
                      at_start: bool = False) -> str:
    """Run the daemon through ``inject()`` … ``clear()``; check the fault's effects; return its log.

    The fault starts once every target has a stored row, or before the daemon starts (``at_start``);
    it ends after at least two failed write attempts, so "logged once" means once, not per attempt.
    """
    port = free_port()
    config = write_config(tmp_path / "c.yaml", sim_url, TARGETS, interval=f"{int(INTERVAL_S * 1000)}ms",
                          timeout="2s", listen=f"127.0.0.1:{port}", db=db)
    if at_start:
        open_db(db).conn.close()  # an existing database, as on any restart
        inject()
    with running_daemon(config, port) as (proc, url):
        if not at_start:
            wait_for(lambda: {r["target"] for r in rows(db)} == TARGETS.keys(), 10)
            inject()
        try:
            failing = wait_for(lambda: metric(t := scrape(url), "modelwatch_store_errors_total") >= 2 and t,
                               25)
            probes = metric(failing, "modelwatch_probes_total")
            # Still failing, still probing: the counter rises and the rows wait in memory.
            wait_for(lambda: metric(scrape(url), "modelwatch_probes_total") > probes + 2 * len(TARGETS), 10)
            during = scrape(url)
            assert metric(during, "modelwatch_store_pending_rows") > 0
            held = rows(db, "SELECT count(*) AS n FROM probe_results")[0]["n"]
        finally:
            clear()
        wait_for(lambda: metric(scrape(url), "modelwatch_store_pending_rows") == 0, 20)
        assert rows(db, "SELECT count(*) AS n FROM probe_results")[0]["n"] > held
        last = metric(scrape(url), "modelwatch_probes_total")
    log = proc.stderr.read()
    stored = rows(db)
    assert len(stored) >= last  # every probe counted before the stop is stored
    for target in TARGETS:
        ts = [r["ts"] for r in stored if r["target"] == target]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        assert max(gaps) <= MAX_GAP_S, (target, max(gaps))  # no row lost during the fault
    assert log.count("store write failed") == 1, log  # once per change of state, not per attempt
    assert log.count("store writes resumed") == 1, log
    return log


def test_a_database_locked_by_another_connection(sim_url, tmp_path):
    db = tmp_path / "modelwatch.db"
    locker = sqlite3.connect(db, isolation_level=None, timeout=0, check_same_thread=False)

    def inject():
        # Held for two of the writer's busy timeouts (5 s each): two attempts fail and are counted.
        locker.execute("BEGIN EXCLUSIVE")

    def clear():
        locker.execute("ROLLBACK")

    try:
        log = run_through_fault(tmp_path, sim_url, db, inject, clear)
    finally:
        locker.close()
    assert "database is locked" in log


def cannot_inject(reason: str) -> None:
    """Skip where the fault cannot be made here, but never in CI: a skip there would hide it."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run every storage fault for real: {reason}")
    pytest.skip(reason)


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def test_a_database_that_turns_read_only(sim_url, tmp_path):
    # Root ignores permission bits, and the daemon writes through descriptors it already holds,
    # so chmod would change nothing. The immutable attribute refuses writes (EPERM) even to root
    # and even through open descriptors. The -shm file is left alone: it is memory-mapped, and
    # an immutable mapping kills the process with SIGBUS instead of failing a write.
    db = tmp_path / "modelwatch.db"
    files = [db, Path(f"{db}-wal")]
    if subprocess.run(["chattr", "-i", str(tmp_path)], capture_output=True).returncode:
        cannot_inject("chattr is not supported on this filesystem")
    try:
        log = run_through_fault(tmp_path, sim_url, db, lambda: chattr("+i", *files),
                                lambda: chattr("-i", *files))
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            chattr("-i", *files)
    assert "disk I/O error" in log  # EPERM on write; a read-only mount (EROFS) reads the same


def test_a_database_read_only_when_the_daemon_starts(sim_url, tmp_path):
    # SQLite opens a file it cannot write read-only without saying so, and that connection
    # never writes again: the store must open a new one to resume once the file is writable.
    db = tmp_path / "modelwatch.db"
    if subprocess.run(["chattr", "-i", str(tmp_path)], capture_output=True).returncode:
        cannot_inject("chattr is not supported on this filesystem")
    try:
        log = run_through_fault(tmp_path, sim_url, db, lambda: chattr("+i", db), lambda: chattr("-i", db),
                                at_start=True)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            chattr("-i", db)
    assert "attempt to write a readonly database" in log


def test_a_full_disk(sim_url, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode:
        cannot_inject(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    db, filler = mnt / "modelwatch.db", mnt / "filler"

    def inject():
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # ENOSPC: the disk is full
            while True:
                f.write(b"\0" * 65536)

    try:
        log = run_through_fault(tmp_path, sim_url, db, inject, filler.unlink)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert "database or disk is full" in log
