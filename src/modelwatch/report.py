"""``modelwatch report``: availability, outcomes and latency per target and kind over a time range.

Where the numbers come from (docs/metrics.md, "Reports over long ranges"):

- A range of at most ``RAW_MAX_RANGE_S`` (7 days) holding at most
  ``RAW_MAX_ROWS`` (1,000,000) probes of the selected targets, whose raw rows
  are all still stored, is answered from ``probe_results`` alone: percentiles
  are exact (nearest rank).
- Any other range is answered from the rollups for its whole hours, plus the
  raw rows of the partial hours at either end where those still exist; where
  they were pruned, the range is widened to the whole hour (and the report
  says so). Of those whole hours, the whole UTC days come from the daily
  rollups and only the hours before the first and after the last whole day
  from the hourly ones (:attr:`Plan.periods`); a daily row is the sum of its
  hourly rows, so the numbers are the same as from hourly rollups alone, read
  from 24 times fewer rows. A database whose daily table the daemon has not
  added yet is read from the hourly rollups alone. Counts and availability
  are exact either way; percentiles from rollups are within
  ``rollups.RELATIVE_ERROR`` (4.4 %) of the exact ones, and marked ``~``.

The row limit bounds the time rather than the range: reading raw rows costs
about 3 s per million (a day of 100 targets probed every 30 s is 288,000),
while the rollups answer 90 days of 1,000 targets in seconds
(docs/benchmarks.md). So the default 24 h report of such a fleet is exact, a
7-day one is exact for a few targets and approximate for all of them.
``--source raw|rollups`` overrides.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from modelwatch import rollups
from modelwatch.config import format_duration, parse_duration
from modelwatch.figures import counts as summed_up
from modelwatch.figures import iso as _iso
from modelwatch.figures import percentile
from modelwatch.outcomes import Outcome
from modelwatch.rollups import DAY_S, HOUR_S, day_of, hour_of

PERCENTILES = (50, 95, 99)
RAW_MAX_RANGE_S = 7 * 86400.0
RAW_MAX_ROWS = 1_000_000
SOURCES = ("auto", "raw", "rollups")
FORMATS = ("table", "json", "csv")
LATENCIES = {"ttft": "ttft_s", "duration": "duration_s"}


class ReportError(Exception):
    """A report that cannot be made from this database, in one sentence."""


def parse_time(value: str, now: float) -> float:
    """Unix seconds from ``now``, a duration ago (``1h``, ``7d``) or an ISO 8601 time (UTC unless given)."""
    text = value.strip()
    if text == "now":
        return now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be now, a duration ago such as 1h or 7d, or an ISO 8601 time such as "
                         "2026-01-31T12:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def ceil_hour(ts: float) -> int:
    """Start of the first UTC hour that begins at or after ``ts``."""
    start = hour_of(ts)
    return start if start == ts else start + HOUR_S


def ceil_day(ts: float) -> int:
    """Start of the first UTC day that begins at or after ``ts``."""
    start = day_of(ts)
    return start if start == ts else start + DAY_S


def whole_days(first: int, end: int) -> tuple[int, int] | None:
    """The whole UTC days [first day, end day) inside the hours [first, end), or None when there are none."""
    start, stop = ceil_day(first), day_of(end)
    return (start, stop) if start < stop else None


def periods(hours: tuple[int, int], days: tuple[int, int] | None) -> tuple[tuple[rollups.Grain, int, int], ...]:
    """The rollup reads covering ``hours``: ``days`` from the daily table, the hours around them hourly."""
    if not days:
        return ((rollups.HOURLY, *hours),)
    parts = ((rollups.HOURLY, hours[0], days[0]), (rollups.DAILY, *days), (rollups.HOURLY, days[1], hours[1]))
    return tuple(p for p in parts if p[1] < p[2])


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which parts of the (possibly widened) range [since, until) come from raw rows and rollups."""

    since: float
    until: float
    raw: tuple[tuple[float, float], ...]
    hours: tuple[int, int] | None = None  # [first, end) hour starts read from the rollups
    days: tuple[int, int] | None = None  # [first, end) day starts of those, read from the daily rollups

    @property
    def periods(self) -> tuple[tuple[rollups.Grain, int, int], ...]:
        """The rollup reads as (grain, first, end) periods: whole days daily, the other hours hourly."""
        return periods(self.hours, self.days) if self.hours else ()

    @property
    def source(self) -> str:
        """raw, rollups or raw+rollups."""
        if not self.hours:
            return "raw"
        return "raw+rollups" if self.raw else "rollups"

    @property
    def exact(self) -> bool:
        """True when percentiles come from raw values only."""
        return not self.hours


def plan_ranges(since: float, until: float, source: str, coverage: float | None, probes: int = 0,
                daily: bool = True) -> Plan:
    """Split [since, until) between raw rows (complete from ``coverage`` on) and rollups.

    ``coverage`` is None when the database has no rollups; ``probes`` is how
    many probes of the selected targets the rollups count in the range (only
    looked at for ranges of at most ``RAW_MAX_RANGE_S``); ``daily`` says
    whether whole days may be read from the daily rollups.
    """
    plan = _plan_hours(since, until, source, coverage, probes)
    if daily and plan.hours:
        return dataclasses.replace(plan, days=whole_days(*plan.hours))
    return plan


def _plan_hours(since: float, until: float, source: str, coverage: float | None, probes: int) -> Plan:
    """The plan's raw ranges and whole hours, before any are read as whole days."""
    if source == "raw" or coverage is None:
        return Plan(since, until, ((since, until),))
    if source == "rollups":
        return Plan(hour_of(since), ceil_hour(until), (), (hour_of(since), ceil_hour(until)))
    small = until - since <= RAW_MAX_RANGE_S and probes <= RAW_MAX_ROWS
    if since >= coverage and (small or ceil_hour(since) >= until):
        return Plan(since, until, ((since, until),))
    raw: list[tuple[float, float]] = []
    first, eff_since = ceil_hour(since), since
    if since < first:  # a partial hour at the start
        if since >= coverage:
            raw.append((since, first))
        else:
            first = eff_since = hour_of(since)
    end, eff_until = hour_of(until), until
    if end < until:  # a partial hour at the end
        if end >= coverage:
            raw.append((end, until))
        else:
            end = eff_until = ceil_hour(until)
    return Plan(eff_since, eff_until, tuple(raw), (first, end) if first < end else None)


def raw_coverage_start(conn: sqlite3.Connection) -> float:
    """The time from which ``probe_results`` holds every probe the rollups counted.

    -inf when nothing was ever pruned, +inf when every raw row is gone.
    Rollups and raw rows are written together, so the rollups show what is missing.
    """
    raw_start = conn.execute("SELECT min(ts) FROM probe_results").fetchone()[0]
    first_hour = conn.execute(f"SELECT min(hour) FROM {rollups.TABLE}").fetchone()[0]
    if raw_start is None:
        return float("inf") if first_hour is not None else float("-inf")
    hour = hour_of(raw_start)
    if first_hour is not None and first_hour < hour:
        return raw_start
    rolled = conn.execute(f"SELECT total(probes) FROM {rollups.TABLE} WHERE hour = ?", [hour]).fetchone()[0]
    stored = conn.execute("SELECT count(*) FROM probe_results WHERE ts >= ? AND ts < ?",
                          [hour, hour + HOUR_S]).fetchone()[0]
    return float("-inf") if stored >= rolled else raw_start


@dataclasses.dataclass
class _Tally:
    """What the report sums up for one target and kind."""

    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    cost: float | None = None
    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # exact: every latency
    # approximate: bucket counts, keyed by the bucket index as text as in the rollups' JSON
    hists: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def count(self, outcome: str, n: int) -> None:
        if n:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    def spend(self, cost: float | None) -> None:
        if cost is not None:  # None (no priced probe) stays distinguishable from $0
            self.cost = (self.cost or 0.0) + cost

    def merge(self, name: str, *histograms: dict) -> None:
        hist = self.hists.setdefault(name, {})
        get = hist.get  # the inner loop runs for every bucket of every hour: keep it lean
        for counts in histograms:
            for index, n in counts.items():
                hist[index] = get(index, 0) + n


@dataclasses.dataclass(frozen=True)
class _Filter:
    """The --target and --kind restriction as SQL."""

    targets: tuple[str, ...] | None = None
    kind: str | None = None

    def sql(self) -> tuple[str, list]:
        clause, params = "", []
        if self.kind:
            clause += " AND kind = ?"
            params.append(self.kind)
        if self.targets is not None:
            clause += f" AND target IN ({', '.join('?' for _ in self.targets)})"
            params += self.targets
        return clause, params


@dataclasses.dataclass(frozen=True)
class Report:
    """The rows of a report and the plan that produced them."""

    plan: Plan
    rows: list[dict]
    notes: tuple[str, ...] = ()


def build_report(db_path: str | Path, since: float, until: float, *, targets: tuple[str, ...] = (),
                 kind: str | None = None, source: str = "auto") -> Report:
    """One dict per (target, kind) with counts, availability and percentiles over [since, until)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        has_rollups = has_table(conn, rollups.TABLE)
        has_daily = has_rollups and has_table(conn, rollups.DAILY_TABLE)
        if source == "rollups" and not has_rollups:
            raise ReportError("this database has no rollups yet; the daemon adds them when it next starts")
        coverage = raw_coverage_start(conn) if has_rollups else None
        names = _matching_targets(conn, targets, since, until, has_rollups, has_daily) if targets else None
        where = _Filter(names, kind)
        # Only a range short enough for raw rows needs their count: a long one is never read raw,
        # and counting it would read every hourly row the daily ones are there to spare.
        probes = (_rolled_up_probes(conn, since, until, where)
                  if has_rollups and source == "auto" and until - since <= RAW_MAX_RANGE_S else 0)
        plan = plan_ranges(since, until, source, coverage, probes, daily=has_daily)
        notes = _notes(plan, since, until, coverage, has_rollups, source)
        oldest = _oldest(conn, has_rollups, has_daily)
        if oldest is not None and since < oldest:
            notes += (f"nothing is stored before {_iso(oldest)}: raw rows are kept for "
                      "storage.retention and hourly rollups for storage.rollup_retention",)
        tallies: dict[tuple[str, str], _Tally] = {}
        if names != ():
            _tally(conn, tallies, plan, where)
    finally:
        conn.close()
    rows = [_summary(target, kind_, tally, plan) for (target, kind_), tally in sorted(tallies.items())]
    return Report(plan, rows, notes)


def _tally(conn: sqlite3.Connection, tallies: dict, plan: Plan, where: _Filter) -> None:
    for start, end in plan.raw:
        _raw_counts(conn, tallies, start, end, where)
        _raw_latencies(conn, tallies, start, end, where, plan.exact)
    for grain, first, end in plan.periods:
        _rollup_counts(conn, tallies, grain, (first, end), where)
        _rollup_buckets(conn, tallies, grain, (first, end), where)


def _oldest(conn: sqlite3.Connection, has_rollups: bool, has_daily: bool = False) -> float | None:
    """When the oldest result this database still holds, raw or rolled up, started.

    A daily row outlives the first hours of its day (it is pruned only once
    the whole day is past the retention), so it can be the oldest.
    """
    starts = [conn.execute("SELECT min(ts) FROM probe_results").fetchone()[0]]
    grains = (rollups.HOURLY, rollups.DAILY) if has_daily else (rollups.HOURLY,) if has_rollups else ()
    for grain in grains:
        starts.append(conn.execute(f"SELECT min({grain.key_column}) FROM {grain.table}").fetchone()[0])
    starts = [s for s in starts if s is not None]
    return min(starts) if starts else None


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the database has a table of this name (an old one may lack the rollups)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()
    return found is not None


def _matching_targets(conn: sqlite3.Connection, patterns: tuple[str, ...], since: float, until: float,
                      has_rollups: bool, has_daily: bool = False) -> tuple[str, ...]:
    """Target names in the range that match any glob; the rollups list them cheaply."""
    import fnmatch

    if has_rollups:  # rollups hold every series the raw rows do, and whole hours cover any widening
        hours = (hour_of(since), ceil_hour(until))
        found = [row for grain, first, end in periods(hours, whole_days(*hours) if has_daily else None)
                 for row in conn.execute(f"SELECT DISTINCT target FROM {grain.table} "
                                         f"WHERE {grain.key_column} >= ? AND {grain.key_column} < ?", [first, end])]
    else:
        found = conn.execute("SELECT DISTINCT target FROM probe_results WHERE ts >= ? AND ts < ?",
                             [since, until]).fetchall()
    return tuple(sorted(t for (t,) in found if any(fnmatch.fnmatchcase(t, p) for p in patterns)))


def _rolled_up_probes(conn: sqlite3.Connection, since: float, until: float, where: _Filter) -> int:
    """How many selected probes the rollups count in the hours around [since, until): the raw rows to read."""
    if where.targets == ():
        return 0
    clause, params = where.sql()
    return int(conn.execute(f"SELECT total(probes) FROM {rollups.TABLE} WHERE hour >= ? AND hour < ?{clause}",
                            [hour_of(since), ceil_hour(until), *params]).fetchone()[0])


def _tally_for(tallies: dict, target: str, kind: str) -> _Tally:
    tally = tallies.get((target, kind))
    if tally is None:
        tally = tallies[(target, kind)] = _Tally()
    return tally


def _raw_counts(conn: sqlite3.Connection, tallies: dict, start: float, end: float, where: _Filter) -> None:
    clause, params = where.sql()
    for target, kind, outcome, n, cost in conn.execute(
            "SELECT target, kind, outcome, count(*), sum(cost_usd) FROM probe_results "
            f"WHERE ts >= ? AND ts < ?{clause} GROUP BY target, kind, outcome", [start, end, *params]):
        tally = _tally_for(tallies, target, kind)
        tally.count(outcome, n)
        tally.spend(cost)


def _raw_latencies(conn: sqlite3.Connection, tallies: dict, start: float, end: float, where: _Filter,
                   exact: bool) -> None:
    """TTFT and duration of ok probes: every value (exact) or bucketed to merge with rollups.

    One unsorted scan sorted in Python is several times faster than SQLite's
    window functions or ORDER BY over the same rows.
    """
    clause, params = where.sql()
    for target, kind, *latencies in conn.execute(
            f"SELECT target, kind, {', '.join(LATENCIES.values())} FROM probe_results "
            f"WHERE ts >= ? AND ts < ? AND outcome = 'ok'{clause}", [start, end, *params]):
        tally = _tally_for(tallies, target, kind)
        for name, value in zip(LATENCIES, latencies):
            if value is None:
                continue
            if exact:
                tally.values.setdefault(name, []).append(value)
            else:
                tally.merge(name, {str(rollups.bucket_of(value)): 1})


def _rollup_counts(conn: sqlite3.Connection, tallies: dict, grain: rollups.Grain, span: tuple[int, int],
                   where: _Filter) -> None:
    """Add the outcome counts and cost of the ``grain`` rollups of periods starting in ``span``."""
    clause, params = where.sql()
    sums = ", ".join(f"sum({o})" for o in rollups.OUTCOMES)
    key = grain.key_column
    for target, kind, cost, *counts in conn.execute(
            f"SELECT target, kind, sum(cost_usd), {sums} FROM {grain.table} "
            f"WHERE {key} >= ? AND {key} < ?{clause} GROUP BY target, kind", [*span, *params]):
        tally = _tally_for(tallies, target, kind)
        for outcome, n in zip(rollups.OUTCOMES, counts):
            tally.count(outcome, n)
        tally.spend(cost)


def _rollup_buckets(conn: sqlite3.Connection, tallies: dict, grain: rollups.Grain, span: tuple[int, int],
                    where: _Filter) -> None:
    """Merge the histograms of the ``grain`` rollups of periods starting in ``span`` per target and kind.

    Parsed (one JSON array per series) and added up in Python: SQLite's
    json_each with GROUP BY sorts every bucket of every hour and took twice as
    long for 90 days of 100 targets.
    """
    clause, params = where.sql()
    cols = [rollups.HISTOGRAMS[raw] for raw in LATENCIES.values()]
    texts: dict[tuple[str, str, str], list[str]] = {}
    key = grain.key_column
    for target, kind, *hists in conn.execute(
            f"SELECT target, kind, {', '.join(cols)} FROM {grain.table} "
            f"WHERE {key} >= ? AND {key} < ?{clause}", [*span, *params]):
        for name, text in zip(LATENCIES, hists):
            texts.setdefault((target, kind, name), []).append(text)
    for (target, kind, name), parts in texts.items():
        _tally_for(tallies, target, kind).merge(name, *json.loads(f"[{','.join(parts)}]"))


def _summary(target: str, kind: str, tally: _Tally, plan: Plan) -> dict:
    outcomes = tally.outcomes
    figures = summed_up(outcomes)  # the definitions the status page and its API use too
    row = {"target": target, "kind": kind, "probes": figures["runs"],
           "availability": figures["availability"], "provider_availability": figures["provider_availability"]}
    for name in LATENCIES:
        row.update(_percentiles(name, tally, plan.exact))
    for outcome in Outcome:
        row[outcome.value] = outcomes.get(outcome.value, 0)
    row["cost_usd"] = None if tally.cost is None else round(tally.cost, 6)
    row.update(since=_iso(plan.since), until=_iso(plan.until), source=plan.source,
               percentiles="exact" if plan.exact else "approximate")
    return row


def _percentiles(name: str, tally: _Tally, exact: bool) -> dict[str, float | None]:
    """``{name}_p50_s`` ... from every value (exact) or from the merged histogram (rounded to 1 µs)."""
    if exact:
        values = sorted(tally.values.get(name, ()))
        return {f"{name}_p{p}_s": percentile(values, p) for p in PERCENTILES}
    hist = {int(index): n for index, n in tally.hists.get(name, {}).items()}
    found = {p: rollups.hist_percentile(hist, p) for p in PERCENTILES}
    return {f"{name}_p{p}_s": None if v is None else round(v, 6) for p, v in found.items()}


def _notes(plan: Plan, since: float, until: float, coverage: float | None, has_rollups: bool,
           source: str) -> tuple[str, ...]:
    """What the reader must know about where the numbers came from."""
    notes = []
    if not has_rollups:
        notes.append("this database has no rollups yet (the daemon adds them when it next starts)")
    if plan.raw and coverage is not None and min(s for s, _ in plan.raw) < coverage < float("inf"):
        notes.append(f"raw rows start at {_iso(coverage)}: older probes were pruned and are missing "
                     "from this report (--source auto or rollups counts them)")
    if plan.since < since or plan.until > until:
        why = ("rollups count whole hours" if source == "rollups"
               else "the raw rows of its partial hours were pruned")
        notes.append(f"range widened to whole hours ({why})")
    return tuple(notes)



def render(report: Report, fmt: str) -> str:
    """The report as table, json (one array) or csv text."""
    rows = report.rows
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return _table(report)


def _table(report: Report) -> str:
    plan = report.plan
    span = (f"{_iso(plan.since)} to {_iso(plan.until)} "
            f"({format_duration(max(1.0, round(plan.until - plan.since)))})")
    if not report.rows:
        return "\n".join([f"no probe results from {span}", *report.notes])
    approx = "" if plan.exact else "~"
    head = ["TARGET", "KIND", "PROBES", "AVAIL", "PROVIDER", "TTFT p50/p95/p99", "DURATION p50/p95/p99",
            "COST", "FAILURES"]
    lines = [head]
    for r in report.rows:
        failures = ", ".join(f"{o.value}={r[o.value]}" for o in Outcome if o is not Outcome.OK and r[o.value])
        lines.append([
            r["target"], r["kind"], str(r["probes"]), _percent(r["availability"]),
            _percent(r["provider_availability"]),
            approx + "/".join(_ms(r[f"ttft_p{p}_s"]) for p in PERCENTILES),
            approx + "/".join(_ms(r[f"duration_p{p}_s"]) for p in PERCENTILES),
            "-" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}", failures or "-",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    table = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    grains = {grain for grain, _, _ in plan.periods}
    rolled = " and ".join(g for g, grain in (("daily", rollups.DAILY), ("hourly", rollups.HOURLY))
                          if grain in grains) + " rollups"
    source = {"raw": "raw rows; percentiles exact",
              "rollups": rolled,
              "raw+rollups": f"{rolled} and raw rows"}[plan.source]
    if not plan.exact:
        source += f"; ~ percentiles approximate (within {rollups.RELATIVE_ERROR:.1%})"
    footer = [f"{span}, from {source}.",
              "PROVIDER: 1 - provider failures among the probes the provider could serve "
              "(rate limits and our configuration errors left out; docs/probes.md)."]
    return "\n".join(table + [""] + footer + list(report.notes))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"
