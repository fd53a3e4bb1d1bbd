"""Backing up and restoring the database as docs/operations.md says, with the daemon running."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import pytest

from conftest import free_port, write_config
from daemon_helpers import http_get, metric, rows, running_daemon, wait_for

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it


def test_an_online_backup_restores_into_a_working_database(sim_url, tmp_path):
    port = free_port()
    db = tmp_path / "modelwatch.db"
    backup = tmp_path / "backup" / "modelwatch.db"
    backup.parent.mkdir()
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy", "b": "healthy"}, interval="200ms",
                       listen=f"127.0.0.1:{port}", db=db)
    with running_daemon(cfg, port) as (_, url):
        wait_for(lambda: len(rows(db)) >= 6, 15)
        # the documented command, while the writer commits every 0.25 s
        done = subprocess.run([sys.executable, "-c",
                               f'import sqlite3; sqlite3.connect("file:{db}?mode=ro", uri=True)'
                               f'.backup(sqlite3.connect("{backup}"))'], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(rows(db)) > len(rows(backup)) + 4, 10)  # the daemon went on writing
    saved = rows(backup)
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert len(saved) >= 6
    # Restore: stopped daemon, the old database and its -wal/-shm gone, the backup in its place.
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copy(backup, db)
    with running_daemon(cfg, port) as (_, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_total") >= 4, 15)
    restored = rows(db)
    assert restored[:len(saved)] == saved  # everything the backup held, unchanged
    assert len(restored) > len(saved)  # and the daemon writes on after it
    report = subprocess.run([sys.executable, "-m", "modelwatch", "report", "--db", str(db), "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
