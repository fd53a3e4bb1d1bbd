"""SQLite storage of probe results: named migrations and a writer thread.

Schema changes are sqlite-utils migrations (:data:`MIGRATIONS`, recorded in its
``_sqlite_migrations`` table); :func:`migrate` first adopts the records of
releases up to 0.1.0, which kept their own ``_migrations`` table.

The event loop only ever calls :meth:`Store.submit`, which appends to a queue.
One writer thread owns the connection, batches rows and commits at least every
``COMMIT_EVERY_S`` (so a crash loses at most that much and never a committed
row), adds each batch to the hourly and daily rollups (:mod:`modelwatch.rollups`)
in the same transaction as its raw rows, prunes raw rows older than the retention and
rollups older than the rollup retention, and survives write failures (locked,
read-only, disk full) by keeping the rows and retrying, counting each failure
and logging once per change of state. A row SQLite cannot take at all (text
that is not valid UTF-8, a number out of range) is repaired, or dropped and
counted, so that one hostile byte never stops the rows after it; anything else
the writer meets is counted and survived. :meth:`Store.healthy` says whether
the writer is still running, for ``/-/healthy`` and the systemd watchdog.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import sqlite3
import threading
import time
from pathlib import Path
from collections.abc import Callable

import sqlite_utils
from sqlite_utils import Migrations

from modelwatch import rollups
from modelwatch.outcomes import COLUMNS, STAGE_COLUMNS, TURN_COLUMNS, ProbeResult, storable_text
from modelwatch.logs import fields

log = logging.getLogger("modelwatch.store")

COMMIT_EVERY_S = 0.25
PRUNE_EVERY_S = 3600.0
MAX_PENDING_ROWS = 100_000  # held in memory while the database refuses writes
MAX_CLOCK_STEP_S = 3600.0  # a wall clock this far ahead of elapsed time pauses pruning
DEFAULT_ROLLUP_RETENTION_S = 400 * 86400.0

# Applied once per database, in definition order, each in one transaction with its record.
# The names are what databases record: never rename one (0.1.0's records are adopted by name).
MIGRATIONS = Migrations("modelwatch")
LEGACY_MIGRATIONS_TABLE = "_migrations"  # the record of releases up to 0.1.0


@MIGRATIONS()
def m001_probe_results(db: sqlite_utils.Database) -> None:
    """The raw results table, one row per probe."""
    db["probe_results"].create({
        "id": int, "ts": float, "target": str, "provider": str, "model": str, "kind": str,
        "outcome": str, "http_status": int, "error_code": str, "error": str,
        "connect_s": float, "ttfb_s": float, "ttft_s": float, "duration_s": float,
        "input_tokens": int, "output_tokens": int, "request_id": str, "location": str,
    }, pk="id")
    db["probe_results"].create_index(["ts"])
    db["probe_results"].create_index(["target", "kind", "ts"])


@MIGRATIONS()
def m002_audio_tokens(db: sqlite_utils.Database) -> None:
    """Audio token details of realtime probes."""
    db["probe_results"].add_column("input_audio_tokens", int)
    db["probe_results"].add_column("output_audio_tokens", int)


@MIGRATIONS()
def m003_cost(db: sqlite_utils.Database) -> None:
    """What each probe cost, from its tokens and the target's price table."""
    db["probe_results"].add_column("cost_usd", float)


@MIGRATIONS()
def m004_hourly_rollups(db: sqlite_utils.Database) -> None:
    """Hourly rollups for long ranges, back-filled from the raw rows already stored."""
    rollups.create_table(db.conn)
    stored = db.execute("SELECT count(*) FROM probe_results").fetchone()[0]
    if stored:  # about 6 s per million rows (docs/benchmarks.md): say why start-up waits
        log.info("rolling up stored probe results into hourly rollups", extra=fields(rows=stored))
    rows = rollups.backfill(db.conn)
    if stored:
        log.info("rolled up stored probe results", extra=fields(rollup_rows=rows))


@MIGRATIONS()
def m005_loop_lag(db: sqlite_utils.Database) -> None:
    """The daemon's own event-loop lag while each probe ran (docs/metrics.md)."""
    db["probe_results"].add_column("loop_lag_s", float)


@MIGRATIONS()
def m006_daily_rollups(db: sqlite_utils.Database) -> None:
    """Daily rollups for reports over months, summed from the hourly rollups already stored.

    The hourly rollups, not the raw rows, are the source: they outlive the raw rows.
    """
    rollups.create_table(db.conn, rollups.DAILY)
    first = db.execute(f"SELECT min(hour) FROM {rollups.TABLE}").fetchone()[0]
    if first is not None:  # about 40 s per million hourly rows (bench/report_rollups.py): say why start-up waits
        log.info("summing stored hourly rollups into daily rollups", extra=fields(since=first))
    rows = rollups.backfill_daily(db.conn)
    if first is not None:
        log.info("summed hourly rollups into daily rollups", extra=fields(rollup_rows=rows))


@MIGRATIONS()
def m007_voice_details(db: sqlite_utils.Database) -> None:
    """Voice-agent probes: a voice chain's stages, a conversation's turns, barge-in's interrupt_s.

    Stage and turn rows point at their probe's ``probe_results.id``; they are
    written in the probe's transaction and pruned with it.
    """
    db["probe_results"].add_column("interrupt_s", float)
    db["probe_stages"].create({"probe_id": int, "stage": str, "start_s": float, "ttfb_s": float,
                               "ttft_s": float, "duration_s": float})
    db["probe_stages"].create_index(["probe_id"])
    db["probe_turns"].create({"probe_id": int, "turn": int, "start_s": float, "ttft_s": float,
                              "duration_s": float, "input_tokens": int, "output_tokens": int})
    db["probe_turns"].create_index(["probe_id"])


@MIGRATIONS()
def m008_webrtc_phases(db: sqlite_utils.Database) -> None:
    """WebRTC probes' phases: signalling, ICE, DTLS, data channel."""
    for column in ("signal_s", "ice_s", "dtls_s", "channel_s"):
        db["probe_results"].add_column(column, float)


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating) a database in WAL mode with all migrations applied."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    db.execute("PRAGMA busy_timeout=5000")
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    adopt_legacy_records(db)
    pending = [m.name for m in MIGRATIONS.pending(db)]
    MIGRATIONS.apply(db)
    return pending


def adopt_legacy_records(db: sqlite_utils.Database) -> int:
    """Move the records of a database from 0.1.0 or before into sqlite-utils' table; return how many.

    Those releases recorded each applied migration as a row (name, unix time)
    of ``_migrations``, under the names :data:`MIGRATIONS` still has. The rows
    become records of the ``modelwatch`` set, in the order they were applied,
    and the old table goes, in one transaction: a kill leaves either the old
    record or the new one, never both or neither, so no migration runs twice.
    Taken under the write lock, so that of two processes opening the same old
    database only one adopts it.
    """
    if not db[LEGACY_MIGRATIONS_TABLE].exists():
        return 0
    conn = db.conn
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if not db[LEGACY_MIGRATIONS_TABLE].exists():  # adopted meanwhile by another process
                return 0
            MIGRATIONS.ensure_migrations_table(db)
            legacy = conn.execute(
                f"SELECT name, applied_at FROM {LEGACY_MIGRATIONS_TABLE} ORDER BY rowid").fetchall()
            conn.executemany(
                f"INSERT OR IGNORE INTO {MIGRATIONS.migrations_table} (migration_set, name, applied_at) "
                "VALUES (?, ?, ?)",
                [(MIGRATIONS.name, name, str(dt.datetime.fromtimestamp(applied_at or 0, dt.timezone.utc)))
                 for name, applied_at in legacy])
            conn.execute(f"DROP TABLE {LEGACY_MIGRATIONS_TABLE}")
    finally:
        if conn.in_transaction:  # a failed COMMIT can leave the transaction open
            conn.execute("ROLLBACK")
    log.info("adopted the migration records of an older release", extra=fields(migrations=len(legacy)))
    return len(legacy)


def cost_since(path: str | Path, since_ts: float) -> float:
    """USD spent by probes that started at or after ``since_ts`` (0 for a new database)."""
    path = Path(path)
    if not path.exists():
        return 0.0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        row = conn.execute("SELECT total(cost_usd) FROM probe_results WHERE ts >= ?", [since_ts]).fetchone()
    except sqlite3.Error:  # a database from before the cost column, or unreadable: start at 0
        return 0.0
    finally:
        conn.close()
    return float(row[0] or 0.0)


class Store:
    """Asynchronous-to-the-caller writer of ``probe_results`` rows."""

    def __init__(self, path: str | Path, retention_s: float,
                 on_error: Callable[[], None] | None = None,
                 on_pending: Callable[[int], None] | None = None,
                 on_dropped: Callable[[], None] | None = None,
                 rollup_retention_s: float = DEFAULT_ROLLUP_RETENTION_S,
                 max_pending_rows: int = MAX_PENDING_ROWS,
                 prune_every_s: float = PRUNE_EVERY_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.prune_every_s = prune_every_s
        self._wall = wall
        self._wall_minus_mono = wall() - time.monotonic()  # what wall time should read, less elapsed
        self._clock_stepped = False
        self.max_pending_rows = max_pending_rows
        self.retention_s = retention_s
        self.rollup_retention_s = rollup_retention_s
        self._on_error = on_error or (lambda: None)
        self._on_pending = on_pending or (lambda n: None)
        self._on_dropped = on_dropped or (lambda: None)
        self._queue: queue.SimpleQueue[ProbeResult] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._db = open_db(self.path)
        self._thread = threading.Thread(target=self._run, name="modelwatch-store", daemon=True)
        self._failing = False
        self._dropping = False
        self._thread.start()

    def submit(self, result: ProbeResult) -> None:
        """Queue a result for writing; never blocks, never wakes the writer."""
        self._queue.put(result)

    def healthy(self) -> bool:
        """Whether the writer thread still runs (it only ends after :meth:`close`)."""
        return self._thread.is_alive() or self._closing.is_set()

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, commit and stop the writer."""
        self._closing.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[dict] = []
        last_prune = float("-inf")  # prune once at start, then hourly
        stopping = False
        while not stopping:
            try:
                stopping = self._collect(pending)
                if pending:
                    self._write(pending)
                if time.monotonic() - last_prune > self.prune_every_s and not self._failing:
                    self._prune()
                    last_prune = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any surprise
                self._on_error()
                log.error("store writer error, carrying on", extra=fields(error=_describe(exc), rows=len(pending)))
                self._closing.wait(COMMIT_EVERY_S)  # no busy loop if it repeats
        if pending:
            log.error("store stopped with unwritten rows", extra=fields(rows=len(pending), path=self.path))
        self._db.conn.close()

    def _collect(self, pending: list[dict]) -> bool:
        """Wait one commit window, then take every queued row; True once close() was asked for.

        Waking once per window rather than once per row keeps the writer from
        competing with the event loop for the GIL on every probe.
        """
        closing = self._closing.wait(COMMIT_EVERY_S)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return closing
            if len(pending) >= self.max_pending_rows:
                self._drop_oldest(pending)
            pending.append(row_of(item))

    def _drop_oldest(self, pending: list[dict]) -> None:
        """Bounded memory: the oldest unwritable row goes first, counted, logged once per outage."""
        pending.pop(0)
        self._on_dropped()
        if not self._dropping:
            log.error("store cannot keep up, dropping the oldest unwritten rows",
                      extra=fields(limit=self.max_pending_rows, path=self.path))
            self._dropping = True

    def _write(self, pending: list[dict]) -> None:
        try:
            try:
                write_batch(self._db, pending)
            except (UnicodeError, ValueError, OverflowError, TypeError, sqlite3.InterfaceError):
                self._write_repaired(pending)
        except sqlite3.Error as exc:
            self._on_error()
            if not self._failing:
                log.error("store write failed, keeping rows to retry", extra=fields(error=str(exc), rows=len(pending)))
            self._failing = True
            if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_READONLY:
                self._reopen()
        else:
            if self._failing:
                log.warning("store writes resumed", extra=fields(rows=len(pending)))
            self._failing = self._dropping = False
            pending.clear()
        self._on_pending(len(pending))

    def _write_repaired(self, pending: list[dict]) -> None:
        """A batch SQLite refused as data: repair every row, then drop (and count) what still fails.

        Only a row that cannot be stored in any form is lost, never the rows beside it.
        """
        pending[:] = [storable(row) for row in pending]
        try:
            write_batch(self._db, pending)
            return
        except (UnicodeError, ValueError, OverflowError, TypeError, sqlite3.InterfaceError):
            pass
        kept = []
        for row in pending:
            try:
                write_batch(self._db, [row])
            except (UnicodeError, ValueError, OverflowError, TypeError, sqlite3.InterfaceError) as exc:
                self._on_error()
                self._on_dropped()
                log.error("store dropped a row it cannot write",
                          extra=fields(error=_describe(exc), target=storable({"target": row.get("target")})["target"]))
            except sqlite3.Error:
                kept.append(row)  # the database, not the row: retried with the rest
        pending[:] = kept
        if kept:
            raise sqlite3.OperationalError("database refused the rows left after repair")

    def _reopen(self) -> None:
        """Open the database afresh, so that writes resume once it is writable again.

        SQLite silently opens a file it cannot write read-only, and such a
        connection stays read-only for good: without a new one, a database that
        was read-only when the daemon started would refuse every write forever.
        """
        try:
            db = open_db(self.path)
        except sqlite3.Error:
            return  # still unopenable: keep the old connection and try again next window
        self._db.conn.close()
        self._db = db

    def _prune(self) -> None:
        now = self._wall()
        if self._clock_ahead(now):
            return
        try:
            with self._db.conn:
                cutoff = [now - self.retention_s]
                for table in DETAIL_TABLES:  # first: they are found through their probe's row
                    self._db.execute(f"DELETE FROM {table} WHERE probe_id IN "
                                     "(SELECT id FROM probe_results WHERE ts < ?)", cutoff)
                self._db.execute("DELETE FROM probe_results WHERE ts < ?", cutoff)
                rollups.prune(self._db.conn, now - self.rollup_retention_s)
        except sqlite3.Error as exc:
            log.warning("store prune failed", extra=fields(error=str(exc)))


    def _clock_ahead(self, now: float) -> bool:
        """Whether the wall clock stepped far ahead since start: then pruning waits.

        Retention is wall time, so a clock set a year ahead by a bad NTP source
        would delete a year of history for good. Rows are only ever deleted by a
        clock that agrees with the time that has really elapsed since start.
        """
        step = now - (time.monotonic() + self._wall_minus_mono)
        ahead = step > MAX_CLOCK_STEP_S
        if ahead and not self._clock_stepped:
            log.warning("wall clock stepped ahead since start, pruning paused so a wrong clock cannot "
                        "delete history; restart once the clock is right", extra=fields(step_s=f"{step:.0f}"))
        self._clock_stepped = ahead
        return ahead


_INT64 = 2 ** 63


# The tables of a probe's detail rows, with the ProbeResult field each comes from.
DETAIL_TABLES = {"probe_stages": "stages", "probe_turns": "turns"}
_DETAIL_COLUMNS = {"stages": STAGE_COLUMNS, "turns": TURN_COLUMNS}


def row_of(result: ProbeResult) -> dict:
    """A result as the writer holds it: its columns, plus its stage and turn rows if it has any."""
    row = result.as_row()
    for name in DETAIL_TABLES.values():
        details = getattr(result, name)
        if details:
            row[name] = [tuple(getattr(d, c) for c in _DETAIL_COLUMNS[name]) for d in details]
    return row


def storable(row: dict) -> dict:
    """A row every column of which SQLite accepts: valid text, finite floats, 64-bit integers."""
    out = {name: [tuple(_storable_value(v) for v in detail) for detail in row[name]]
           for name in DETAIL_TABLES.values() if row.get(name)}
    for name in COLUMNS:
        out[name] = _storable_value(row.get(name))
    return out


def _storable_value(value: object) -> object:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None if value is None else storable_text(str(value))


def _describe(exc: BaseException) -> str:
    """An exception as one short line without the data that caused it (a row may hold anything)."""
    return type(exc).__name__ + (f": {exc.reason}" if isinstance(exc, UnicodeError) and
                                 hasattr(exc, "reason") else "")


def write_batch(db: sqlite_utils.Database, rows: list[dict]) -> None:
    """Insert raw rows and add them to the hourly and daily rollups in one transaction: all or nothing."""
    conn = db.conn
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            # Plain executemany: less than half the CPU of sqlite-utils' insert_all, which holds the GIL.
            if any(row.get(name) for row in rows for name in DETAIL_TABLES.values()):
                _insert_with_details(conn, rows)
            else:
                conn.executemany(_INSERT_SQL, [tuple(row.get(c) for c in COLUMNS) for row in rows])
            rollups.add_rows(conn, rows)
    finally:
        if conn.in_transaction:  # a failed COMMIT can leave the transaction open
            conn.execute("ROLLBACK")


_INSERT_SQL = (f"INSERT INTO probe_results ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join('?' for _ in COLUMNS)})")
_INSERT_WITH_ID_SQL = (f"INSERT INTO probe_results (id, {', '.join(COLUMNS)}) "
                       f"VALUES (?, {', '.join('?' for _ in COLUMNS)})")
_DETAIL_INSERT_SQL = {
    name: f"INSERT INTO {table} (probe_id, {', '.join(_DETAIL_COLUMNS[name])}) "
          f"VALUES (?, {', '.join('?' for _ in _DETAIL_COLUMNS[name])})"
    for table, name in DETAIL_TABLES.items()}


def _insert_with_details(conn: sqlite3.Connection, rows: list[dict]) -> None:
    """Insert rows with ids chosen here (after the largest, as SQLite would), so that their stage
    and turn rows can name them; the write lock is held, so no other writer takes an id between."""
    first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM probe_results").fetchone()[0]
    conn.executemany(_INSERT_WITH_ID_SQL, [(first + i, *(row.get(c) for c in COLUMNS))
                                           for i, row in enumerate(rows)])
    for name, sql in _DETAIL_INSERT_SQL.items():
        conn.executemany(sql, [(first + i, *detail) for i, row in enumerate(rows) for detail in row.get(name) or ()])
