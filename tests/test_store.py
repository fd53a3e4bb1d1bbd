"""The SQLite store: migrations, WAL, prompt commits, pruning and surviving write failures."""

from __future__ import annotations

import sqlite3
import threading
import time

from modelwatch.outcomes import COLUMNS, ProbeResult
from modelwatch.store import MIGRATIONS, Store, migrate, open_db


def result(target: str = "t", ts: float | None = None, **kw) -> ProbeResult:
    return ProbeResult(ts=time.time() if ts is None else ts, target=target, provider="p", model="m",
                       kind="rest", outcome="ok", **kw)


def count(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM probe_results").fetchone()[0]
    finally:
        conn.close()


def test_migrations_apply_once_and_create_the_design_columns(db_path):
    db = open_db(db_path)
    assert migrate(db) == []  # already applied by open_db
    names = [r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()]
    assert names == [name for name, _ in MIGRATIONS]
    assert set(COLUMNS) <= set(db["probe_results"].columns_dict)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.conn.close()


def test_a_result_is_committed_within_a_second(db_path):
    store = Store(db_path, retention_s=86400)
    try:
        store.submit(result(ttft_s=0.123))
        deadline = time.monotonic() + 1.0
        while count(db_path) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count(db_path) == 1  # visible to another connection: committed
    finally:
        store.close()


def test_close_flushes_everything_queued(db_path):
    store = Store(db_path, retention_s=86400)
    for i in range(500):
        store.submit(result(f"t{i % 7}", request_id=f"r{i}"))
    store.close()
    assert count(db_path) == 500


def test_submit_never_blocks_even_while_the_database_is_locked(db_path):
    errors = []
    store = Store(db_path, retention_s=86400, on_error=lambda: errors.append(1))
    locker = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        start = time.perf_counter()
        for i in range(100):
            store.submit(result(request_id=f"r{i}"))
        assert time.perf_counter() - start < 0.05
        deadline = time.monotonic() + 15
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert errors, "a failed write is counted"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    store.close()
    assert count(db_path) == 100  # nothing lost once the lock went away


def test_prune_removes_rows_older_than_retention(db_path):
    store = Store(db_path, retention_s=3600)
    store.submit(result("old", ts=time.time() - 7200))
    store.submit(result("new"))
    store.close()
    store = Store(db_path, retention_s=3600)  # pruning runs when the writer starts
    time.sleep(0.5)
    store.close()
    conn = sqlite3.connect(db_path)
    assert [r[0] for r in conn.execute("SELECT target FROM probe_results")] == ["new"]
    conn.close()


def test_writer_runs_off_the_calling_thread(db_path):
    store = Store(db_path, retention_s=86400)
    assert store._thread is not threading.current_thread() and store._thread.is_alive()
    store.close()
    assert not store._thread.is_alive()
