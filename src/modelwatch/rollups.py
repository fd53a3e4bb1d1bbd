"""Hourly rollups of ``probe_results``: exact outcome counts, bucketed latencies, token and cost sums.

Table ``probe_rollups_hourly`` holds one row per UTC hour and series (target,
provider, model, kind, location). Outcome counts and sums are exact; TTFT and
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
1 ms of writer CPU per 25-row batch: docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import sqlite3

from modelwatch.outcomes import Outcome
from modelwatch.systemd import notify

TABLE = "probe_rollups_hourly"
HOUR_S = 3600
BACKFILL_CHUNK_GRACE_US = 120_000_000  # a day of one busy install's rows takes seconds, not minutes
SERIES = ("target", "kind", "provider", "model", "location")
KEY = ("hour", *SERIES)
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
TOKEN_SUMS = ("input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens")
HISTOGRAMS = {"ttft_s": "ttft_hist", "duration_s": "duration_hist"}
BUCKET_BASE_S = 1e-4
BUCKETS_PER_OCTAVE = 8
RELATIVE_ERROR = 2 ** (1 / (2 * BUCKETS_PER_OCTAVE)) - 1
COLUMNS: tuple[str, ...] = (*KEY, "probes", *OUTCOMES, *HISTOGRAMS.values(), *TOKEN_SUMS, "cost_usd")


def hour_of(ts: float) -> int:
    """Unix seconds at the start of the UTC hour holding ``ts`` (integer maths, as in SQL)."""
    return int(ts) // HOUR_S * HOUR_S


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


def create_table(conn: sqlite3.Connection) -> None:
    """Create the rollup table (keyed by hour first: reports and pruning read hour ranges)."""
    counts = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in ("probes", *OUTCOMES, *TOKEN_SUMS))
    hists = ", ".join(f"{name} TEXT NOT NULL DEFAULT '{{}}'" for name in HISTOGRAMS.values())
    conn.execute(
        f"CREATE TABLE {TABLE} (hour INTEGER NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, "
        f"provider TEXT NOT NULL, model TEXT NOT NULL, location TEXT NOT NULL DEFAULT '', "
        f"{counts}, {hists}, cost_usd REAL, PRIMARY KEY ({', '.join(KEY)})) WITHOUT ROWID")


def backfill(conn: sqlite3.Connection, chunk_s: int = 86400) -> int:
    """Roll up every raw row into an empty rollup table; return the number of rollup rows.

    A day at a time: each chunk is a range scan of the ``ts`` index whose
    grouping fits in memory, so the time grows linearly with the rows.
    """
    conn.create_function("mw_bucket", 1, bucket_of, deterministic=True)
    first, last = conn.execute("SELECT min(ts), max(ts) FROM probe_results").fetchone()
    if first is None:
        return 0
    sql = _backfill_sql()
    for start in range(hour_of(first), hour_of(last) + 1, chunk_s):
        # Under systemd this runs before READY=1: each day asks for more start-up time, so a
        # large database is migrated instead of being killed (and retried) at TimeoutStartSec.
        notify(f"EXTEND_TIMEOUT_USEC={BACKFILL_CHUNK_GRACE_US}\nSTATUS=rolling up stored results")
        conn.execute(sql, [start, start + chunk_s])
    return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def _backfill_sql() -> str:
    """INSERT ... SELECT of the rollup rows of the raw rows with ``? <= ts < ?`` (whole hours)."""
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


def _merge_hist(col: str) -> str:
    """SQL that adds the incoming histogram's counts to the stored one, bucket by bucket."""
    return (f"CASE WHEN excluded.{col} = '{{}}' THEN {TABLE}.{col} ELSE ("
            f"SELECT json_group_object(key, n) FROM (SELECT key, sum(value) AS n FROM ("
            f"SELECT key, value FROM json_each({TABLE}.{col}) UNION ALL "
            f"SELECT key, value FROM json_each(excluded.{col})) GROUP BY key "
            f"ORDER BY CAST(key AS INTEGER))) END")


_ADDED = ("probes", *OUTCOMES, *TOKEN_SUMS)
UPSERT_SQL = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = {TABLE}.{c} + excluded.{c}" for c in _ADDED)
    + ", cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN {t}.cost_usd "
      "ELSE coalesce({t}.cost_usd, 0) + excluded.cost_usd END".format(t=TABLE)
    + "".join(f", {c} = {_merge_hist(c)}" for c in HISTOGRAMS.values()))


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

    def params(self, key: tuple) -> tuple:
        hists = [json.dumps({str(b): n for b, n in sorted(h.items())}, separators=(",", ":"))
                 for h in self.hists.values()]
        return (*key, self.probes, *self.outcomes.values(), *hists, *self.tokens.values(), self.cost)


def add_rows(conn: sqlite3.Connection, rows: list[dict]) -> None:
    """Add raw rows (dicts keyed by column) to their hourly rollups, inside the caller's transaction."""
    batch: dict[tuple, _Contribution] = {}
    for row in rows:
        key = (hour_of(row["ts"]), row["target"], row["kind"], row["provider"], row["model"],
               row.get("location") or "")
        contribution = batch.get(key)
        if contribution is None:
            contribution = batch[key] = _Contribution()
        contribution.add(row)
    conn.executemany(UPSERT_SQL, [c.params(key) for key, c in batch.items()])


def prune(conn: sqlite3.Connection, cutoff_ts: float) -> int:
    """Delete rollup hours that ended at or before ``cutoff_ts``; return how many rows went."""
    return conn.execute(f"DELETE FROM {TABLE} WHERE hour <= ?", [cutoff_ts - HOUR_S]).rowcount
