"""Incidents derived from the stored runs of each probe.

An incident of a probe opens when either

- ``failures`` runs in a row failed (any outcome but ``ok``: a dead key is an incident too,
  put down to our side), or
- the provider availability of its last ``window`` runs the provider could serve fell below
  ``threshold`` (the ``partial_outage`` threshold, as for the page's state),

and ends at the first successful run after its last failure once the streak is broken and
the window is back at ``recovered`` (the ``degraded`` threshold: without that margin a model
failing one run in six would open and close an incident every few runs). It starts
at the first failure of the run (or of the window) that opened it. Its ``dominant_outcome`` is
the most frequent failure, ``error_code`` the provider's most frequent code for that outcome,
and ``attribution`` who that outcome is put down to (:func:`modelwatch.figures.attribution`).

The tracker also keeps each probe's newest runs (the page's strip, last run and state).

Runs are read in row-id order (the order they were written, which for one probe is the order
they ran: runs of one target never overlap), once from the start and then only the new rows
of each refresh, so a refresh costs what was written since the last one.
"""

from __future__ import annotations

import collections
import dataclasses
import sqlite3

from modelwatch import figures
from modelwatch.outcomes import NOT_PROVIDER_JUDGED, PROVIDER_OUTCOMES

SCAN_BATCH = 10_000
MAX_KEPT = 1000  # incidents kept per probe (the newest)
KEEP_S = 90 * 86400.0


@dataclasses.dataclass(frozen=True)
class Rules:
    """When an incident opens."""

    failures: int = 3
    window: int = 10
    threshold: float = 0.9
    recovered: float = 0.99


@dataclasses.dataclass
class _Open:
    start: float
    runs: int = 0
    failures: int = 0
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    codes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    recovered_at: float | None = None  # the first ok run after the last failure

    def add(self, ts: float, outcome: str, code: str | None) -> None:
        self.runs += 1
        if outcome == figures.OK:
            if self.recovered_at is None:
                self.recovered_at = ts
            return
        self.recovered_at = None
        self.failures += 1
        self.outcomes[outcome] += 1
        if code:
            self.codes[(outcome, code)] += 1


class _Probe:
    """The running state of one probe: its failure streak, last judged runs, open incident."""

    __slots__ = ("streak", "judged", "open", "closed", "recent")

    def __init__(self, window: int, recent: int) -> None:
        self.recent: collections.deque = collections.deque(maxlen=recent)  # (ts, run as the API shows it)
        self.streak: list[tuple[float, str, str | None]] = []
        self.judged: collections.deque = collections.deque(maxlen=window)  # (ts, outcome, code)
        self.open: _Open | None = None
        self.closed: collections.deque = collections.deque(maxlen=MAX_KEPT)


class IncidentTracker:
    """Incidents of every probe, kept up to date from new rows."""

    def __init__(self, rules: Rules, recent: int = 30) -> None:
        self.rules = rules
        self._recent = recent
        self._after_id = 0
        self._probes: dict[tuple[str, str], _Probe] = {}

    def scan(self, conn: sqlite3.Connection, since_ts: float) -> int:
        """Read the rows written since the last scan (the first reads from ``since_ts``); return how many."""
        seen = 0
        cursor = conn.execute(
            "SELECT id, target, kind, ts, outcome, error_code, ttft_s, duration_s FROM probe_results "
            "WHERE id > ? AND ts >= ? ORDER BY id", [self._after_id, since_ts if self._after_id == 0 else 0])
        while rows := cursor.fetchmany(SCAN_BATCH):
            for row_id, target, kind, ts, outcome, code, ttft, duration in rows:
                probe = self._add(target, kind, ts, outcome, code)
                probe.recent.append((ts, {"ts": figures.iso(ts), "outcome": outcome, "error_code": code,
                                          "ttft_s": _round(ttft), "duration_s": _round(duration)}))
            self._after_id = rows[-1][0]
            seen += len(rows)
        return seen

    def recent(self, target: str, kind: str, since_ts: float) -> list[dict]:
        """The newest runs of one probe that started at or after ``since_ts``, oldest first."""
        probe = self._probes.get((target, kind))
        return [] if probe is None else [run for ts, run in probe.recent if ts >= since_ts]

    def _add(self, target: str, kind: str, ts: float, outcome: str, code: str | None) -> _Probe:
        probe = self._probes.get((target, kind))
        if probe is None:
            probe = self._probes[(target, kind)] = _Probe(self.rules.window, self._recent)
        run = (ts, outcome, code)
        if outcome == figures.OK:
            probe.streak.clear()
        else:
            probe.streak.append(run)
        if outcome not in NOT_PROVIDER_JUDGED:
            probe.judged.append(run)
        if probe.open is not None:
            probe.open.add(ts, outcome, code)
            if probe.open.recovered_at is not None and self._recovered(probe):
                probe.closed.append(_finish(probe.open, target, kind, probe.open.recovered_at))
                probe.open = None
        elif self._failing(probe):
            probe.open = self._opened(probe)
        return probe

    def _failing(self, probe: _Probe) -> bool:
        rules = self.rules
        if len(probe.streak) >= rules.failures:
            return True
        if len(probe.judged) < rules.window:
            return False
        return _availability(probe.judged) < rules.threshold

    def _recovered(self, probe: _Probe) -> bool:
        if probe.streak:
            return False
        return _availability(probe.judged) >= self.rules.recovered

    def _opened(self, probe: _Probe) -> _Open:
        if len(probe.streak) >= self.rules.failures:
            runs = list(probe.streak)
        else:  # the window: from its first provider failure on
            judged = list(probe.judged)
            first = next(i for i, (_ts, o, _c) in enumerate(judged) if o in PROVIDER_OUTCOMES)
            runs = judged[first:]
        opened = _Open(start=runs[0][0])
        for ts, outcome, code in runs:
            opened.add(ts, outcome, code)
        return opened

    def incidents(self, now: float, target: str | None = None, kind: str | None = None) -> list[dict]:
        """Incidents that ended within 90 days of ``now`` or are ongoing, newest first."""
        found = []
        if target is not None and kind is not None:  # one probe: a lookup, not a walk over all of them
            probes = [((target, kind), self._probes[(target, kind)])] if (target, kind) in self._probes else []
        else:
            probes = list(self._probes.items())
        for (t, k), probe in probes:
            found += [i for i in probe.closed if i["_end"] >= now - KEEP_S]
            if probe.open is not None:
                found.append(_finish(probe.open, t, k, None, now))
        found.sort(key=lambda i: i["_start"], reverse=True)
        return [{k: v for k, v in i.items() if not k.startswith("_")} for i in found]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _availability(judged: collections.deque) -> float:
    """Provider availability of the last judged runs (1 without any)."""
    if not judged:
        return 1.0
    return 1 - sum(1 for _ts, o, _c in judged if o in PROVIDER_OUTCOMES) / len(judged)


def _finish(opened: _Open, target: str, kind: str, end: float | None, now: float | None = None) -> dict:
    dominant, _n = opened.outcomes.most_common(1)[0]
    codes = [(code, n) for (outcome, code), n in opened.codes.items() if outcome == dominant]
    code = max(codes, key=lambda c: c[1])[0] if codes else None
    stop = end if end is not None else now
    return {"target": target, "kind": kind, "start": figures.iso(opened.start),
            "end": None if end is None else figures.iso(end), "ongoing": end is None,
            "duration_s": round(max(0.0, stop - opened.start), 3), "runs": opened.runs,
            "failures": opened.failures, "dominant_outcome": dominant, "error_code": code,
            "attribution": figures.attribution(dominant), "_start": opened.start,
            "_end": stop}

