"""Upgrading in place: databases of release 0.1.0, whose own runner recorded migrations in ``_migrations``.

``data/db-v0.1.0.sqlite`` was written by that release's code (``data/make_db_v0_1_0.py`` at commit
9410bff): every migration applied, a dozen probes, their hourly rollups.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
from pathlib import Path

import sqlite_utils
from test_rollups import backfilled, database_before_rollups, rollup_table, synthetic_rows
from test_store import MIGRATION_NAMES, result

from modelwatch import rollups
from modelwatch.store import LEGACY_MIGRATIONS_TABLE, MIGRATIONS, Store, migrate, open_db

FIXTURE = Path(__file__).parent / "data" / "db-v0.1.0.sqlite"


def snapshot(path: Path) -> dict:
    """Rows, rollups and schema of the data tables, read without modelwatch's code."""
    conn = sqlite3.connect(path)
    try:
        return {
            "rows": conn.execute("SELECT * FROM probe_results ORDER BY id").fetchall(),
            "rollups": rollup_table(conn),
            "schema": conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE "
                                   "'%migrations%' ORDER BY name").fetchall(),
            "legacy": conn.execute(f"SELECT name, applied_at FROM {LEGACY_MIGRATIONS_TABLE} "
                                   "ORDER BY rowid").fetchall()
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            [LEGACY_MIGRATIONS_TABLE]).fetchone() else [],
        }
    finally:
        conn.close()


def opened(path: Path) -> tuple[sqlite_utils.Database, list[str]]:
    """The database as open_db opens it, with the names of the migrations applied now."""
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
    return db, migrate(db)


def test_a_database_of_release_0_1_0_upgrades_in_place(tmp_path, caplog):
    caplog.set_level(logging.INFO, "modelwatch.store")
    path = tmp_path / "modelwatch.db"
    shutil.copy(FIXTURE, path)
    before = snapshot(path)
    assert [name for name, _ in before["legacy"]] == MIGRATION_NAMES and len(before["rows"]) == 12

    db, applied = opened(path)
    assert applied == []  # nothing runs again
    records = MIGRATIONS.applied(db)
    assert [m.name for m in records] == MIGRATION_NAMES
    # the records are the old ones, carried over with their times, not new runs
    assert [m.applied_at for m in records] == [
        str(dt.datetime.fromtimestamp(ts, dt.timezone.utc)) for _, ts in before["legacy"]]
    assert not db[LEGACY_MIGRATIONS_TABLE].exists()
    assert migrate(db) == [] and MIGRATIONS.applied(db) == records  # and a second open does nothing
    db.conn.close()
    assert [(r.getMessage(), r.fields) for r in caplog.records if "adopted" in r.getMessage()] == [
        ("adopted the migration records of an older release", {"migrations": 5})]

    after = snapshot(path)
    assert after["schema"] == before["schema"]  # tables, columns and indexes unchanged
    assert after["rows"] == before["rows"] and after["rollups"] == before["rollups"]

    store = Store(path, retention_s=10 ** 10, rollup_retention_s=10 ** 10)  # and it takes new rows
    store.submit(result("new", ts=1_790_000_000.0, ttft_s=0.2, duration_s=0.4))
    store.close()
    db = open_db(path)
    rows = [dict(r) for r in db["probe_results"].rows]
    assert len(rows) == 13 and rows[-1]["target"] == "new"
    assert rollup_table(db.conn) == backfilled(rows)  # its rollups counted, the old ones kept
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
    assert applied == ["m004_hourly_rollups", "m005_loop_lag"]
    assert [m.name for m in MIGRATIONS.applied(db)] == MIGRATION_NAMES
    assert rollup_table(db.conn) == backfilled(rows)
    db.conn.close()


def test_an_empty_legacy_record_left_by_a_kill_before_the_first_migration_runs_them_all(tmp_path):
    """0.1.0 created ``_migrations`` before its first migration: a kill between the two left it empty."""
    path = tmp_path / "modelwatch.db"
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {LEGACY_MIGRATIONS_TABLE} (name TEXT PRIMARY KEY, applied_at REAL)")
    conn.close()
    db, applied = opened(path)
    assert applied == MIGRATION_NAMES and db[rollups.TABLE].exists()
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
    db.execute("DROP TRIGGER refuse")
    assert migrate(db) == [] and [m.name for m in MIGRATIONS.applied(db)] == MIGRATION_NAMES
    db.conn.close()
