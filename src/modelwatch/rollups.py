"""Hourly and daily rollups of ``probe_results``: exact outcome counts, bucketed latencies, token and cost sums.

Table ``probe_rollups_hourly`` holds one row per UTC hour and series (target,
provider, model, kind, location); ``probe_rollups_daily`` the same columns
keyed by UTC day (``day`` instead of ``hour``), so that a 90-day report reads
24 times fewer rows. A :class:`Grain` (:data:`HOURLY`, :data:`DAILY`) names a
table, its key column and its period; every function here takes one, and
generates its SQL from it. Outcome counts and sums are exact; TTFT and
duration of ``ok`` probes go into sparse histograms with log-spaced buckets
(``BUCKETS_PER_OCTAVE`` per doubling from ``BUCKET_BASE_S``), stored as JSON
objects ``{"bucket index": count}``. A percentile read from a histogram is the
geometric middle of the bucket holding the true nearest-rank value, so it is
within ``RELATIVE_ERROR`` (2^(1/16) - 1, about 4.4 %) of it for values above
0.1 ms.

Why the writer maintains them in the same transaction as the raw rows, rather
than a periodic job rolling up complete hours: one transaction makes every
committed raw row counted exactly once in its hour, whatever crashes. A
periodic job needs its own bookkeeping of which hours are done, can lose an
hour's raw rows to pruning if it falls behind (e.g. a daemon stopped for
longer than the retention) and leaves the current hour un-rolled-up for the
report. The cost stays small: the writer groups a batch by hour and series in
Python (a few dozen rows every 0.25 s at 100 probes/s) and issues one
``executemany`` upsert; counts are added and histograms merged by SQLite
itself, so nothing is read back into Python, and that work runs while the
sqlite3 module has released the GIL, out of the event loop's way (about
1 ms of writer CPU per 25-row batch: docs/benchmarks.md). The daily rows are
upserted by the same call from the same contributions, merged per day in
Python, so a daily row is always the sum of its day's hourly rows (until
pruning, which drops whole days only once they ended before the cutoff).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3

from modelwatch.outcomes import Outcome
from modelwatch.systemd import notify

HOUR_S = 3600
DAY_S = 86400
BACKFILL_CHUNK_GRACE_US = 120_000_000  # a day of one busy install's rows takes seconds, not minutes
SERIES = ("target", "kind", "provider", "model", "location")
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
TOKEN_SUMS = ("input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens")
HISTOGRAMS = {"ttft_s": "ttft_hist", "duration_s": "duration_hist"}
BUCKET_BASE_S = 1e-4
BUCKETS_PER_OCTAVE = 8
RELATIVE_ERROR = 2 ** (1 / (2 * BUCKETS_PER_OCTAVE)) - 1
VALUES: tuple[str, ...] = ("probes", *OUTCOMES, *HISTOGRAMS.values(), *TOKEN_SUMS, "cost_usd")


@dataclasses.dataclass(frozen=True)
class Grain:
    """One rollup table: its name, the column holding each row's period start, and the period."""

    table: str
    key_column: str
    seconds: int

    @property
    def key(self) -> tuple[str, ...]:
        """The primary key: period start, then the series."""
        return (self.key_column, *SERIES)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column, key first, in the order :func:`add_rows` binds them."""
        return (*self.key, *VALUES)

    def start_of(self, ts: float) -> int:
        """Unix seconds at the start of the UTC period holding ``ts`` (integer maths, as in SQL)."""
        return int(ts) // self.seconds * self.seconds


HOURLY = Grain("probe_rollups_hourly", "hour", HOUR_S)
DAILY = Grain("probe_rollups_daily", "day", DAY_S)
GRAINS = (HOURLY, DAILY)
TABLE, DAILY_TABLE = HOURLY.table, DAILY.table
KEY, COLUMNS = HOURLY.key, HOURLY.columns  # the hourly table's, as before daily rollups


def hour_of(ts: float) -> int:
    """Unix seconds at the start of the UTC hour holding ``ts`` (integer maths, as in SQL)."""
    return HOURLY.start_of(ts)


def day_of(ts: float) -> int:
    """Unix seconds at the start of the UTC day holding ``ts``."""
    return DAILY.start_of(ts)


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency: bucket i holds [base * 2^(i/8), base * 2^((i+1)/8))."""
    if seconds <= BUCKET_BASE_S:
        return 0
    return int(math.log2(seconds / BUCKET_BASE_S) * BUCKETS_PER_OCTAVE)


def bucket_value(index: int) -> float:
    """The value a bucket stands for: its geometric middle."""
    return BUCKET_BASE_S * 2 ** ((index + 0.5) / BUCKETS_PER_OCTAVE)


def hist_percentile(hist: dict[int, int], p: float) -> float | None:
    """Nearest-rank percentile from a histogram, as the middle of its bucket (None when empty)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, -(-total * p // 100))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable: rank <= total")


def create_table(conn: sqlite3.Connection, grain: Grain = HOURLY) -> None:
    """Create a rollup table (keyed by period first: reports and pruning read period ranges)."""
    counts = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in ("probes", *OUTCOMES, *TOKEN_SUMS))
    hists = ", ".join(f"{name} TEXT NOT NULL DEFAULT '{{}}'" for name in HISTOGRAMS.values())
    conn.execute(
        f"CREATE TABLE {grain.table} ({grain.key_column} INTEGER NOT NULL, target TEXT NOT NULL, "
        f"kind TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, location TEXT NOT NULL DEFAULT '', "
        f"{counts}, {hists}, cost_usd REAL, PRIMARY KEY ({', '.join(grain.key)})) WITHOUT ROWID")


def backfill(conn: sqlite3.Connection, chunk_s: int = DAY_S) -> int:
    """Roll up every raw row into an empty hourly rollup table; return the number of rollup rows.

    A day at a time: each chunk is a range scan of the ``ts`` index whose
    grouping fits in memory, so the time grows linearly with the rows.
    """
    conn.create_function("mw_bucket", 1, bucket_of, deterministic=True)
    first, last = conn.execute("SELECT min(ts), max(ts) FROM probe_results").fetchone()
    if first is None:
        return 0
    sql = _backfill_sql()
    for start in range(hour_of(first), hour_of(last) + 1, chunk_s):
        _extend_startup("rolling up stored results")
        conn.execute(sql, [start, start + chunk_s])
    return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def _extend_startup(status: str) -> None:
    """Ask systemd for more start-up time before one more chunk of a back-fill.

    Back-fills run in migrations, before READY=1: each chunk asks for more, so
    a large database is migrated instead of being killed (and retried) at
    TimeoutStartSec.
    """
    notify(f"EXTEND_TIMEOUT_USEC={BACKFILL_CHUNK_GRACE_US}\nSTATUS={status}")


def _backfill_sql() -> str:
    """INSERT ... SELECT of the hourly rollup rows of the raw rows with ``? <= ts < ?`` (whole hours)."""
    key = ", ".join(KEY)
    outcome_sums = ", ".join(f"sum(outcome = '{o}') AS {o}" for o in OUTCOMES)
    token_sums = ", ".join(f"coalesce(sum({t}), 0) AS {t}" for t in TOKEN_SUMS)
    hist_ctes = "".join(
        f", {col} AS (SELECT {key}, json_group_object(b, n) AS hist FROM ("
        f"SELECT {key}, mw_bucket({raw}) AS b, count(*) AS n FROM raw WHERE outcome = 'ok' "
        f"AND {raw} IS NOT NULL GROUP BY {key}, b ORDER BY {key}, b) GROUP BY {key})"
        for raw, col in HISTOGRAMS.items())
    hist_joins = " ".join(f"LEFT JOIN {col} USING ({key})" for col in HISTOGRAMS.values())
    hist_values = ", ".join(f"coalesce({col}.hist, '{{}}')" for col in HISTOGRAMS.values())
    return (
        f"WITH raw AS (SELECT CAST(ts AS INTEGER) / {HOUR_S} * {HOUR_S} AS hour, target, kind, "
        f"provider, model, coalesce(location, '') AS location, outcome, {', '.join(HISTOGRAMS)}, "
        f"{', '.join(TOKEN_SUMS)}, cost_usd FROM probe_results WHERE ts >= ? AND ts < ?), "
        f"counts AS (SELECT {key}, count(*) AS probes, {outcome_sums}, {token_sums}, "
        f"sum(cost_usd) AS cost_usd FROM raw GROUP BY {key}){hist_ctes} "
        f"INSERT INTO {TABLE} ({key}, probes, {', '.join(OUTCOMES)}, {', '.join(TOKEN_SUMS)}, cost_usd, "
        f"{', '.join(HISTOGRAMS.values())}) "
        f"SELECT {key}, probes, {', '.join(OUTCOMES)}, {', '.join(TOKEN_SUMS)}, cost_usd, {hist_values} "
        f"FROM counts {hist_joins}")


def backfill_daily(conn: sqlite3.Connection, chunk_days: int = 7) -> int:
    """Sum the hourly rollups into an empty daily rollup table; return the number of daily rows.

    Hourly rollups outlive raw rows, so they, not ``probe_results``, are the
    source. ``chunk_days`` days at a time: each chunk is a range scan of the
    hourly primary key whose sums fit in memory, so the time grows linearly
    with the hourly rows. Histograms are merged in Python, which parses and
    adds them faster than SQLite's ``json_each`` with GROUP BY (report.py).
    """
    first, last = conn.execute(f"SELECT min(hour), max(hour) FROM {TABLE}").fetchone()
    if first is None:
        return 0
    columns = (*DAILY.key, *_ADDED, *HISTOGRAMS.values(), "cost_usd")  # as _sum_hours returns them
    sql = f"INSERT INTO {DAILY_TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    step = chunk_days * DAY_S
    for start in range(day_of(first), day_of(last) + 1, step):
        _extend_startup("summing hourly rollups into daily ones")
        conn.executemany(sql, _sum_hours(conn, start, start + step))
    return conn.execute(f"SELECT count(*) FROM {DAILY_TABLE}").fetchone()[0]


def _sum_hours(conn: sqlite3.Connection, start: int, end: int) -> list[tuple]:
    """The daily rows summing the hourly rows with ``start <= hour < end``: key, sums, histograms, cost.

    SQLite sums the counts; each day's hourly histograms come back as one JSON
    array to parse in one call and add up in Python.
    """
    series = ", ".join(SERIES)
    sums = ", ".join(f"sum({c})" for c in _ADDED)
    hists = ", ".join(f"'[' || group_concat({c}) || ']'" for c in HISTOGRAMS.values())
    out = []
    for row in conn.execute(
            f"SELECT hour / {DAY_S} * {DAY_S} AS day, {series}, {sums}, {hists}, sum(cost_usd) FROM {TABLE} "
            f"WHERE hour >= ? AND hour < ? GROUP BY day, {series}", [start, end]):
        counts_end = 1 + len(SERIES) + len(_ADDED)
        texts = row[counts_end:counts_end + len(HISTOGRAMS)]
        out.append((*row[:counts_end], *(_merged_json(text) for text in texts), row[-1]))
    return out


def _merged_json(array: str) -> str:
    """One histogram's JSON from a JSON array of histograms, bucket counts added, buckets in order."""
    merged: dict[str, int] = {}
    get = merged.get
    for hist in json.loads(array):
        for b, n in hist.items():
            merged[b] = get(b, 0) + n
    return json.dumps({b: merged[b] for b in sorted(merged, key=int)}, separators=(",", ":"))


def _merge_hist(grain: Grain, col: str) -> str:
    """SQL that adds the incoming histogram's counts to the stored one, bucket by bucket."""
    t = grain.table
    return (f"CASE WHEN excluded.{col} = '{{}}' THEN {t}.{col} ELSE ("
            f"SELECT json_group_object(key, n) FROM (SELECT key, sum(value) AS n FROM ("
            f"SELECT key, value FROM json_each({t}.{col}) UNION ALL "
            f"SELECT key, value FROM json_each(excluded.{col})) GROUP BY key "
            f"ORDER BY CAST(key AS INTEGER))) END")


_ADDED = ("probes", *OUTCOMES, *TOKEN_SUMS)


def upsert_sql(grain: Grain) -> str:
    """INSERT of one row of ``grain.columns`` that adds itself to the stored row of its key, if any."""
    t = grain.table
    return (
        f"INSERT INTO {t} ({', '.join(grain.columns)}) VALUES ({', '.join('?' for _ in grain.columns)}) "
        f"ON CONFLICT ({', '.join(grain.key)}) DO UPDATE SET "
        + ", ".join(f"{c} = {t}.{c} + excluded.{c}" for c in _ADDED)
        + f", cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN {t}.cost_usd "
          f"ELSE coalesce({t}.cost_usd, 0) + excluded.cost_usd END"
        + "".join(f", {c} = {_merge_hist(grain, c)}" for c in HISTOGRAMS.values()))


UPSERT_SQL = upsert_sql(HOURLY)
_UPSERTS = {grain: upsert_sql(grain) for grain in GRAINS}


class _Contribution:
    """What one batch adds to one rollup row."""

    __slots__ = ("probes", "outcomes", "hists", "tokens", "cost")

    def __init__(self) -> None:
        self.probes = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.hists: dict[str, dict[int, int]] = {raw: {} for raw in HISTOGRAMS}
        self.tokens = dict.fromkeys(TOKEN_SUMS, 0)
        self.cost: float | None = None

    def add(self, row: dict) -> None:
        """Count one raw row (a dict keyed by column)."""
        self.probes += 1
        outcome = row["outcome"]
        if outcome in self.outcomes:
            self.outcomes[outcome] += 1
        if outcome == "ok":
            for raw, hist in self.hists.items():
                if row[raw] is not None:
                    b = bucket_of(row[raw])
                    hist[b] = hist.get(b, 0) + 1
        for name in TOKEN_SUMS:
            self.tokens[name] += row.get(name) or 0
        if row.get("cost_usd") is not None:
            self.cost = (self.cost or 0.0) + row["cost_usd"]

    def merge(self, other: _Contribution) -> None:
        """Add another contribution (of a shorter period inside this one's)."""
        self.probes += other.probes
        for outcome, n in other.outcomes.items():
            self.outcomes[outcome] += n
        for raw, hist in other.hists.items():
            _add_counts(self.hists[raw], hist)
        for name, n in other.tokens.items():
            self.tokens[name] += n
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost

    def params(self, key: tuple) -> tuple:
        """The upsert's parameters: key, then :data:`VALUES`."""
        hists = [json.dumps({str(b): n for b, n in sorted(h.items())}, separators=(",", ":"))
                 for h in self.hists.values()]
        return (*key, self.probes, *self.outcomes.values(), *hists, *self.tokens.values(), self.cost)


def _add_counts(into: dict[int, int], counts: dict[int, int]) -> None:
    """Add histogram ``counts`` into ``into``, bucket by bucket."""
    get = into.get
    for b, n in counts.items():
        into[b] = get(b, 0) + n


def add_rows(conn: sqlite3.Connection, rows: list[dict], grains: tuple[Grain, ...] = GRAINS) -> None:
    """Add raw rows (dicts keyed by column) to their rollups of every grain, inside the caller's transaction.

    Rows are grouped by hour once; each coarser grain merges those hourly
    groups rather than bucketing every row again.
    """
    hours: dict[tuple, _Contribution] = {}
    for row in rows:
        key = (hour_of(row["ts"]), row["target"], row["kind"], row["provider"], row["model"],
               row.get("location") or "")
        contribution = hours.get(key)
        if contribution is None:
            contribution = hours[key] = _Contribution()
        contribution.add(row)
    for grain in grains:
        batch = hours if grain == HOURLY else _coarsen(hours, grain)
        conn.executemany(_UPSERTS.get(grain) or upsert_sql(grain), [c.params(key) for key, c in batch.items()])


def _coarsen(hours: dict[tuple, _Contribution], grain: Grain) -> dict[tuple, _Contribution]:
    """Hourly contributions merged into the periods of a coarser grain."""
    out: dict[tuple, _Contribution] = {}
    for (hour, *series), contribution in hours.items():
        key = (grain.start_of(hour), *series)
        merged = out.get(key)
        if merged is None:
            merged = out[key] = _Contribution()
        merged.merge(contribution)
    return out


def prune(conn: sqlite3.Connection, cutoff_ts: float, grains: tuple[Grain, ...] = GRAINS) -> int:
    """Delete rollup periods (hours, days) that ended at or before ``cutoff_ts``; return how many rows went.

    A day that began before the cutoff stays whole until it has all passed it:
    a daily row counts its whole day or nothing.
    """
    return sum(conn.execute(f"DELETE FROM {g.table} WHERE {g.key_column} <= ?", [cutoff_ts - g.seconds]).rowcount
               for g in grains)
