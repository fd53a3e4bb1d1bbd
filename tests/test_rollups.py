"""Hourly rollups: bucket maths, incremental upserts equal to a back-fill, migration of old databases."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest
import sqlite_utils

from modelwatch import rollups
from modelwatch.outcomes import Outcome, ProbeResult
from modelwatch.store import MIGRATIONS, open_db, write_batch

T0 = 1_790_000_000 // 3600 * 3600  # an hour start (Sep 2026)


def synthetic_rows(n: int, start: float = T0, step: float = 7.0, seed: int = 1) -> list[dict]:
    """Probe results of a few series across several hours, every outcome, some without cost or TTFT."""
    rng = random.Random(seed)
    outcomes = [o.value for o in Outcome]
    rows = []
    for i in range(n):
        outcome = "ok" if rng.random() < 0.8 else rng.choice(outcomes)
        ok = outcome == "ok"
        rows.append(ProbeResult(
            ts=start + i * step + rng.random(), target=f"t{i % 3}", provider="p", model=f"m{i % 3}",
            kind=("rest", "realtime")[i % 2], outcome=outcome,
            location=None if i % 5 else "eu-west",
            ttft_s=rng.lognormvariate(-1.5, 0.5) if ok and i % 11 else None,
            duration_s=rng.lognormvariate(0, 0.4) if ok else None,
            input_tokens=rng.randint(5, 20), output_tokens=rng.randint(0, 8),
            output_audio_tokens=rng.randint(0, 50) if i % 2 else None,
            cost_usd=rng.random() / 1000 if i % 4 else None).as_row())
    return rows


def rollup_table(conn: sqlite3.Connection) -> dict[tuple, dict]:
    """Every rollup row by key, histograms parsed, cost rounded (float sums differ in the last bits)."""
    conn.row_factory = sqlite3.Row
    out = {}
    for row in conn.execute(f"SELECT * FROM {rollups.TABLE}"):
        d = dict(row)
        for col in rollups.HISTOGRAMS.values():
            d[col] = {int(k): v for k, v in json.loads(d[col]).items()}
        d["cost_usd"] = None if d["cost_usd"] is None else round(d["cost_usd"], 12)
        out[tuple(d[k] for k in rollups.KEY)] = d
    conn.row_factory = None
    return out


def backfilled(rows: list[dict]) -> dict[tuple, dict]:
    """What a back-fill of these raw rows produces, in an in-memory database."""
    db = sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))
    MIGRATIONS.apply(db)  # an empty database: m004 back-fills nothing
    db["probe_results"].insert_all(rows)
    rollups.backfill(db.conn)
    return rollup_table(db.conn)


def test_every_outcome_has_a_count_column(db_path):
    db = open_db(db_path)
    columns = set(db[rollups.TABLE].columns_dict)
    assert {o.value for o in Outcome} <= columns
    assert set(rollups.COLUMNS) == columns
    db.conn.close()


@pytest.mark.parametrize("seconds", [0.00011, 0.0009, 0.0123, 0.2, 0.2049, 1.0, 3.7, 29.9, 61.0, 599.0])
def test_a_bucket_value_is_within_the_documented_error(seconds):
    index = rollups.bucket_of(seconds)
    low = rollups.BUCKET_BASE_S * 2 ** (index / rollups.BUCKETS_PER_OCTAVE)
    high = rollups.BUCKET_BASE_S * 2 ** ((index + 1) / rollups.BUCKETS_PER_OCTAVE)
    assert low <= seconds * (1 + 1e-12) and seconds < high * (1 + 1e-12)
    assert abs(rollups.bucket_value(index) / seconds - 1) <= rollups.RELATIVE_ERROR + 1e-12
    assert rollups.RELATIVE_ERROR == pytest.approx(0.0443, abs=1e-4)


def test_tiny_and_zero_latencies_land_in_the_first_bucket():
    assert rollups.bucket_of(0.0) == rollups.bucket_of(0.00005) == 0


def test_histogram_percentile_is_the_nearest_rank_bucket():
    values = [0.1] * 50 + [0.2] * 45 + [1.0] * 4 + [5.0]
    hist: dict[int, int] = {}
    for v in values:
        hist[rollups.bucket_of(v)] = hist.get(rollups.bucket_of(v), 0) + 1
    for p, exact in ((50, 0.1), (95, 0.2), (99, 1.0), (100, 5.0)):
        assert rollups.hist_percentile(hist, p) == pytest.approx(exact, rel=rollups.RELATIVE_ERROR)
    assert rollups.hist_percentile({}, 50) is None


def test_batches_add_up_to_what_a_backfill_of_the_same_rows_gives(db_path):
    rows = synthetic_rows(3000)
    db = open_db(db_path)
    for i in range(0, len(rows), 37):  # batches straddle hour boundaries
        write_batch(db, rows[i:i + 37])
    incremental = rollup_table(db.conn)
    db.conn.close()
    expected = backfilled(rows)
    assert incremental == expected
    assert sum(r["probes"] for r in incremental.values()) == 3000
    assert {k[5] for k in incremental} == {"", "eu-west"}  # a missing location is '' (NULL never matches a key)


def test_a_rollup_row_sums_its_hour_exactly(db_path):
    rows = synthetic_rows(600, step=11.0)
    db = open_db(db_path)
    write_batch(db, rows)
    table = rollup_table(db.conn)
    db.conn.close()
    key = next(iter(table))
    mine = [r for r in rows if (rollups.hour_of(r["ts"]), r["target"], r["kind"], r["provider"], r["model"],
                                r["location"] or "") == key]
    got = table[key]
    assert got["probes"] == len(mine)
    for outcome in rollups.OUTCOMES:
        assert got[outcome] == sum(r["outcome"] == outcome for r in mine)
    assert got["input_tokens"] == sum(r["input_tokens"] for r in mine)
    assert got["output_audio_tokens"] == sum(r["output_audio_tokens"] or 0 for r in mine)
    priced = [r["cost_usd"] for r in mine if r["cost_usd"] is not None]
    assert got["cost_usd"] == (pytest.approx(sum(priced)) if priced else None)
    assert sum(got["ttft_hist"].values()) == sum(r["outcome"] == "ok" and r["ttft_s"] is not None for r in mine)


def database_before_rollups(path, rows: list[dict]) -> None:
    """A database as a version before the rollups (m004) left it, holding ``rows``."""
    conn = sqlite3.connect(path, isolation_level=None)
    old = sqlite_utils.Database(conn)
    MIGRATIONS.apply(old, stop_before="m004_hourly_rollups")
    columns = [c for c in old["probe_results"].columns_dict if c != "id"]  # rows carry later columns
    with conn:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO probe_results ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' for _ in columns)})", [[r[c] for c in columns] for r in rows])
    conn.close()


def test_the_migration_backfills_a_database_from_before_rollups(db_path):
    rows = synthetic_rows(1000)
    database_before_rollups(db_path, rows)
    db = open_db(db_path)  # applies m004: creates the table and back-fills it
    assert rollup_table(db.conn) == backfilled(rows)
    db.conn.close()


def test_prune_deletes_only_hours_that_ended_before_the_cutoff(db_path):
    db = open_db(db_path)
    write_batch(db, synthetic_rows(20, step=3600.0))  # one probe an hour for 20 hours
    with db.conn:
        deleted = rollups.prune(db.conn, T0 + 5 * 3600 + 1800)  # the cutoff falls mid-hour 5
    hours = sorted({k[0] for k in rollup_table(db.conn)})
    db.conn.close()
    assert deleted == 5 and hours[0] == T0 + 5 * 3600
