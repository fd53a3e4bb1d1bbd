"""Read a database into a status snapshot (the dict described in ``modelwatch.status``).

Where each figure comes from, so that a refresh costs about the same at 1,000 targets as at 10:

- Windows and daily bars come from the rollups: ``24h`` is the current UTC hour and the 23
  before it (hourly rollups), ``7d``/``30d``/``90d`` the current UTC day and the 6/29/89
  before it (daily rollups). Counts are exact; percentiles come from the rollups' log buckets
  (within 4.4 %, docs/metrics.md), so ``modelwatch report --since W.since --source rollups``
  prints the same numbers. Periods that are over (hours before the last one, days before
  yesterday) are read and merged into each window once, when the hour or day turns; a refresh
  reads only the last two hours and the last two days.
- The last runs (strip, last run, current state) and the incidents come from the raw rows,
  read once and then only the rows written since the last refresh
  (:mod:`modelwatch.status.incidents`).
- Voice figures (a voice chain's stages, a conversation's turn bands, barge-in times, and which
  probes time a first audio) come from the raw rows and their stage and turn rows, read the
  same way: once, then only what was written since (:mod:`modelwatch.status.voice`).
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
from modelwatch.report import has_table
from modelwatch.status import voice
from modelwatch.status.incidents import IncidentTracker, Rules

WINDOWS = {"24h": ("hour", 24), "7d": ("day", 7), "30d": ("day", 30), "90d": ("day", 90)}
DAYS = 90
RECENT_RUNS = 30
HOUR_S, DAY_S = 3600, 86400
LATENCIES = {"ttft": "ttft_hist", "duration": "duration_hist"}
PERCENTILES = (50, 95, 99)
_OUTCOMES = tuple(rollups.OUTCOMES)


@dataclasses.dataclass(frozen=True)
class Series:
    """One probe on the page: a target's kind, with what the page says about the target."""

    target: str
    kind: str
    provider: str
    model: str
    # What the probe's ttft_s times: "audio" (a first audio) or "text" (a first token), from the
    # config (probes.probe_info); None when the page has no config: then the database decides.
    modality: str | None = None
    # How a realtime probe reaches the model ("websocket", "webrtc"; "http" for REST), from the
    # config; None without one.
    transport: str | None = None


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
    """Outcome counts and latency histograms (bucket index as text, as stored) over rollup rows."""

    __slots__ = ("outcomes", "hists")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.hists: dict[str, dict[str, int]] = {name: {} for name in LATENCIES}

    def add_counts(self, outcomes: dict[str, int]) -> None:
        mine = self.outcomes
        for outcome, n in outcomes.items():
            mine[outcome] = mine.get(outcome, 0) + n

    def add_hists(self, hists: Sequence[dict[str, int]]) -> None:
        for name, hist in zip(LATENCIES, hists):
            mine = self.hists[name]
            get = mine.get
            for index, n in hist.items():
                mine[index] = get(index, 0) + n

    def add(self, other: Tally) -> None:
        self.add_counts(other.outcomes)
        self.add_hists([other.hists[name] for name in LATENCIES])

    def window(self, since: float, until: float, min_runs: int) -> dict:
        """The window ``W`` of DESIGN.md over these counts."""
        w = {"since": iso(since), "until": iso(until), **figures.counts(self.outcomes)}
        for name in LATENCIES:
            hist = {int(index): n for index, n in self.hists[name].items()}
            for p in PERCENTILES:
                value = rollups.hist_percentile(hist, p)
                w[f"{name}_p{p}_s"] = None if value is None else round(value, 6)
        w["outcomes"] = dict(sorted(self.outcomes.items()))
        w["enough_data"] = w["runs"] >= min_runs
        return w


def _rows(conn: sqlite3.Connection, table: str, key: str, start: int, end: int,
          probe: tuple[str, str] | None = None) -> Iterable[tuple]:
    """(target, kind, key, outcome counts dict, ttft hist text, duration hist text) per rollup row."""
    sql = (f"SELECT target, kind, {key}, {', '.join(_OUTCOMES)}, {', '.join(LATENCIES.values())} "
           f"FROM {table} WHERE {key} >= ? AND {key} < ?")
    params: list = [start, end]
    if probe is not None:
        sql += " AND target = ? AND kind = ?"
        params += probe
    width = len(_OUTCOMES)
    for target, kind, at, *rest in conn.execute(sql, params):
        counts = {o: n for o, n in zip(_OUTCOMES, rest[:width]) if n}
        yield target, kind, at, counts, rest[width], rest[width + 1]


def rollup_rows(conn: sqlite3.Connection, table: str, key: str, start: int, end: int,
                probe: tuple[str, str] | None = None) -> Iterable[tuple[str, str, int, Tally]]:
    """(target, kind, period start, tally) for each rollup row with start <= key < end (of one probe)."""
    for target, kind, at, counts, ttft, duration in _rows(conn, table, key, start, end, probe):
        tally = Tally()
        tally.add_counts(counts)
        tally.add_hists([json.loads(ttft), json.loads(duration)])
        yield target, kind, at, tally


def day_rollups(conn: sqlite3.Connection) -> tuple[str, str]:
    """(table, key column) to read days from: the daily rollups, or the hourly ones of a database
    not yet upgraded (rows are grouped by day where they are read)."""
    grain = rollups.DAILY if has_table(conn, rollups.DAILY.table) else rollups.HOURLY
    return grain.table, grain.key_column


class _Periods:
    """Windows of every probe over whole periods (hours or days) ending with the current one.

    Periods before the previous one are *settled*: read once when the period turns, merged
    into each window they belong to and counted per period (for the daily bars). The previous
    and the current period stay *fresh* and are read on every refresh: a probe that started
    before the hour or midnight is written when it ends.
    """

    def __init__(self, period_s: int, windows: dict[str, int]) -> None:
        self.period_s = period_s
        self.windows = windows  # name -> how many periods, the current one included
        self._settled_before: int | None = None
        self._merged: dict[tuple[str, str], dict[str, Tally]] = {}
        self.settled_counts: dict[tuple[str, str], dict[int, dict[str, int]]] = {}
        self.fresh: dict[tuple[str, str], dict[int, Tally]] = {}
        self.current = 0

    def read(self, conn: sqlite3.Connection, table: str, key: str, now: float) -> None:
        """Bring the periods up to the one holding ``now`` (``table``'s ``key`` is a period start)."""
        p = self.period_s
        self.current = current = int(now) // p * p
        settled_before = current - p
        if self._settled_before != settled_before:
            self._settle(conn, table, key, current - (max(self.windows.values()) - 1) * p, settled_before)
            self._settled_before = settled_before
        self.fresh = {}
        for target, kind, at, counts, ttft, duration in _rows(conn, table, key, settled_before, current + p):
            tally = self.fresh.setdefault((target, kind), {}).setdefault(at // p * p, Tally())
            tally.add_counts(counts)  # rows of one probe differ in provider, model or location: add up
            tally.add_hists([json.loads(ttft), json.loads(duration)])

    def _settle(self, conn: sqlite3.Connection, table: str, key: str, first: int, before: int) -> None:
        # Each row is added to one segment, the shortest window holding it; the windows are then
        # the segments added up, shortest first (7d, 7d + the rest of 30d, ...): one merge per row.
        names = sorted(self.windows, key=self.windows.__getitem__)
        starts = [(name, self.current - (self.windows[name] - 1) * self.period_s) for name in names]
        segments: dict[tuple[str, str], dict[str, Tally]] = {}
        counts: dict[tuple[str, str], dict[int, dict[str, int]]] = {}
        p = self.period_s
        for target, kind, at, row_counts, ttft, duration in _rows(conn, table, key, first, before):
            series = (target, kind)
            period = at // p * p
            per_period = counts.setdefault(series, {}).setdefault(period, {})
            for outcome, n in row_counts.items():
                per_period[outcome] = per_period.get(outcome, 0) + n
            segment = next((name for name, start in starts if period >= start), None)
            if segment is None:
                continue
            tally = segments.setdefault(series, {}).setdefault(segment, Tally())
            tally.add_counts(row_counts)
            tally.add_hists([json.loads(ttft), json.loads(duration)])
        merged = {}
        for series, parts in segments.items():
            running, windows = Tally(), {}
            for name in names:
                if name in parts:
                    running.add(parts[name])
                windows[name] = Tally()
                windows[name].add(running)
            merged[series] = windows
        self._merged, self.settled_counts = merged, counts

    def probes(self) -> set[tuple[str, str]]:
        return set(self.settled_counts) | set(self.fresh)

    def window(self, series: tuple[str, str], name: str) -> tuple[int, Tally]:
        """(start, tally) of one window: its settled periods merged once, plus the fresh ones."""
        start = self.current - (self.windows[name] - 1) * self.period_s
        tally = Tally()
        settled = self._merged.get(series)
        if settled is not None:
            tally.add(settled[name])
        for at, period in self.fresh.get(series, {}).items():
            if at >= start:
                tally.add(period)
        return start, tally


class SnapshotBuilder:
    """Builds snapshots of one database, keeping what does not change between refreshes."""

    def __init__(self, db_path: str | Path, settings: Settings,
                 series: Sequence[Series] | None = None) -> None:
        self.db_path = str(db_path)
        self.settings = settings
        self.series = None if series is None else tuple(series)
        self._reset()

    def _reset(self) -> None:
        self._hours = _Periods(HOUR_S, {"24h": 24})
        self._days = _Periods(DAY_S, {n: count for n, (grain, count) in WINDOWS.items() if grain == "day"})
        self._bars: dict[tuple[str, str], list[dict]] = {}
        self._bars_day: int | None = None
        self._dates: dict[int, str] = {}
        self._incidents = IncidentTracker(_rules(self.settings), max(RECENT_RUNS, self.settings.state_runs))
        self._voice = voice.VoiceTracker()

    def configure(self, settings: Settings, series: Sequence[Series] | None) -> None:
        """New settings or probes (a reload); with new settings everything is read again."""
        if settings != self.settings:
            self.settings = settings
            self._reset()
        self.series = None if series is None else tuple(series)

    def build(self, now: float | None = None) -> dict:
        """A snapshot as of ``now`` (default: the wall clock)."""
        now = time.time() if now is None else now
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            self._hours.read(conn, rollups.HOURLY.table, rollups.HOURLY.key_column, now)
            self._days.read(conn, *day_rollups(conn), now)
            series = self.series if self.series is not None else _series_in(conn, self._days, self._hours)
            self._incidents.scan(conn, now - DAYS * DAY_S)
            # With a config, the probes that can interrupt are known: the first scan reads theirs alone.
            audio_keys = None if self.series is None else [
                (s.target, s.kind) for s in self.series if s.kind == "realtime" and s.modality == "audio"]
            self._voice.scan(conn, self._days.current - (WINDOWS["90d"][1] - 1) * DAY_S, audio_keys)
        finally:
            conn.close()
        targets = [self._target(group, now) for group in _by_target(series)]
        probes = [p for t in targets for p in t["probes"]]
        audio = [voice.first_audio_entry(t, p) for t in targets for p in t["probes"] if p["first_audio"]]
        return {"as_of": iso(now), "title": self.settings.title,
                "state": figures.worst([p["state"] for p in probes]),
                "windows": list(WINDOWS), "min_runs": self.settings.min_runs,
                "thresholds": self.settings.threshold_map, "targets": targets,
                "incidents": self._incidents.incidents(now),
                "first_audio": voice.comparison(audio)}

    def _target(self, group: list[Series], now: float) -> dict:
        first = group[0]
        probes = [self._probe(s, now) for s in group]
        return {"target": first.target, "provider": first.provider, "model": first.model,
                "state": figures.worst([p["state"] for p in probes]), "probes": probes}

    def _probe(self, s: Series, now: float) -> dict:
        settings, key = self.settings, (s.target, s.kind)
        windows, starts = {}, {}
        for name, (grain, _n) in WINDOWS.items():
            start, tally = (self._hours if grain == "hour" else self._days).window(key, name)
            windows[name] = tally.window(start, now, settings.min_runs)
            starts[name] = start
        recent = self._incidents.recent(s.target, s.kind, now - DAY_S)
        deciding = recent[-settings.state_runs:]
        decided = figures.counts(_outcome_counts(deciding))
        ours = {o: n for o, n in _outcome_counts(deciding).items() if figures.attribution(o) == "ours"}
        return {"kind": s.kind,
                "state": figures.state_for(decided, settings.threshold_map),
                "last_run": recent[-1] if recent else None,
                "recent": recent[-RECENT_RUNS:],
                "our_side": {"errors": decided["our_errors"], "outcomes": ours},
                "windows": windows,
                "daily": self._daily(key),
                "incidents": self._incidents.incidents(now, s.target, s.kind),
                **self._voice_figures(s, starts)}

    def _voice_figures(self, s: Series, starts: dict[str, float]) -> dict:
        """``first_audio`` (why the probe's ttft_s is a first audio, or None) and the voice keys
        its kind has: ``stages``, ``turn_bands``, ``interrupt`` (:mod:`modelwatch.status.voice`)."""
        key, tracker = (s.target, s.kind), self._voice
        found: dict = {"first_audio": voice.first_audio_basis(
            s.kind, s.modality, tracker.audio_since(key, starts[voice.FIRST_AUDIO_WINDOW])),
            "transport": s.transport}
        if s.kind == voice.VOICE_CHAIN:
            found["stages"] = tracker.stages(key, starts)
        elif s.kind == voice.CONVERSATION:
            found["turn_bands"] = tracker.turn_bands(key, starts)
        interrupt = tracker.interrupt(key, starts)
        if interrupt is not None:
            found["interrupt"] = interrupt
        return found

    def _daily(self, key: tuple[str, str]) -> list[dict]:
        """90 bars, oldest first: the settled ones made once a day, yesterday's and today's each time."""
        days, thresholds = self._days, self.settings.threshold_map
        if self._bars_day != days.current:
            self._bars, self._bars_day = {}, days.current
            self._dates = {at: iso(at)[:10] for at in range(days.current - (DAYS - 1) * DAY_S,
                                                             days.current + DAY_S, DAY_S)}
        settled = self._bars.get(key)
        if settled is None:
            counts = days.settled_counts.get(key, {})
            settled = self._bars[key] = [_bar(date, counts.get(at, {}), thresholds)
                                         for at, date in list(self._dates.items())[:DAYS - 2]]
        fresh = days.fresh.get(key, {})
        return settled + [_bar(self._dates[at], fresh[at].outcomes if at in fresh else {}, thresholds)
                          for at in (days.current - DAY_S, days.current)]


def _rules(settings: Settings) -> Rules:
    thresholds = settings.threshold_map
    return Rules(failures=settings.incident_failures, window=settings.state_runs,
                 threshold=thresholds["partial_outage"], recovered=thresholds["degraded"])


def _bar(date: str, outcomes: dict[str, int], thresholds: dict[str, float]) -> dict:
    c = figures.counts(outcomes)
    return {"date": date, "runs": c["runs"], "errors": c["errors"], "availability": c["availability"],
            "provider_availability": c["provider_availability"], "state": figures.state_for(c, thresholds)}


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


def _series_in(conn: sqlite3.Connection, days: _Periods, hours: _Periods) -> list[Series]:
    """Without a config: every probe the last 90 days hold, with its latest provider and model."""
    latest = {(t, k): (p, m) for t, k, p, m, _h in conn.execute(
        f"SELECT target, kind, provider, model, max(hour) FROM {rollups.HOURLY.table} "
        "WHERE hour >= ? GROUP BY target, kind", [days.current - DAYS * DAY_S])}
    return [Series(t, k, *latest.get((t, k), ("", ""))) for t, k in sorted(days.probes() | hours.probes())]
