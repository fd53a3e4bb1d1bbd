"""Upgrading in place: databases of release 0.1.0, whose own runner recorded migrations in ``_migrations``.

``data/db-v0.1.0.sqlite`` was written by that release's code (``data/make_db_v0_1_0.py`` at commit
9410bff): every migration of that release applied, a dozen probes, their hourly rollups. Upgrading
adds the daily rollups (m006), summed from those hourly ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
from pathlib import Path

import sqlite_utils
from test_rollups import (assert_same_rollups, backfilled, database_before_rollups, rollup_table, summed_by_day,
                          synthetic_rows)
from test_store import MIGRATION_NAMES, result

from modelwatch import rollups
from modelwatch.store import LEGACY_MIGRATIONS_TABLE, MIGRATIONS, Store, migrate, open_db

FIXTURE = Path(__file__).parent / "data" / "db-v0.1.0.sqlite"
RELEASE_0_1_0 = MIGRATION_NAMES[:5]  # what that release applied and recorded


def snapshot(path: Path) -> dict:
    """Rows, rollups and schema of the data tables, read without modelwatch's code."""
    conn = sqlite3.connect(path)
    try:
        return {
            "rows": conn.execute("SELECT * FROM probe_results ORDER BY id").fetchall(),
            "rollups": rollup_table(conn),
            "daily": rollup_table(conn, rollups.DAILY)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            [rollups.DAILY_TABLE]).fetchone() else {},
            "schema": conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE "
                                   "'%migrations%' ORDER BY name").fetchall(),
            "legacy": conn.execute(f"SELECT name, applied_at FROM {LEGACY_MIGRATIONS_TABLE} "
                                   "ORDER BY rowid").fetchall()
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            [LEGACY_MIGRATIONS_TABLE]).fetchone() else [],
        }
    finally:
        conn.close()


# What migrations after 0.1.0 add or change (probe_results gains interrupt_s in m007, WebRTC's
# phases in m008).
ADDED_SINCE_0_1_0 = {rollups.DAILY_TABLE, "probe_results", "probe_stages", "probe_turns",
                     "idx_probe_stages_probe_id", "idx_probe_turns_probe_id"}


def opened(path: Path) -> tuple[sqlite_utils.Database, list[str]]:
    """The database as open_db opens it, with the names of the migrations applied now."""
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
    return db, migrate(db)


def test_a_database_of_release_0_1_0_upgrades_in_place(tmp_path, caplog):
    caplog.set_level(logging.INFO, "modelwatch.store")
    path = tmp_path / "modelwatch.db"
    shutil.copy(FIXTURE, path)
    before = snapshot(path)
    assert [name for name, _ in before["legacy"]] == RELEASE_0_1_0 and len(before["rows"]) == 12

    db, applied = opened(path)
    assert applied == ["m006_daily_rollups", "m007_voice_details", "m008_webrtc_phases"]  # what came after 0.1.0
    records = MIGRATIONS.applied(db)
    assert [m.name for m in records] == MIGRATION_NAMES
    # the records are the old ones, carried over with their times, not new runs
    assert [m.applied_at for m in records[:5]] == [
        str(dt.datetime.fromtimestamp(ts, dt.timezone.utc)) for _, ts in before["legacy"]]
    assert not db[LEGACY_MIGRATIONS_TABLE].exists()
    assert migrate(db) == [] and MIGRATIONS.applied(db) == records  # and a second open does nothing
    db.conn.close()
    assert [(r.getMessage(), r.fields) for r in caplog.records if "adopted" in r.getMessage()] == [
        ("adopted the migration records of an older release", {"migrations": 5})]

    after = snapshot(path)
    # tables, columns and indexes unchanged, the daily rollups and the voice details (m007) added
    assert [s for s in after["schema"] if s[1] not in ADDED_SINCE_0_1_0] == [
        s for s in before["schema"] if s[1] != "probe_results"]
    assert len(after["schema"]) == len(before["schema"]) + len(ADDED_SINCE_0_1_0) - 1
    added = 5  # interrupt_s (m007), signal_s, ice_s, dtls_s, channel_s (m008): added empty
    assert [row[:-added] for row in after["rows"]] == before["rows"] and after["rollups"] == before["rollups"]
    assert {value for row in after["rows"] for value in row[-added:]} == {None}
    assert_same_rollups(after["daily"], summed_by_day(before["rollups"]))
    assert sum(r["probes"] for r in after["daily"].values()) == 12

    store = Store(path, retention_s=10 ** 10, rollup_retention_s=10 ** 10)  # and it takes new rows
    store.submit(result("new", ts=1_790_000_000.0, ttft_s=0.2, duration_s=0.4))
    store.close()
    db = open_db(path)
    rows = [dict(r) for r in db["probe_results"].rows]
    assert len(rows) == 13 and rows[-1]["target"] == "new"
    assert rollup_table(db.conn) == backfilled(rows)  # its rollups counted, the old ones kept
    assert_same_rollups(rollup_table(db.conn, rollups.DAILY), summed_by_day(backfilled(rows)))
    db.conn.close()


def legacy_records(path: Path) -> None:
    """Turn sqlite-utils' records into 0.1.0's: the migrations a database has, recorded the old way."""
    conn = sqlite3.connect(path, isolation_level=None)
    names = [r[0] for r in conn.execute(f"SELECT name FROM {MIGRATIONS.migrations_table} ORDER BY rowid")]
    conn.execute(f"DROP TABLE {MIGRATIONS.migrations_table}")
    conn.execute(f"CREATE TABLE {LEGACY_MIGRATIONS_TABLE} (name TEXT PRIMARY KEY, applied_at REAL)")
    conn.executemany(f"INSERT INTO {LEGACY_MIGRATIONS_TABLE} VALUES (?, 1.7e9)", [[n] for n in names])
    conn.close()


def test_a_database_of_a_release_before_rollups_adopts_its_records_and_runs_the_rest(tmp_path):
    path = tmp_path / "modelwatch.db"
    rows = synthetic_rows(300)
    database_before_rollups(path, rows)
    legacy_records(path)
    db, applied = opened(path)
    assert applied == ["m004_hourly_rollups", "m005_loop_lag", "m006_daily_rollups", "m007_voice_details",
                       "m008_webrtc_phases"]
    assert [m.name for m in MIGRATIONS.applied(db)] == MIGRATION_NAMES
    assert rollup_table(db.conn) == backfilled(rows)
    assert_same_rollups(rollup_table(db.conn, rollups.DAILY), summed_by_day(backfilled(rows)))
    db.conn.close()


def test_an_empty_legacy_record_left_by_a_kill_before_the_first_migration_runs_them_all(tmp_path):
    """0.1.0 created ``_migrations`` before its first migration: a kill between the two left it empty."""
    path = tmp_path / "modelwatch.db"
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {LEGACY_MIGRATIONS_TABLE} (name TEXT PRIMARY KEY, applied_at REAL)")
    conn.close()
    db, applied = opened(path)
    assert applied == MIGRATION_NAMES and db[rollups.TABLE].exists() and db[rollups.DAILY_TABLE].exists()
    db.conn.close()


def test_adoption_is_one_transaction(tmp_path):
    """A failure inside the adoption leaves the old record as it was, and the next open adopts it."""
    path = tmp_path / "modelwatch.db"
    shutil.copy(FIXTURE, path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"CREATE TABLE {MIGRATIONS.migrations_table} (id INTEGER PRIMARY KEY, migration_set TEXT, "
                 "name TEXT, applied_at TEXT)")
    conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {MIGRATIONS.migrations_table} "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.close()
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    try:
        migrate(db)
    except sqlite3.IntegrityError:
        pass
    else:
        raise AssertionError("the refused insert must fail the adoption")
    assert db[LEGACY_MIGRATIONS_TABLE].count == 5 and db[MIGRATIONS.migrations_table].count == 0
    assert not db[rollups.DAILY_TABLE].exists()  # nothing after the failed adoption ran either
    db.execute("DROP TRIGGER refuse")
    assert migrate(db) == ["m006_daily_rollups", "m007_voice_details", "m008_webrtc_phases"]
    assert [m.name for m in MIGRATIONS.applied(db)] == MIGRATION_NAMES
    db.conn.close()
