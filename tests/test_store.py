"""The SQLite store: migrations, WAL, prompt commits, pruning and surviving write failures."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from test_rollups import backfilled, rollup_table

from modelwatch import rollups
from modelwatch.outcomes import COLUMNS, ProbeResult
from modelwatch.store import LEGACY_MIGRATIONS_TABLE, MIGRATIONS, Store, migrate, open_db

# Every migration, as databases record it: a rename would make old databases run one again.
MIGRATION_NAMES = ["m001_probe_results", "m002_audio_tokens", "m003_cost", "m004_hourly_rollups",
                   "m005_loop_lag", "m006_daily_rollups", "m007_voice_details", "m008_webrtc_phases"]


def result(target: str = "t", ts: float | None = None, **kw) -> ProbeResult:
    return ProbeResult(**{"ts": time.time() if ts is None else ts, "target": target, "provider": "p", "model": "m",
                          "kind": "rest", "outcome": "ok", **kw})


def count(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM probe_results").fetchone()[0]
    finally:
        conn.close()


def test_migrations_apply_once_and_create_the_design_columns(db_path):
    db = open_db(db_path)
    assert migrate(db) == []  # already applied by open_db
    assert [m.name for m in MIGRATIONS.applied(db)] == MIGRATION_NAMES
    assert not db[LEGACY_MIGRATIONS_TABLE].exists()  # a new database has sqlite-utils' record alone
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_rows_beyond_the_pending_limit_are_dropped_oldest_first_counted_and_logged_once(db_path, caplog):
    dropped = []
    store = Store(db_path, retention_s=86400, on_dropped=lambda: dropped.append(1), max_pending_rows=10)
    locker = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(15):
            store.submit(result(request_id=f"r{i}"))
        time.sleep(0.6)  # at least two commit windows: the second batch is a later collection
        for i in range(15, 25):
            store.submit(result(request_id=f"r{i}"))
        deadline = time.monotonic() + 15
        while len(dropped) < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    store.close()
    assert len(dropped) == 15
    conn = sqlite3.connect(db_path)
    kept = [r[0] for r in conn.execute("SELECT request_id FROM probe_results ORDER BY id")]
    conn.close()
    assert kept == [f"r{i}" for i in range(15, 25)]  # the newest rows survive
    assert sum("dropping the oldest unwritten rows" in r.getMessage() for r in caplog.records) == 1


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


def rollup_probes(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"SELECT total(probes) FROM {rollups.TABLE}").fetchone()[0]
    finally:
        conn.close()


def test_rows_and_rollups_commit_together_or_not_at_all(db_path):
    errors = []
    open_db(db_path).conn.close()
    saboteur = sqlite3.connect(db_path, isolation_level=None)
    # The raw insert succeeds, then the rollup upsert fails inside the same transaction.
    saboteur.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {rollups.TABLE} "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    store = Store(db_path, retention_s=86400, on_error=lambda: errors.append(1))
    try:
        for i in range(50):
            store.submit(result(f"t{i % 3}", request_id=f"r{i}"))
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert errors, "the failed batch is counted"
        assert count(db_path) == 0 and rollup_probes(db_path) == 0  # neither half was committed
        saboteur.execute("DROP TRIGGER refuse")
    finally:
        saboteur.close()
        store.close()
    assert count(db_path) == 50 and rollup_probes(db_path) == 50  # retried once, counted once


CRASHING_WRITER = """
import sys, time
from modelwatch.outcomes import ProbeResult
from modelwatch.store import Store
store = Store(sys.argv[1], retention_s=10 ** 9)
start = 1_790_000_000.0
for i in range(10 ** 9):
    store.submit(ProbeResult(ts=start + i * 5, target=f"t{i % 4}", provider="p", model="m", kind="rest",
                             outcome="ok" if i % 7 else "timeout", ttft_s=0.1 + (i % 13) / 100,
                             duration_s=0.5, input_tokens=3))
    if i == 2000:
        print("writing", flush=True)
    time.sleep(0.0002)
"""


@pytest.mark.slow
def test_a_killed_writer_leaves_rollups_that_match_the_raw_rows(db_path):
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(db_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        deadline = time.monotonic() + 10
        while count(db_path) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # no close(), no clean shutdown: a crash mid-stream
        proc.wait(10)
    db = open_db(db_path)
    stored = [dict(r) for r in db["probe_results"].rows]
    rebuilt = backfilled(stored)
    assert len(stored) >= 1000 and rollup_table(db.conn) == rebuilt
    db.conn.close()


def test_prune_keeps_rollups_of_pruned_raw_rows_until_their_own_retention(db_path):
    now = time.time()
    store = Store(db_path, retention_s=3600, rollup_retention_s=10 * 86400)
    for ts in (now - 20 * 86400, now - 2 * 86400, now - 7200, now):
        store.submit(result("t", ts=ts))
    store.close()
    Store(db_path, retention_s=3600, rollup_retention_s=10 * 86400).close()  # prunes when it starts
    conn = sqlite3.connect(db_path)
    raw = [r[0] for r in conn.execute("SELECT ts FROM probe_results")]
    hours = [r[0] for r in conn.execute(f"SELECT hour FROM {rollups.TABLE} ORDER BY hour")]
    days = [r[0] for r in conn.execute(f"SELECT day FROM {rollups.DAILY_TABLE} ORDER BY day")]
    conn.close()
    assert raw == [now]
    assert hours == [rollups.hour_of(ts) for ts in (now - 2 * 86400, now - 7200, now)]
    assert days == sorted({rollups.day_of(ts) for ts in (now - 2 * 86400, now - 7200, now)})


def test_rollup_retention_defaults_to_400_days_and_must_cover_the_raw_retention(tmp_path):
    from modelwatch.config import ConfigError, load_config

    def config(storage: str):
        path = tmp_path / "c.yaml"
        path.write_text(f"storage: {{path: {tmp_path / 'x.db'}, {storage}}}\n"
                        "providers:\n  sim: {type: openai, base_url: 'http://127.0.0.1:1/v1', api_key: k}\n"
                        "targets:\n  - {name: a, provider: sim, model: m, probes: [{kind: rest}]}\n")
        return load_config(path)

    assert config("retention: 30d").storage.rollup_retention == 400 * 86400
    assert config("retention: 7d, rollup_retention: 7d").storage.rollup_retention == 7 * 86400
    with pytest.raises(ConfigError) as err:
        config("retention: 30d, rollup_retention: 7d")
    assert err.value.problems == [f"{tmp_path / 'c.yaml'}: storage.rollup_retention: "
                                  "must be at least storage.retention (30d)"]


@pytest.mark.slow
def test_a_wall_clock_stepped_far_ahead_prunes_nothing(db_path, caplog):
    """Retention is wall time: a clock stepped two days ahead must not delete a day of history."""
    offset = [0.0]
    store = Store(db_path, retention_s=86400, prune_every_s=0.05, wall=lambda: time.time() + offset[0])
    try:
        store.submit(result(ts=time.time() - 7200))  # two hours old: well inside the retention
        deadline = time.monotonic() + 5
        while count(db_path) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        offset[0] = 2 * 86400.0
        time.sleep(0.5)  # several prune rounds under the stepped clock
        assert count(db_path) == 1
        steps = [r for r in caplog.records if "pruning paused" in r.getMessage()]
        assert len(steps) == 1  # said once, not every round
        offset[0] = 0.0  # the clock is put right: pruning goes on, with nothing to delete yet
        store.submit(result(ts=time.time() - 2 * 86400))  # older than the retention
        time.sleep(1.0)
        conn = sqlite3.connect(db_path)
        rolled_up = conn.execute(f"SELECT sum(probes) FROM {rollups.TABLE}").fetchone()[0]
        conn.close()
        assert rolled_up == 2  # the old row was written (its rollup stays) ...
        assert count(db_path) == 1  # ... and pruned, while the two-hour-old one stayed
    finally:
        store.close()


def detail_rows(db_path, table: str) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"SELECT r.target, d.* FROM {table} d JOIN probe_results r ON r.id = d.probe_id "  # noqa: S608
                            "ORDER BY d.rowid").fetchall()
    finally:
        conn.close()


def test_stages_and_turns_are_written_with_their_probe(db_path):
    from modelwatch.outcomes import StageTiming, TurnTiming
    store = Store(db_path, retention_s=86400)
    try:
        store.submit(result("plain"))
        store.submit(result("chain", kind="voice-chain", stages=(
            StageTiming("stt", 0.0, 0.01, 0.2, 0.3), StageTiming("llm", 0.31, 0.02, 0.1, 0.2),
            StageTiming("tts", 0.52, 0.02, 0.15, None))))
        store.submit(result("conv", kind="conversation", interrupt_s=None,
                            turns=tuple(TurnTiming(k, k * 0.1, 0.05, 0.08, 10 * k, 2) for k in (1, 2, 3))))
        store.submit(result("barge", kind="realtime", interrupt_s=0.071))
    finally:
        store.close()
    assert detail_rows(db_path, "probe_stages") == [
        ("chain", 2, "stt", 0.0, 0.01, 0.2, 0.3), ("chain", 2, "llm", 0.31, 0.02, 0.1, 0.2),
        ("chain", 2, "tts", 0.52, 0.02, 0.15, None)]
    assert [r[:3] + r[4:] for r in detail_rows(db_path, "probe_turns")] == [
        ("conv", 3, 1, 0.05, 0.08, 10, 2), ("conv", 3, 2, 0.05, 0.08, 20, 2), ("conv", 3, 3, 0.05, 0.08, 30, 2)]
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT target, interrupt_s FROM probe_results WHERE interrupt_s IS NOT NULL").fetchall() \
        == [("barge", 0.071)]
    conn.close()


def test_detail_rows_follow_their_probe_when_pruned_and_survive_a_repaired_batch(db_path):
    from modelwatch.outcomes import StageTiming, TurnTiming
    old = time.time() - 3 * 86400
    store = Store(db_path, retention_s=30 * 86400)
    try:
        store.submit(result("old", ts=old, kind="conversation", turns=(TurnTiming(1, 0.0, 0.1, 0.2),)))
        # a row SQLite refuses as it is (a lone surrogate): the batch is repaired, its details kept
        store.submit(result("new\ud800", kind="voice-chain", stages=(StageTiming("stt", 0.0, 0.01, 0.2, 0.3),)))
    finally:
        store.close()
    assert [r[0] for r in detail_rows(db_path, "probe_stages")] == ["new\ufffd"]
    assert [r[0] for r in detail_rows(db_path, "probe_turns")] == ["old"]
    store = Store(db_path, retention_s=86400)  # prunes at start: the old probe goes, with its turns
    time.sleep(0.5)
    store.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM probe_turns").fetchone()[0] == 0  # none left orphaned
        assert [r[0] for r in conn.execute("SELECT target FROM probe_results")] == ["new\ufffd"]
    finally:
        conn.close()
    assert [r[0] for r in detail_rows(db_path, "probe_stages")] == ["new\ufffd"]
