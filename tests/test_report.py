"""``modelwatch report``: raw rows and rollups agree, ranges are planned right, filters and errors work."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from test_rollups import T0, synthetic_rows

from modelwatch import rollups
from modelwatch.outcomes import Outcome, ProbeResult
from modelwatch.report import (RAW_MAX_RANGE_S, RAW_MAX_ROWS, Plan, build_report, parse_time, plan_ranges,
                               raw_coverage_start)
from modelwatch.store import open_db, write_batch

H, D = 3600, 86400
INF = float("inf")
DAY1 = rollups.day_of(T0) + D  # the first UTC day start after T0 (14:00 UTC)


def fill(db_path, rows: list[dict], batch: int = 50) -> None:
    """Write rows the way the daemon's writer does: raw rows and rollups per batch."""
    db = open_db(db_path)
    for i in range(0, len(rows), batch):
        write_batch(db, rows[i:i + batch])
    db.conn.close()


def by_key(report) -> dict[tuple[str, str], dict]:
    return {(r["target"], r["kind"]): r for r in report.rows}


COUNTED = ("probes", "availability", "provider_availability", *(o.value for o in Outcome))


def assert_same_counts(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        for field in COUNTED:
            assert a[key][field] == b[key][field], (key, field)
        assert a[key]["cost_usd"] == pytest.approx(b[key]["cost_usd"], abs=2e-6)


@pytest.mark.parametrize("text, expected", [
    ("now", 1_000_000.0), ("1h", 1_000_000.0 - 3600), ("90d", 1_000_000.0 - 90 * D), ("500ms", 999_999.5),
    ("1970-01-12T13:46:40Z", 1_000_000.0), ("1970-01-12T13:46:40", 1_000_000.0),
    ("1970-01-12T14:46:40+01:00", 1_000_000.0), ("1970-01-12", 950_400.0),
])
def test_when_is_now_a_duration_ago_or_an_iso_time(text, expected):
    assert parse_time(text, now=1_000_000.0) == expected


@pytest.mark.parametrize("text", ["soon", "-1h", "0s", "2026-13-01", ""])
def test_bad_times_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="duration ago such as 1h or 7d, or an ISO 8601 time"):
        parse_time(text, now=1_000_000.0)


@pytest.mark.parametrize("since, until, source, coverage, expected", [
    # short and fully covered by raw rows: raw only, exact
    (T0 + 10, T0 + D, "auto", -INF, Plan(T0 + 10, T0 + D, ((T0 + 10, T0 + D),))),
    # longer than 7 days: whole hours from rollups, the partial hours at the ends from raw rows
    (T0 + 10, T0 + 8 * D + 20, "auto", -INF,
     Plan(T0 + 10, T0 + 8 * D + 20, ((T0 + 10, T0 + H), (T0 + 8 * D, T0 + 8 * D + 20)), (T0 + H, T0 + 8 * D),
          (DAY1, DAY1 + 7 * D))),
    # reaching before the oldest raw row: the head hour is widened, the tail still raw
    (T0 + 10, T0 + D + 20, "auto", T0 + 5 * H,
     Plan(T0, T0 + D + 20, ((T0 + D, T0 + D + 20),), (T0, T0 + D))),
    # every raw row pruned: whole hours at both ends
    (T0 + 10, T0 + D + 20, "auto", INF, Plan(T0, T0 + D + H, (), (T0, T0 + D + H))),
    # within one hour, pruned: that hour from the rollups
    (T0 + 10, T0 + 20, "auto", INF, Plan(T0, T0 + H, (), (T0, T0 + H))),
    # hour-aligned long range: rollups only, nothing widened
    (T0, T0 + 30 * D, "auto", -INF, Plan(T0, T0 + 30 * D, (), (T0, T0 + 30 * D), (DAY1, DAY1 + 29 * D))),
    # day-aligned: whole days only
    (DAY1, DAY1 + 9 * D, "auto", -INF, Plan(DAY1, DAY1 + 9 * D, (), (DAY1, DAY1 + 9 * D), (DAY1, DAY1 + 9 * D))),
    # forced sources
    (T0 + 10, T0 + 8 * D, "raw", T0 + D, Plan(T0 + 10, T0 + 8 * D, ((T0 + 10, T0 + 8 * D),))),
    (T0 + 10, T0 + 20, "rollups", -INF, Plan(T0, T0 + H, (), (T0, T0 + H))),
    # no rollup table (a database the daemon has not migrated yet): raw rows whatever the range
    (T0 + 10, T0 + 90 * D, "auto", None, Plan(T0 + 10, T0 + 90 * D, ((T0 + 10, T0 + 90 * D),))),
])
def test_plan_splits_the_range_between_raw_rows_and_rollups(since, until, source, coverage, expected):
    plan = plan_ranges(since, until, source, coverage)
    assert plan == expected
    assert plan.exact == (plan.source == "raw")


def test_whole_days_are_read_daily_and_the_hours_around_them_hourly():
    plan = plan_ranges(T0 + 10, T0 + 8 * D + 20, "rollups", -INF)
    assert [(g.table, first, end) for g, first, end in plan.periods] == [
        (rollups.TABLE, T0, DAY1), (rollups.DAILY_TABLE, DAY1, DAY1 + 7 * D),
        (rollups.TABLE, DAY1 + 7 * D, T0 + 8 * D + H)]
    hourly_only = plan_ranges(T0 + 10, T0 + 8 * D + 20, "rollups", -INF, daily=False)
    assert hourly_only.days is None and hourly_only.periods == ((rollups.HOURLY, T0, T0 + 8 * D + H),)
    assert hourly_only.source == plan.source == "rollups" and (plan.since, plan.until) == (T0, T0 + 8 * D + H)
    assert plan_ranges(T0 + 10, T0 + D + 20, "rollups", -INF).days is None  # no whole day: hours only
    assert plan_ranges(T0 + 10, T0 + 20, "raw", -INF).periods == ()


def test_raw_rows_answer_up_to_seven_days_and_a_million_probes():
    assert plan_ranges(T0 + 1, T0 + 1 + RAW_MAX_RANGE_S, "auto", -INF, RAW_MAX_ROWS).source == "raw"
    assert plan_ranges(T0 + 1, T0 + 2 + RAW_MAX_RANGE_S, "auto", -INF, 10).source == "raw+rollups"
    assert plan_ranges(T0 + 1, T0 + D, "auto", -INF, RAW_MAX_ROWS + 1).source == "raw+rollups"
    assert plan_ranges(T0 + 1, T0 + 2, "auto", -INF, RAW_MAX_ROWS + 1).source == "raw"  # within one hour
    assert plan_ranges(T0 + 1, T0 + D, "raw", -INF, RAW_MAX_ROWS + 1).source == "raw"


def test_raw_rows_and_rollups_agree_on_counts_and_on_percentiles_within_the_bucket_error(db_path):
    fill(db_path, synthetic_rows(4000, step=10.0))  # ~11 hours from T0
    raw = build_report(db_path, T0, T0 + 12 * H, source="raw")
    rolled = build_report(db_path, T0, T0 + 12 * H, source="rollups")
    assert raw.plan.source == "raw" and rolled.plan.source == "rollups"
    assert (rolled.plan.since, rolled.plan.until) == (T0, T0 + 12 * H)  # aligned: nothing widened
    a, b = by_key(raw), by_key(rolled)
    assert_same_counts(a, b)
    assert sum(r["probes"] for r in a.values()) == 4000
    compared = 0
    for key in a:
        assert a[key]["percentiles"] == "exact" and b[key]["percentiles"] == "approximate"
        for name in ("ttft", "duration"):
            for p in (50, 95, 99):
                exact, approx = a[key][f"{name}_p{p}_s"], b[key][f"{name}_p{p}_s"]
                assert abs(approx / exact - 1) <= rollups.RELATIVE_ERROR + 1e-6, (key, name, p)
                compared += 1
    assert compared == len(a) * 6


def test_a_long_range_with_partial_hours_counts_exactly_what_the_raw_rows_hold(db_path):
    fill(db_path, synthetic_rows(2700, step=300.0, seed=3))  # ~9.4 days
    since, until = T0 + 1234.5, T0 + 9 * D + 567.0
    auto = build_report(db_path, since, until)
    assert auto.plan.source == "raw+rollups" and (auto.plan.since, auto.plan.until) == (since, until)
    assert_same_counts(by_key(auto), by_key(build_report(db_path, since, until, source="raw")))
    assert all(r["percentiles"] == "approximate" and r["ttft_p50_s"] for r in auto.rows)


def without_daily_rollups(db_path, tmp_path):
    """A copy of the database as the release before daily rollups would read it: hourly rollups only."""
    copy = tmp_path / "hourly-only.db"
    src, dst = sqlite3.connect(db_path), sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.execute(f"DROP TABLE {rollups.DAILY_TABLE}")
    dst.commit()
    dst.close()
    return copy


@pytest.mark.parametrize("source", ["auto", "rollups"])
def test_reading_whole_days_from_daily_rollups_gives_exactly_what_the_hourly_ones_give(db_path, tmp_path, source):
    rows = synthetic_rows(3000, step=300.0, seed=9)  # ~10.4 days from 14:00 UTC
    fill(db_path, rows, batch=37)
    hourly_db = without_daily_rollups(db_path, tmp_path)
    since, until = T0 + 1234.5, T0 + 10 * D + 567.0  # partial hours and partial days at both ends
    daily = build_report(db_path, since, until, source=source)
    hourly = build_report(hourly_db, since, until, source=source)
    assert daily.plan.days == (DAY1, DAY1 + 9 * D) and hourly.plan.days is None
    assert {g for g, _, _ in daily.plan.periods} == {rollups.HOURLY, rollups.DAILY}
    assert daily.plan.source == hourly.plan.source == ("raw+rollups" if source == "auto" else "rollups")
    assert len(daily.rows) == 6  # 3 targets x 2 kinds
    assert sum(r["probes"] for r in daily.rows) == sum(daily.plan.since <= r["ts"] < daily.plan.until for r in rows)
    assert daily.rows == hourly.rows  # every field of every row, percentiles and cost included
    assert daily.notes == hourly.notes


def test_a_report_of_a_database_before_daily_rollups_reads_the_hourly_ones(db_path, tmp_path):
    fill(db_path, synthetic_rows(1000, step=900.0, seed=10))  # ~10.4 days
    hourly_db = without_daily_rollups(db_path, tmp_path)
    report = build_report(hourly_db, T0, T0 + 11 * D, source="rollups")
    assert report.plan.days is None and sum(r["probes"] for r in report.rows) == 1000


def test_after_pruning_the_report_counts_pruned_probes_from_the_rollups(db_path, tmp_path):
    fill(db_path, synthetic_rows(2000, step=180.0, seed=4))  # ~4 days
    before = by_key(build_report(db_path, T0 + D, T0 + 3 * D, source="raw"))
    cutoff = T0 + 2 * D + 1800.5  # the writer's prune: raw rows older than the retention go
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DELETE FROM probe_results WHERE ts < ?", [cutoff])
    first_kept = conn.execute("SELECT min(ts) FROM probe_results").fetchone()[0]
    assert raw_coverage_start(conn) == first_kept
    conn.close()
    after = build_report(db_path, T0 + D + 600, T0 + 3 * D)  # 2 days, but reaching before the raw rows
    assert after.plan.source == "rollups" and after.plan.since == T0 + D
    assert any("widened to whole hours" in note for note in after.notes)
    assert_same_counts(by_key(after), before)
    raw_only = build_report(db_path, T0 + D, T0 + 3 * D, source="raw")
    assert any("older probes were pruned" in note for note in raw_only.notes)
    assert sum(r["probes"] for r in raw_only.rows) < sum(r["probes"] for r in before.values())


def test_coverage_of_a_database_never_pruned_and_of_one_pruned_empty(db_path):
    fill(db_path, synthetic_rows(100))
    conn = sqlite3.connect(db_path)
    assert raw_coverage_start(conn) == -INF
    with conn:
        conn.execute("DELETE FROM probe_results")
    assert raw_coverage_start(conn) == INF
    conn.close()


# --- the command line ---------------------------------------------------------------------------

TARGETS = (("a-1", "rest"), ("a-1", "realtime"), ("a-2", "rest"), ("b", "rest"))


@pytest.fixture(scope="module")
def recent_db(tmp_path_factory):
    """Four series probed every 10 minutes for the last 10 days; returns (path, rows, time made)."""
    path = tmp_path_factory.mktemp("report") / "mw.db"
    now = time.time()
    rows = []
    for k in range(10 * 144):
        ts = now - k * 600 - 300  # 5 minutes away from every whole-10-minute boundary of the CLI's now
        for i, (target, kind) in enumerate(TARGETS):
            outcome = "server_error" if (k + i) % 10 == 0 else "rate_limited" if (k + i) % 25 == 0 else "ok"
            rows.append(ProbeResult(ts=ts, target=target, provider="p", model="m", kind=kind, outcome=outcome,
                                    ttft_s=0.2 + (k % 7) / 100, duration_s=0.6 + (k % 5) / 10,
                                    cost_usd=0.0001).as_row())
    rows.sort(key=lambda r: r["ts"])
    fill(path, rows, batch=500)
    return path, rows, now


def mw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelwatch", "report", *args], capture_output=True,
                          text=True, timeout=60)


def report_json(db, *args: str) -> list[dict]:
    out = mw("--db", str(db), "--format", "json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_target_globs_and_kind_select_rows(recent_db):
    db, _, _ = recent_db
    got = report_json(db, "--target", "a-*", "--kind", "rest")
    assert [(r["target"], r["kind"]) for r in got] == [("a-1", "rest"), ("a-2", "rest")]
    got = report_json(db, "--target", "b", "--target", "a-1")
    assert [(r["target"], r["kind"]) for r in got] == [("a-1", "realtime"), ("a-1", "rest"), ("b", "rest")]
    assert report_json(db, "--target", "nothing-*") == []
    assert report_json(db, "--kind", "models") == []


@pytest.mark.slow
def test_until_ends_the_range_as_a_duration_ago_or_an_iso_time(recent_db):
    db, rows, made = recent_db
    got = report_json(db, "--since", "2d", "--until", "1d", "--target", "b")
    expected = [r for r in rows if r["target"] == "b" and made - 2 * D <= r["ts"] < made - D]
    assert len(got) == 1 and got[0]["probes"] == len(expected) == 144
    assert got[0]["server_error"] == sum(r["outcome"] == "server_error" for r in expected)
    assert got[0]["source"] == "raw" and got[0]["percentiles"] == "exact"
    start = datetime.fromtimestamp(made - 3 * D, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    end = datetime.fromtimestamp(made - 2 * D, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    iso = report_json(db, "--since", start, "--until", end, "--target", "b")
    assert iso[0]["probes"] == sum(1 for r in rows if r["target"] == "b" and
                                   math.floor(made - 3 * D) <= r["ts"] < math.floor(made - 2 * D))


@pytest.mark.slow
def test_a_long_range_reads_the_rollups_and_says_percentiles_are_approximate(recent_db):
    db, rows, _ = recent_db
    table = mw("--db", str(db), "--since", "30d")
    assert table.returncode == 0, table.stderr
    assert "from daily and hourly rollups and raw rows; ~ percentiles approximate (within 4.4%)" in table.stdout
    line = next(line for line in table.stdout.splitlines() if line.startswith("b "))
    expected = sum(1 for r in rows if r["target"] == "b")
    assert line.split()[2] == str(expected) and "~" in line and "server_error=" in line
    data = {(r["target"], r["kind"]): r for r in report_json(db, "--since", "30d")}
    b = data[("b", "rest")]
    assert b["source"] == "raw+rollups" and b["probes"] == expected
    failures = sum(1 for r in rows if r["target"] == "b" and r["outcome"] == "server_error")
    limited = sum(1 for r in rows if r["target"] == "b" and r["outcome"] == "rate_limited")
    assert limited and failures
    # rate limits are neither the provider's failures nor probes it had a chance to serve:
    # the same ratio as the alert rules' (prometheus/rules/modelwatch.rules.yml)
    assert b["provider_availability"] == round(1 - failures / (expected - limited), 6)
    assert b["availability"] < b["provider_availability"]


def test_a_short_range_table_says_percentiles_are_exact(recent_db):
    db, _, _ = recent_db
    out = mw("--db", str(db), "--since", "6h")
    assert out.returncode == 0 and "from raw rows; percentiles exact" in out.stdout and "~" not in out.stdout


@pytest.mark.parametrize("args, message", [
    (("--since", "yesterday"), "--since must be now, a duration ago"),
    (("--until", "2026-02-30"), "--until must be now, a duration ago"),
    (("--since", "1h", "--until", "2h"), "--since (1h) must be earlier than --until (2h)"),
    (("--kind", "grpc"), "--kind must be one of rest, realtime, voice-chain, conversation, models"),
    (("--format", "xml"), "--format must be one of table, json, csv"),
    (("--source", "cache"), "--source must be one of auto, raw, rollups"),
])
@pytest.mark.slow
def test_bad_options_are_one_line_and_exit_2(recent_db, args, message):
    db, _, _ = recent_db
    out = mw("--db", str(db), *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"modelwatch: {message}")


@pytest.mark.slow
def test_a_database_without_rollups_is_reported_from_raw_rows(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE probe_results (ts REAL, target TEXT, kind TEXT, outcome TEXT, ttft_s REAL, "
                 "duration_s REAL, cost_usd REAL)")
    conn.execute("INSERT INTO probe_results VALUES (?, 't', 'rest', 'ok', 0.2, 0.5, NULL)", [time.time() - 60])
    conn.commit()
    conn.close()
    out = mw("--db", str(db), "--since", "30d", "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["probes"] == 1
    assert "no rollups yet" in out.stderr
    refused = mw("--db", str(db), "--source", "rollups")
    assert refused.returncode == 2 and "no rollups yet" in refused.stderr
    conn = sqlite3.connect(db)  # the report only reads: it migrates nothing
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", [rollups.TABLE]).fetchone()[0] == 0
    conn.close()


@pytest.mark.slow
def test_a_range_older_than_anything_stored_says_so(recent_db):
    db, rows, _ = recent_db
    oldest = min(r["ts"] for r in rows)
    table = mw("--db", str(db), "--since", "30d")
    assert table.returncode == 0, table.stderr
    assert "nothing is stored before" in table.stdout
    stated = table.stdout.split("nothing is stored before ")[1].split(":")[0:3]
    assert datetime.fromisoformat(":".join(stated).replace("Z", "+00:00")).timestamp() <= oldest
    assert "nothing is stored before" not in mw("--db", str(db), "--since", "2d").stdout


@pytest.mark.slow
def test_provider_availability_leaves_out_probes_the_provider_never_got_to_serve(tmp_path):
    db = tmp_path / "mw.db"
    now = time.time()
    outcomes = {"keyless": ["auth_error"] * 4,
                "mixed": ["ok", "ok", "server_error", "rate_limited", "quota_exhausted", "content_blocked"]}
    fill(db, [ProbeResult(ts=now - 60 * i, target=t, provider="p", model="m", kind="rest", outcome=o).as_row()
              for t, outs in outcomes.items() for i, o in enumerate(outs)])
    got = {r["target"]: r for r in report_json(db, "--since", "1h")}
    assert got["keyless"]["availability"] == 0 and got["keyless"]["provider_availability"] is None
    # ok, ok, server_error, content_blocked were the provider's to serve; one of the four failed
    assert got["mixed"]["provider_availability"] == 0.75
    table = mw("--db", str(db), "--since", "1h").stdout
    assert next(line for line in table.splitlines() if line.startswith("keyless")).split()[4] == "-"
