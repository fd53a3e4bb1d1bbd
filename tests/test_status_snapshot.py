"""The status snapshot read from real SQLite files: windows, daily bars, state, incidents."""

from __future__ import annotations

import pytest

from modelwatch import figures
from modelwatch.outcomes import ProbeResult
from modelwatch.report import build_report
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder
from modelwatch.store import open_db, write_batch

DAY = 86400
NOW = 1_765_000_000.0 - 1_765_000_000.0 % DAY + 15 * 3600 + 1234.5  # 15:20:34.5 UTC on some day


def result(ts: float, outcome: str = "ok", target: str = "gpt", kind: str = "rest", code: str | None = None,
           ttft: float = 0.2) -> dict:
    ok = outcome == "ok"
    return ProbeResult(ts=ts, target=target, provider="openai", model="m", kind=kind, outcome=outcome,
                       error_code=None if ok else code, ttft_s=ttft if ok else None,
                       duration_s=ttft * 2 if ok else 1.0).as_row()


def write(path, rows):
    db = open_db(path)
    write_batch(db, rows)
    db.conn.close()


def runs(start: float, outcomes: list[str], every: float = 60.0, **kw) -> list[dict]:
    return [result(start + i * every, o, **kw) for i, o in enumerate(outcomes)]


def builder(path, **settings) -> SnapshotBuilder:
    return SnapshotBuilder(path, Settings(**settings), [Series("gpt", "rest", "openai", "m")])


def probe_of(snapshot: dict, target: str = "gpt", kind: str = "rest") -> dict:
    t = next(t for t in snapshot["targets"] if t["target"] == target)
    return next(p for p in t["probes"] if p["kind"] == kind)


def test_a_streak_of_failures_is_one_incident_with_its_start_end_and_provider_code(db_path):
    outcomes = ["ok"] * 5 + ["server_error"] * 4 + ["ok"] * 20
    write(db_path, runs(NOW - 3600, outcomes, code="internal_error"))
    snap = builder(db_path).build(NOW)
    [incident] = snap["incidents"]
    assert incident["start"] == figures.iso(NOW - 3600 + 5 * 60)
    assert incident["end"] == figures.iso(NOW - 3600 + 9 * 60)
    assert incident["duration_s"] == 240.0 and not incident["ongoing"]
    assert incident["failures"] == 4
    assert (incident["dominant_outcome"], incident["error_code"], incident["attribution"]) == \
        ("server_error", "internal_error", "provider")
    assert probe_of(snap)["incidents"] == [incident]


def test_failures_at_the_end_are_an_ongoing_incident_and_the_state_says_so(db_path):
    write(db_path, runs(NOW - 1200, ["ok"] * 10 + ["overloaded"] * 6, code="overloaded_error"))
    snap = builder(db_path).build(NOW)
    [incident] = snap["incidents"]
    assert incident["ongoing"] and incident["end"] is None
    assert incident["duration_s"] == pytest.approx(NOW - (NOW - 1200 + 600), abs=0.01)
    probe = probe_of(snap)
    # the last 10 runs: 4 ok, 6 failed -> provider availability 0.4 < major_outage 0.5
    assert probe["state"] == "major_outage"
    assert snap["state"] == "major_outage"


def test_fewer_than_the_streak_spread_out_still_opens_an_incident_when_the_window_falls_below(db_path):
    pattern = (["ok"] * 3 + ["server_error"]) * 10  # 75 % available, never 3 failures in a row
    write(db_path, runs(NOW - 7200, pattern + ["ok"] * 12, code="e"))
    snap = builder(db_path).build(NOW)
    [incident] = snap["incidents"]
    assert not incident["ongoing"]  # twelve clean runs bring the window back over 99 %
    assert incident["failures"] >= 8
    # and it stayed one incident while the model kept failing one run in four
    assert incident["end"] == figures.iso(NOW - 7200 + 40 * 60)


def test_our_side_failures_are_shown_apart_and_do_not_make_a_provider_outage(db_path):
    write(db_path, runs(NOW - 600, ["ok"] * 7 + ["auth_error"] * 3, code="invalid_api_key"))
    snap = builder(db_path).build(NOW)
    probe = probe_of(snap)
    assert probe["state"] == "operational"
    assert probe["our_side"] == {"errors": 3, "outcomes": {"auth_error": 3}}
    assert probe["windows"]["24h"]["our_errors"] == 3
    assert probe["windows"]["24h"]["provider_errors"] == 0
    [incident] = snap["incidents"]
    assert incident["attribution"] == "ours" and incident["ongoing"]


def test_a_probe_failing_only_on_our_side_shows_the_outage_its_users_see(db_path):
    write(db_path, runs(NOW - 600, ["model_unavailable"] * 8, code="model_not_found"))
    probe = probe_of(builder(db_path).build(NOW))
    assert probe["windows"]["24h"]["provider_availability"] is None  # nothing judged the provider
    assert probe["state"] == "major_outage" and probe["daily"][-1]["state"] == "major_outage"
    assert probe["our_side"]["errors"] == 8


def test_a_probe_without_runs_has_no_data_and_no_figures(db_path):
    write(db_path, runs(NOW - 600, ["ok"] * 3))
    b = SnapshotBuilder(db_path, Settings(min_runs=5), [Series("gpt", "rest", "openai", "m"),
                                                        Series("gpt", "realtime", "openai", "m")])
    snap = b.build(NOW)
    silent = probe_of(snap, kind="realtime")
    assert silent["state"] == "no_data" and silent["last_run"] is None
    assert silent["windows"]["24h"]["runs"] == 0 and silent["windows"]["24h"]["availability"] is None
    few = probe_of(snap)
    assert few["windows"]["24h"]["runs"] == 3 and not few["windows"]["24h"]["enough_data"]
    assert snap["targets"][0]["state"] == "operational"  # a probe without data does not hide the others


def test_ninety_daily_bars_coloured_by_how_much_failed(db_path):
    today = NOW - NOW % DAY
    rows = runs(today - 2 * DAY + 3600, ["ok"] * 19 + ["server_error"])           # 95 %: degraded
    rows += runs(today - DAY + 3600, ["ok"] * 6 + ["timeout"] * 4)                # 60 %: partial
    rows += runs(today + 60, ["ok"] * 10)                                          # operational
    write(db_path, rows)
    daily = probe_of(builder(db_path).build(NOW))["daily"]
    assert len(daily) == 90
    assert daily[-1]["date"] == figures.iso(today)[:10]
    assert daily[0]["date"] == figures.iso(today - 89 * DAY)[:10]
    assert [d["state"] for d in daily[-4:]] == ["no_data", "degraded", "partial_outage", "operational"]
    assert daily[-2]["runs"] == 10 and daily[-2]["errors"] == 4 and daily[-2]["availability"] == 0.6


def test_windows_equal_the_report_over_the_same_range(db_path):
    """One definition: the page's figures are `modelwatch report --source rollups` over its window."""
    today = NOW - NOW % DAY
    rows = []
    for day in range(0, 40, 3):
        start = today - day * DAY + 1800
        rows += runs(start, (["ok"] * 9 + ["rate_limited", "server_error"]) * 3, every=97.0,
                     ttft=0.1 + day / 100)
        rows += runs(start + 5, ["ok", "auth_error", "ok"], every=300.0, kind="realtime", ttft=0.3)
    write(db_path, rows)
    b = SnapshotBuilder(db_path, Settings(), [Series("gpt", "rest", "openai", "m"),
                                              Series("gpt", "realtime", "openai", "m")])
    snap = b.build(NOW)
    for kind in ("rest", "realtime"):
        probe = probe_of(snap, kind=kind)
        for name, w in probe["windows"].items():
            since = _ts(w["since"])
            [row] = build_report(db_path, since, NOW, kind=kind, source="rollups").rows
            assert w["runs"] == row["probes"], name
            assert w["availability"] == row["availability"], name
            assert w["provider_availability"] == row["provider_availability"], name
            for p in (50, 95, 99):
                assert w[f"ttft_p{p}_s"] == row[f"ttft_p{p}_s"], (name, p)
                assert w[f"duration_p{p}_s"] == row[f"duration_p{p}_s"], (name, p)
            assert all(row[o] == n for o, n in w["outcomes"].items()), name
            assert sum(w["outcomes"].values()) == row["probes"], name
    assert probe_of(snap)["windows"]["90d"]["runs"] > probe_of(snap)["windows"]["30d"]["runs"] \
        > probe_of(snap)["windows"]["7d"]["runs"] > probe_of(snap)["windows"]["24h"]["runs"] > 0


def test_a_second_build_sees_new_rows_and_reuses_the_days_that_are_over(db_path):
    today = NOW - NOW % DAY
    write(db_path, runs(today - 10 * DAY, ["ok"] * 5) + runs(today + 60, ["ok"] * 5))
    b = builder(db_path)
    first = b.build(NOW)
    write(db_path, runs(NOW - 100, ["server_error"] * 3, code="boom"))
    second = b.build(NOW + 1)
    p1, p2 = probe_of(first), probe_of(second)
    assert p2["windows"]["90d"]["runs"] == p1["windows"]["90d"]["runs"] + 3
    assert p2["windows"]["24h"]["errors"] == 3
    assert p2["daily"][-1]["runs"] == 8 and p2["daily"][-11]["runs"] == 5
    assert len(second["incidents"]) == 1 and second["incidents"][0]["ongoing"]
    # a fresh builder reading everything at once agrees with the incremental one
    fresh = builder(db_path).build(NOW + 1)
    assert fresh == second
    # the next day: the bars move on by one
    next_day = b.build(NOW + DAY)
    assert probe_of(next_day)["daily"][-2]["runs"] == 8


def test_without_a_config_every_probe_in_the_database_is_shown(db_path):
    write(db_path, runs(NOW - 600, ["ok"] * 3) + runs(NOW - 500, ["ok"], target="claude", kind="realtime"))
    snap = SnapshotBuilder(db_path, Settings()).build(NOW)
    assert [(t["target"], [p["kind"] for p in t["probes"]]) for t in snap["targets"]] == \
        [("claude", ["realtime"]), ("gpt", ["rest"])]
    assert snap["targets"][0]["provider"] == "openai" and snap["targets"][0]["model"] == "m"


def _ts(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
