"""Hourly and daily rollups: bucket maths, incremental upserts equal to a back-fill, migration of old databases."""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3

import pytest
import sqlite_utils

from modelwatch import rollups
from modelwatch.outcomes import Outcome, ProbeResult
from modelwatch.store import MIGRATIONS, migrate, open_db, write_batch

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


def rollup_table(conn: sqlite3.Connection, grain: rollups.Grain = rollups.HOURLY) -> dict[tuple, dict]:
    """Every rollup row by key, histograms parsed, cost rounded (float sums differ in the last bits)."""
    conn.row_factory = sqlite3.Row
    out = {}
    for row in conn.execute(f"SELECT * FROM {grain.table}"):
        d = dict(row)
        for col in rollups.HISTOGRAMS.values():
            d[col] = {int(k): v for k, v in json.loads(d[col]).items()}
        d["cost_usd"] = None if d["cost_usd"] is None else round(d["cost_usd"], 12)
        out[tuple(d[k] for k in grain.key)] = d
    conn.row_factory = None
    return out


def summed_by_day(hourly: dict[tuple, dict]) -> dict[tuple, dict]:
    """What the daily table must hold: the hourly rows (as ``rollup_table`` reads them) added up per day."""
    out: dict[tuple, dict] = {}
    for (hour, *series), row in sorted(hourly.items()):
        key = (rollups.day_of(hour), *series)
        day = out.setdefault(key, {"day": key[0], **dict(zip(rollups.SERIES, series)), "cost_usd": None,
                                   **{c: 0 for c in ("probes", *rollups.OUTCOMES, *rollups.TOKEN_SUMS)},
                                   **{c: {} for c in rollups.HISTOGRAMS.values()}})
        for col in ("probes", *rollups.OUTCOMES, *rollups.TOKEN_SUMS):
            day[col] += row[col]
        for col in rollups.HISTOGRAMS.values():
            for b, n in row[col].items():
                day[col][b] = day[col].get(b, 0) + n
        if row["cost_usd"] is not None:
            day["cost_usd"] = (day["cost_usd"] or 0.0) + row["cost_usd"]
    return out


def assert_same_rollups(got: dict[tuple, dict], expected: dict[tuple, dict]) -> None:
    """Equal row for row; costs to 1e-9 (summing hours of rounded costs moves the last digits)."""
    assert got.keys() == expected.keys() and got
    for key, row in got.items():
        want = expected[key]
        assert {c: v for c, v in row.items() if c != "cost_usd"} == \
            {c: v for c, v in want.items() if c != "cost_usd"}, key
        if want["cost_usd"] is None:
            assert row["cost_usd"] is None, key
        else:
            assert row["cost_usd"] == pytest.approx(want["cost_usd"], rel=1e-9), key


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
    daily = db[rollups.DAILY_TABLE].columns_dict
    assert set(daily) == columns - {"hour"} | {"day"} and set(rollups.DAILY.columns) == set(daily)
    assert [c for c in daily if c in rollups.DAILY.key] == list(rollups.DAILY.key)
    db.conn.close()


@pytest.mark.parametrize("ts, day", [(T0, 1_789_948_800), (1_789_948_800.0, 1_789_948_800),
                                     (1_789_948_799.9, 1_789_862_400), (1_790_035_199.99, 1_789_948_800)])
def test_day_of_is_the_start_of_the_utc_day(ts, day):
    assert rollups.day_of(ts) == day == rollups.DAILY.start_of(ts)
    assert dt.datetime.fromtimestamp(day, dt.timezone.utc).time() == dt.time(0)
    assert rollups.hour_of(ts) == rollups.HOURLY.start_of(ts) and rollups.TABLE == "probe_rollups_hourly"


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


# --- daily rollups --------------------------------------------------------------------------------

def several_days(n: int = 3000, seed: int = 5) -> list[dict]:
    """Rows every 2 minutes for ~4 days from mid-afternoon: partial days at both ends."""
    return synthetic_rows(n, step=120.0, seed=seed)


def test_batches_keep_every_daily_row_the_sum_of_its_hourly_rows(db_path):
    rows = several_days()
    db = open_db(db_path)
    for i in range(0, len(rows), 41):  # batches straddle hour and day boundaries
        write_batch(db, rows[i:i + 41])
    hourly, daily = rollup_table(db.conn), rollup_table(db.conn, rollups.DAILY)
    db.conn.close()
    assert hourly == backfilled(rows)
    assert_same_rollups(daily, summed_by_day(hourly))
    assert len({k[0] for k in daily}) == 5  # T0 is 14:00 UTC: ~4.2 days of rows touch 5 days
    assert sum(r["probes"] for r in daily.values()) == len(rows)


def test_the_daily_backfill_sums_the_hourly_rollups_a_chunk_of_days_at_a_time(db_path):
    rows = several_days(seed=6)
    db = open_db(db_path)
    write_batch(db, rows)
    incremental = rollup_table(db.conn, rollups.DAILY)
    for chunk_days in (1, 2, 30):  # chunk edges must neither lose nor double a day
        with db.conn:
            db.conn.execute("BEGIN")
            db.conn.execute(f"DELETE FROM {rollups.DAILY_TABLE}")
            written = rollups.backfill_daily(db.conn, chunk_days=chunk_days)
        assert written == len(incremental) and len({k[0] for k in incremental}) == 5
        assert_same_rollups(rollup_table(db.conn, rollups.DAILY), incremental)
    db.conn.close()


def test_the_daily_backfill_needs_only_the_hourly_rollups(db_path):
    """Hourly rollups outlive raw rows: days whose raw rows were pruned are still summed."""
    rows = several_days(seed=7)
    db = open_db(db_path)
    write_batch(db, rows)
    expected = summed_by_day(rollup_table(db.conn))
    with db.conn:
        db.conn.execute("BEGIN")
        db.conn.execute("DELETE FROM probe_results")
        db.conn.execute(f"DELETE FROM {rollups.DAILY_TABLE}")
        rollups.backfill_daily(db.conn)
    assert_same_rollups(rollup_table(db.conn, rollups.DAILY), expected)
    db.conn.close()


def test_the_migration_adds_daily_rollups_to_a_database_with_hourly_ones(db_path):
    rows = several_days(seed=8)
    database_before_rollups(db_path, rows)
    conn = sqlite3.connect(db_path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    MIGRATIONS.apply(db, stop_before="m006_daily_rollups")  # as the release before daily rollups left it
    conn.execute(f"DELETE FROM probe_results WHERE ts < {T0 + 86400}")  # raw rows of the first day pruned
    assert not db[rollups.DAILY_TABLE].exists()
    hourly = rollup_table(conn)
    assert migrate(db) == ["m006_daily_rollups", "m007_voice_details", "m008_webrtc_phases"]
    assert rollup_table(conn) == hourly  # untouched
    assert_same_rollups(rollup_table(conn, rollups.DAILY), summed_by_day(hourly))
    assert_same_rollups(summed_by_day(hourly), summed_by_day(backfilled(rows)))
    conn.close()


def test_an_empty_database_migrates_to_an_empty_daily_table(db_path):
    db = open_db(db_path)
    assert db[rollups.DAILY_TABLE].count == 0 and rollups.backfill_daily(db.conn) == 0
    db.conn.close()


def test_prune_deletes_only_days_that_ended_before_the_cutoff(db_path):
    db = open_db(db_path)
    write_batch(db, synthetic_rows(100, step=3600.0))  # one probe an hour for 100 hours: days 0..4
    first_day = rollups.day_of(T0)
    before = rollup_table(db.conn, rollups.DAILY)
    with db.conn:
        deleted = rollups.prune(db.conn, first_day + 2 * 86400 + 1800, grains=(rollups.DAILY,))
    days = sorted({k[0] for k in rollup_table(db.conn, rollups.DAILY)})
    hours = rollup_table(db.conn)
    with db.conn:  # both grains by default, as the writer prunes: the hours before the cutoff go too
        both = rollups.prune(db.conn, first_day + 3 * 86400)
    left_days = sorted({k[0] for k in rollup_table(db.conn, rollups.DAILY)})
    left_hours = sorted({k[0] for k in rollup_table(db.conn)})
    db.conn.close()
    # the cutoff falls 30 min into day 2: days 0 and 1 ended before it, day 2 stays whole
    assert deleted == sum(1 for k in before if k[0] < first_day + 2 * 86400) > 0
    assert days[0] == first_day + 2 * 86400 and len(days) == 3
    assert len(hours) == 100  # hourly rows untouched by a daily-only prune
    hours_gone = sum(1 for k in hours if k[0] < first_day + 3 * 86400)
    days_gone = sum(1 for k in before if k[0] == first_day + 2 * 86400)
    assert both == hours_gone + days_gone and left_days[0] == first_day + 3 * 86400
    assert left_hours[0] == first_day + 3 * 86400
