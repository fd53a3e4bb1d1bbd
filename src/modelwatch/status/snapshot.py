"""Read a database into a status snapshot (the dict described in ``modelwatch.status``).

Where each figure comes from, so that it costs the same at 1,000 targets as at 10:

- Windows and daily bars come from the rollups: ``24h`` is the current UTC hour and the 23
  before it (hourly rollups), ``7d``/``30d``/``90d`` the current UTC day and the 6/29/89
  before it (daily rollups). Counts are exact; percentiles come from the rollups' log buckets
  (within 4.4 %, docs/metrics.md), so ``modelwatch report --since W.since --source rollups``
  prints the same numbers. Days that are over are read and merged once per UTC day; each
  refresh reads only yesterday and today.
- The last runs (strip, last run, current state) are the newest rows of each probe in
  ``probe_results`` (an index range per probe).
- Incidents come from the raw rows, scanned once and then incrementally by row id
  (:mod:`modelwatch.status.incidents`).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from modelwatch import figures, rollups
from modelwatch.figures import iso
from modelwatch.status.incidents import IncidentTracker, Rules

WINDOWS = {"24h": ("hour", 24), "7d": ("day", 7), "30d": ("day", 30), "90d": ("day", 90)}
DAYS = 90
RECENT_RUNS = 30
HOUR_S, DAY_S = 3600, 86400
LATENCIES = {"ttft": "ttft_hist", "duration": "duration_hist"}
PERCENTILES = (50, 95, 99)


@dataclasses.dataclass(frozen=True)
class Series:
    """One probe on the page: a target's kind, with what the page says about the target."""

    target: str
    kind: str
    provider: str
    model: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the page is told by the ``status:`` config section."""

    title: str = "Model availability"
    min_runs: int = 5
    state_runs: int = 10
    incident_failures: int = 3
    thresholds: tuple[tuple[str, float], ...] = tuple(figures.DEFAULT_THRESHOLDS.items())

    @property
    def threshold_map(self) -> dict[str, float]:
        return dict(self.thresholds)


class Tally:
    """Outcome counts and latency histograms of one probe over some rollup rows."""

    __slots__ = ("outcomes", "hists")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.hists: dict[str, dict[int, int]] = {name: {} for name in LATENCIES}

    def add_row(self, outcomes: Iterable[tuple[str, int]], hists: Sequence[dict[int, int]]) -> None:
        for outcome, n in outcomes:
            if n:
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        for name, hist in zip(LATENCIES, hists):
            mine = self.hists[name]
            for index, n in hist.items():
                mine[index] = mine.get(index, 0) + n

    def add(self, other: Tally) -> None:
        self.add_row(other.outcomes.items(), [other.hists[name] for name in LATENCIES])

    def window(self, since: float, until: float, min_runs: int) -> dict:
        w = {"since": iso(since), "until": iso(until), **figures.counts(self.outcomes)}
        for name in LATENCIES:
            for p in PERCENTILES:
                value = rollups.hist_percentile(self.hists[name], p)
                w[f"{name}_p{p}_s"] = None if value is None else round(value, 6)
        w["outcomes"] = dict(sorted(self.outcomes.items()))
        w["enough_data"] = w["runs"] >= min_runs
        return w


def rollup_rows(conn: sqlite3.Connection, table: str, key: str, start: int, end: int,
                probe: tuple[str, str] | None = None) -> Iterable[tuple[str, str, int, Tally]]:
    """(target, kind, period start, tally) for each rollup row with start <= key < end (of one probe)."""
    names = list(rollups.OUTCOMES)
    cols = ", ".join(names)
    sql = (f"SELECT target, kind, {key}, {cols}, {', '.join(LATENCIES.values())} FROM {table} "
           f"WHERE {key} >= ? AND {key} < ?")
    params: list = [start, end]
    if probe is not None:
        sql += " AND target = ? AND kind = ?"
        params += probe
    for target, kind, at, *rest in conn.execute(sql, params):
        tally = Tally()
        hists = [{int(i): n for i, n in json.loads(text).items()} for text in rest[len(names):]]
        tally.add_row(zip(names, rest[:len(names)]), hists)
        yield target, kind, at, tally


def _merge_windows(per_day: dict[int, Tally], today: int) -> dict[str, Tally]:
    """The kept days of each day window merged: days from its first up to (not incl.) yesterday."""
    merged = {}
    for name, (grain, n) in WINDOWS.items():
        if grain != "day":
            continue
        since, tally = today - (n - 1) * DAY_S, Tally()
        for at, day in per_day.items():
            if at >= since:
                tally.add(day)
        merged[name] = tally
    return merged


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        [name]).fetchone() is not None


class _Days:
    """Per-day tallies of every probe over the last 90 days; days that are over are kept.

    So are their merges per window: a refresh then adds only yesterday and today to
    each window instead of merging up to 90 histograms per probe.
    """

    def __init__(self) -> None:
        self._settled_before: int | None = None  # day start: every day before it is kept
        self.settled: dict[tuple[str, str], dict[int, Tally]] = {}
        self.settled_windows: dict[tuple[str, str], dict[str, Tally]] = {}
        self.fresh: dict[tuple[str, str], dict[int, Tally]] = {}

    def read(self, conn: sqlite3.Connection, today: int) -> None:
        """Read the days from ``today - 89 d`` to today (only yesterday and today when kept)."""
        table, key = self._source(conn)
        first = today - (DAYS - 1) * DAY_S
        # Yesterday stays open: a probe started before midnight is written when it ends.
        settled_before = today - DAY_S
        if self._settled_before != settled_before:
            self.settled = {}
            for target, kind, at, tally in self._read(conn, table, key, first, settled_before):
                self.settled.setdefault((target, kind), {})[at] = tally
            self.settled_windows = {series: _merge_windows(per_day, today)
                                    for series, per_day in self.settled.items()}
            self._settled_before = settled_before
        self.fresh = {}
        for target, kind, at, tally in self._read(conn, table, key, settled_before, today + DAY_S):
            self.fresh.setdefault((target, kind), {})[at] = tally

    def probes(self) -> set[tuple[str, str]]:
        return set(self.settled) | set(self.fresh)

    def per_day(self, series: tuple[str, str]) -> dict[int, Tally]:
        return {**self.settled.get(series, {}), **self.fresh.get(series, {})}

    def window(self, series: tuple[str, str], name: str, since: int) -> Tally:
        """The tally of one day window: its kept days merged once, plus yesterday and today."""
        tally = Tally()
        settled = self.settled_windows.get(series, {}).get(name)
        if settled is not None:
            tally.add(settled)
        for at, day in self.fresh.get(series, {}).items():
            if at >= since:
                tally.add(day)
        return tally

    @staticmethod
    def _source(conn: sqlite3.Connection) -> tuple[str, str]:
        if _has_table(conn, rollups.DAILY.table):
            return rollups.DAILY.table, rollups.DAILY.key_column
        return rollups.HOURLY.table, rollups.HOURLY.key_column  # a database not yet upgraded

    @staticmethod
    def _read(conn: sqlite3.Connection, table: str, key: str, start: int, end: int,
              ) -> Iterable[tuple[str, str, int, Tally]]:
        if key == "day":
            yield from rollup_rows(conn, table, key, start, end)
            return
        merged: dict[tuple[str, str, int], Tally] = {}  # a database without daily rollups
        for target, kind, at, tally in rollup_rows(conn, table, key, start, end):
            day = at // DAY_S * DAY_S
            merged.setdefault((target, kind, day), Tally()).add(tally)
        for (target, kind, day), tally in merged.items():
            yield target, kind, day, tally


class SnapshotBuilder:
    """Builds snapshots of one database, keeping what does not change between refreshes."""

    def __init__(self, db_path: str | Path, settings: Settings,
                 series: Sequence[Series] | None = None) -> None:
        self.db_path = str(db_path)
        self.settings = settings
        self.series = None if series is None else tuple(series)
        self._days = _Days()
        self._incidents = IncidentTracker(self._rules())

    def _rules(self) -> Rules:
        return _rules(self.settings)

    def configure(self, settings: Settings, series: Sequence[Series] | None) -> None:
        """New settings or probes (a reload); incidents are re-derived when their rules change."""
        if self._rules() != _rules(settings):
            self.settings = settings
            self._incidents = IncidentTracker(self._rules())
        self.settings = settings
        self.series = None if series is None else tuple(series)

    def build(self, now: float | None = None) -> dict:
        """A snapshot as of ``now`` (default: the wall clock)."""
        now = time.time() if now is None else now
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            today = int(now) // DAY_S * DAY_S
            self._days.read(conn, today)
            days = self._days
            hour = int(now) // HOUR_S * HOUR_S
            hours = self._hours(conn, hour)
            series = self.series if self.series is not None else _series_in(conn, days, hours)
            self._incidents.scan(conn, now - DAYS * DAY_S)
            targets = [self._target(conn, group, days, hours, now, today, hour)
                       for group in _by_target(series)]
        finally:
            conn.close()
        incidents = self._incidents.incidents(now)
        probes = [p for t in targets for p in t["probes"]]
        return {"as_of": iso(now), "title": self.settings.title,
                "state": figures.worst([p["state"] for p in probes]),
                "windows": list(WINDOWS), "min_runs": self.settings.min_runs,
                "thresholds": self.settings.threshold_map, "targets": targets,
                "incidents": incidents}

    def _hours(self, conn: sqlite3.Connection, hour: int) -> dict[tuple[str, str], Tally]:
        tallies: dict[tuple[str, str], Tally] = {}
        for target, kind, _at, tally in rollup_rows(conn, rollups.TABLE, "hour", hour - 23 * HOUR_S,
                                                      hour + HOUR_S):
            tallies.setdefault((target, kind), Tally()).add(tally)
        return tallies

    def _target(self, conn: sqlite3.Connection, group: list[Series], days: dict, hours: dict,
                now: float, today: int, hour: int) -> dict:
        first = group[0]
        probes = [self._probe(conn, s, days, hours.get((s.target, s.kind)), now, today, hour)
                  for s in group]
        return {"target": first.target, "provider": first.provider, "model": first.model,
                "state": figures.worst([p["state"] for p in probes]), "probes": probes}

    def _probe(self, conn: sqlite3.Connection, s: Series, days: _Days,
               last_24h: Tally | None, now: float, today: int, hour: int) -> dict:
        settings = self.settings
        windows = {"24h": (last_24h or Tally()).window(hour - 23 * HOUR_S, now, settings.min_runs)}
        for name, (_grain, n) in WINDOWS.items():
            if name == "24h":
                continue
            since = today - (n - 1) * DAY_S
            windows[name] = days.window((s.target, s.kind), name, since).window(since, now, settings.min_runs)
        recent = _recent(conn, s, max(RECENT_RUNS, settings.state_runs), now - DAY_S)
        deciding = recent[-settings.state_runs:]
        decided = figures.counts(_outcome_counts(deciding))
        ours = {o: n for o, n in _outcome_counts(deciding).items() if figures.attribution(o) == "ours"}
        return {"kind": s.kind,
                "state": figures.state_for(decided, settings.threshold_map),
                "last_run": recent[-1] if recent else None,
                "recent": recent[-RECENT_RUNS:],
                "our_side": {"errors": decided["our_errors"], "outcomes": ours},
                "windows": windows,
                "daily": _daily(days.per_day((s.target, s.kind)), today, settings.threshold_map),
                "incidents": self._incidents.incidents(now, s.target, s.kind)}


def _rules(settings: Settings) -> Rules:
    thresholds = settings.threshold_map
    return Rules(failures=settings.incident_failures, window=settings.state_runs,
                 threshold=thresholds["partial_outage"], recovered=thresholds["degraded"])


def _daily(per_day: dict[int, Tally], today: int, thresholds: dict[str, float]) -> list[dict]:
    bars = []
    for i in range(DAYS - 1, -1, -1):
        at = today - i * DAY_S
        tally = per_day.get(at)
        c = figures.counts(tally.outcomes if tally else {})
        bars.append({"date": iso(at)[:10], "runs": c["runs"], "errors": c["errors"],
                     "availability": c["availability"],
                     "provider_availability": c["provider_availability"],
                     "state": figures.state_for(c, thresholds)})
    return bars


def _recent(conn: sqlite3.Connection, s: Series, limit: int, since: float) -> list[dict]:
    """The newest ``limit`` runs of one probe since ``since``, oldest first."""
    rows = conn.execute(
        "SELECT ts, outcome, error_code, ttft_s, duration_s FROM probe_results "
        "WHERE target = ? AND kind = ? AND ts >= ? ORDER BY ts DESC LIMIT ?",
        [s.target, s.kind, since, limit]).fetchall()
    return [{"ts": iso(ts), "outcome": outcome, "error_code": code, "ttft_s": _round(ttft),
             "duration_s": _round(duration)}
            for ts, outcome, code, ttft, duration in reversed(rows)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _outcome_counts(runs: list[dict]) -> dict[str, int]:
    found: dict[str, int] = {}
    for run in runs:
        found[run["outcome"]] = found.get(run["outcome"], 0) + 1
    return found


def _by_target(series: Sequence[Series]) -> list[list[Series]]:
    """Series grouped by target, targets and kinds in the order given."""
    groups: dict[str, list[Series]] = {}
    for s in series:
        groups.setdefault(s.target, []).append(s)
    return list(groups.values())


def _series_in(conn: sqlite3.Connection, days: _Days, hours: dict) -> list[Series]:
    """Without a config: every probe the last 90 days hold, with its latest provider and model."""
    found = sorted(days.probes() | set(hours))
    series = []
    for target, kind in found:
        row = conn.execute(
            f"SELECT provider, model FROM {rollups.TABLE} WHERE target = ? AND kind = ? "
            "ORDER BY hour DESC LIMIT 1", [target, kind]).fetchone() or ("", "")
        series.append(Series(target, kind, row[0], row[1]))
    return series
