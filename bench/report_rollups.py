"""``modelwatch report`` over long ranges, database size per target and month, and the writer's cost.

Builds a database like one a daemon with ``--targets`` targets (one probe each,
a quarter of them realtime) probing every ``--interval`` s would hold after
``--days`` days with ``storage.retention`` = ``--raw-days``, without running
the daemon:

1. Raw ``probe_results`` rows for the last ``--raw-days`` days, generated in
   Python (realistic columns: phases, tokens, cost, request ids, about 1.5 %
   failures with their status, code and message) and inserted with
   ``executemany``, one transaction per day.
2. Their hourly rollups from ``rollups.backfill``, the code the migration
   runs when it upgrades an existing database (its time is reported).
3. Rollups for the older days, copied from those hours shifted back in whole
   blocks of ``--raw-days`` days: same shape and size, no raw rows.

Then it times ``modelwatch report --db DB --since X`` (the real command in a
child process, Python start-up included; one warm-up, then the median of
``--repeat`` runs, warm page cache), measures the space of each table with
its indexes (SQLite's ``dbstat``), per (target, kind) and 30-day month, and
the writer's CPU per batch with and without rollups (``store.write_batch``
against the same database, rows in the current hour).

With ``--daily-targets N`` it measures only the daily rollups instead: a
database of ``--days`` days of hourly rollups of N targets (one day of
synthetic rollup rows, 120 probes an hour each, copied back day by day; no
raw rows), the daily back-fill migration m006 runs on it, and
``modelwatch report --since {days}d`` read through the daily rollups and,
with the daily table renamed away, from the hourly ones alone.

Example:  .venv/bin/python bench/report_rollups.py --write
          .venv/bin/python bench/report_rollups.py --targets 20 --days 30 --raw-days 7
          .venv/bin/python bench/report_rollups.py --daily-targets 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_version, cpu_model, markdown_table, modelwatch_cmd, replace_section  # noqa: E402

from modelwatch import rollups  # noqa: E402
from modelwatch.outcomes import COLUMNS  # noqa: E402
from modelwatch.store import _INSERT_SQL, open_db, write_batch  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DAY = 86400
# outcome, share, http status, error code, message: a day with a little of everything
FAILURES = [("rate_limited", 0.005, 429, "rate_limit_exceeded", "Rate limit reached for requests"),
            ("server_error", 0.003, 500, "server_error", "The server had an error processing your request"),
            ("overloaded", 0.003, 529, "overloaded_error", "Overloaded"),
            ("timeout", 0.002, None, "ttft", "no first token within 30s"),
            ("connect_error", 0.001, None, "ConnectionResetError", "connection reset by peer"),
            ("protocol_error", 0.001, 200, "stream_ended", "stream ended without a terminator")]
PROVIDERS = ("openai", "anthropic", "gemini", "azure")


def series(targets: int) -> list[dict]:
    """One probe per target: name, provider, model, kind, TTFT median, phase within the interval."""
    rng = random.Random(7)
    out = []
    for i in range(targets):
        provider = PROVIDERS[i % len(PROVIDERS)]
        out.append({"target": f"{provider}-model-{i:03d}", "provider": provider,
                    "model": f"{provider}-model-{i % 17:02d}-2026-01-15",
                    "kind": "realtime" if i % 4 == 3 else "rest",
                    "ttft": rng.uniform(0.2, 1.2), "phase": rng.random()})
    return out


def probe_row(s: dict, ts: float, rng: random.Random) -> tuple:
    """One realistic probe_results row, as a tuple in COLUMNS order."""
    row = dict.fromkeys(COLUMNS)
    row.update(ts=ts, target=s["target"], provider=s["provider"], model=s["model"], kind=s["kind"],
               location="eu-west", connect_s=rng.uniform(0.02, 0.08))
    row["ttfb_s"] = row["connect_s"] + rng.uniform(0.05, 0.3)
    pick = rng.random()
    for outcome, share, status, code, message in FAILURES:
        if pick < share:
            row.update(outcome=outcome, http_status=status, error_code=code, error=message,
                       duration_s=row["ttfb_s"] + rng.uniform(0, 0.2),
                       request_id=f"req_{rng.getrandbits(96):024x}" if status else None)
            return tuple(row[c] for c in COLUMNS)
        pick -= share
    ttft = s["ttft"] * rng.lognormvariate(0, 0.35)
    tokens_in, tokens_out = rng.randint(12, 20), rng.randint(1, 16)
    row.update(outcome="ok", http_status=200 if s["kind"] == "rest" else 101, ttft_s=ttft,
               duration_s=ttft + tokens_out * rng.uniform(0.01, 0.04), input_tokens=tokens_in,
               output_tokens=tokens_out, request_id=f"req_{rng.getrandbits(96):024x}",
               cost_usd=tokens_in * 1.5e-7 + tokens_out * 6e-7)
    return tuple(row[c] for c in COLUMNS)


def generate_raw(db, targets: list[dict], interval: float, start: float, days: int) -> int:
    """Insert ``days`` days of raw rows from ``start``, one transaction per day; return the row count."""
    rng = random.Random(11)
    per_day = int(DAY / interval)
    total = 0
    for day in range(days):
        rows = [probe_row(s, start + day * DAY + (k + s["phase"]) * interval, rng)
                for k in range(per_day) for s in targets]
        rows.sort(key=lambda r: r[0])  # as the daemon writes them: in time order
        with db.conn:
            db.conn.execute("BEGIN")
            db.conn.executemany(_INSERT_SQL, rows)
        total += len(rows)
        print(f"  raw day {day + 1}/{days}: {total} rows", end="\r", flush=True)
    print()
    return total


def copy_rollups_back(conn: sqlite3.Connection, first_hour: int, block_s: int, oldest: float) -> None:
    """Fill the hours before ``first_hour`` back to ``oldest`` with copies of later blocks."""
    cols = ", ".join(c for c in rollups.COLUMNS if c != "hour")
    shift = block_s
    while first_hour - shift + block_s > oldest:
        with conn:
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO {rollups.TABLE} (hour, {cols}) SELECT hour - ?, {cols} FROM "
                         f"{rollups.TABLE} WHERE hour >= ? AND hour < ? AND hour - ? >= ?",
                         [shift, first_hour, first_hour + block_s, shift, oldest])
        shift += block_s


def build(path: Path, args: argparse.Namespace) -> dict:
    """Create the database; return what it holds and how long each step took."""
    now = time.time()
    raw_start = rollups.hour_of(now - args.raw_days * DAY) + 3600.0
    db = open_db(path)
    db.conn.execute("PRAGMA synchronous=OFF")  # generation only: the daemon keeps NORMAL
    targets = series(args.targets)
    t0 = time.perf_counter()
    rows = generate_raw(db, targets, args.interval, raw_start, args.raw_days)
    t1 = time.perf_counter()
    with db.conn:
        db.conn.execute("BEGIN")
        db.conn.execute(f"DELETE FROM {rollups.TABLE}")
        rollups.backfill(db.conn)
    t2 = time.perf_counter()
    copy_rollups_back(db.conn, int(raw_start), args.raw_days * DAY, now - args.days * DAY)
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    return {"raw_rows": rows, "raw_s": t1 - t0, "backfill_s": t2 - t1, "total_s": time.perf_counter() - t0}


def sizes(path: Path) -> dict[str, int]:
    """Bytes of pages used by each table with its indexes."""
    conn = sqlite3.connect(path)
    owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
    used: dict[str, int] = {}
    for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
        table = owner.get(name, name)
        used[table] = used.get(table, 0) + size
    used["rollup rows"] = conn.execute(f"SELECT count(*) FROM {rollups.TABLE}").fetchone()[0]
    conn.close()
    return used


CASES = [("--since", "24h"), ("--since", "7d"), ("--since", "7d", "--source", "raw"),
         ("--since", "7d", "--target", "openai-model-00*"), ("--since", "30d"), ("--since", "90d"),
         ("--since", "90d", "--target", "openai-*", "--format", "json")]


def time_reports(path: Path, repeat: int) -> list[list[str]]:
    """Wall time of each report command (median of ``repeat`` after a warm-up) and where it read."""
    out = []
    for case in [("--version",), *CASES]:
        cmd = modelwatch_cmd(*case) if case == ("--version",) else \
            modelwatch_cmd("report", "--db", str(path), *case)
        runs = []
        for i in range(repeat + 1):
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
            if i:
                runs.append(time.perf_counter() - start)
        source = next((s for s in ("raw+rollups", "rollups", "raw") if f"from {_LABEL[s]}" in done.stdout
                       or f'"source": "{s}"' in done.stdout), "-")
        label = "modelwatch --version (start-up alone)" if case == ("--version",) else " ".join(case)
        out.append([f"`{label}`", source, f"{statistics.median(runs):.2f}", f"{max(runs):.2f}"])
    return out


_LABEL = {"raw": "raw rows", "rollups": "rollups;", "raw+rollups": "rollups and raw rows"}


def hourly_rollup_day(targets: list[dict], day: int, per_hour: int = 120) -> list[tuple]:
    """A day of hourly rollup rows (``rollups.COLUMNS`` order) of ``per_hour`` synthetic probes each."""
    rng = random.Random(5)
    out = []
    for s in targets:
        for hour in range(day, day + DAY, 3600):
            contribution = rollups._Contribution()
            for k in range(per_hour):
                row = dict(zip(COLUMNS, probe_row(s, hour + k * 3600 / per_hour, rng)))
                contribution.add(row)
            out.append(contribution.params((hour, s["target"], s["kind"], s["provider"], s["model"], "eu-west")))
    return out


def build_hourly_only(path: Path, targets: int, days: int) -> dict:
    """A database of ``days`` days of hourly rollups and nothing else; return what building took."""
    db = open_db(path)
    conn = db.conn
    conn.execute("PRAGMA synchronous=OFF")  # generation only
    last_day = rollups.day_of(time.time()) - DAY
    t0 = time.perf_counter()
    with conn:
        conn.execute("BEGIN")
        conn.executemany(rollups.UPSERT_SQL, hourly_rollup_day(series(targets), last_day))
    cols = ", ".join(c for c in rollups.COLUMNS if c != "hour")
    for back in range(1, days):
        with conn:
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO {rollups.TABLE} (hour, {cols}) SELECT hour - ?, {cols} FROM "
                         f"{rollups.TABLE} WHERE hour >= ?", [back * DAY, last_day])
    t1 = time.perf_counter()
    with conn:
        conn.execute("BEGIN")
        daily_rows = rollups.backfill_daily(conn)
    t2 = time.perf_counter()
    hourly_rows = conn.execute(f"SELECT count(*) FROM {rollups.TABLE}").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"hourly_rows": hourly_rows, "daily_rows": daily_rows, "build_s": t1 - t0, "backfill_s": t2 - t1}


def time_daily_vs_hourly(path: Path, days: int, repeat: int) -> list[list[str]]:
    """Wall time of ``report --since {days}d`` with the daily rollups, then with the hourly ones alone."""
    out = []
    for label in ("daily + hourly rollups", "hourly rollups only"):
        if label == "hourly rollups only":  # a rename, as a database before m006 would look to the report
            conn = sqlite3.connect(path)
            conn.execute(f"ALTER TABLE {rollups.DAILY_TABLE} RENAME TO hidden_daily")
            conn.commit()
            conn.close()
        cmd = modelwatch_cmd("report", "--db", str(path), "--since", f"{days}d", "--format", "json")
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
            runs.append(time.perf_counter() - start)
        out.append([label, f"{len(done.stdout.splitlines())} lines", f"{statistics.median(runs):.2f}",
                    f"{max(runs):.2f}"])
    return out


def daily_main(args: argparse.Namespace, work: Path) -> str:
    """The ``--daily-targets`` measurement, as Markdown."""
    path = work / "report-bench-daily.db"
    for stale in work.glob("report-bench-daily.db*"):
        stale.unlink()
    built = build_hourly_only(path, args.daily_targets, args.days)
    print(f"built {built['hourly_rows']:,} hourly rows in {built['build_s']:.0f} s; "
          f"daily back-fill: {built['daily_rows']:,} rows in {built['backfill_s']:.1f} s", flush=True)
    reports = time_daily_vs_hourly(path, args.days, args.repeat)
    return "\n\n".join([
        f"{args.daily_targets} targets, {args.days} days of hourly rollups ({built['hourly_rows']:,} rows, "
        f"no raw rows). Migration m006 (`rollups.backfill_daily`) summed them into {built['daily_rows']:,} "
        f"daily rows in {built['backfill_s']:.1f} s. `modelwatch report --since {args.days}d --format json` "
        f"in a child process, median and max of {args.repeat} runs:",
        markdown_table(["read from", "output", "median s", "max s"], reports)])


def writer_cost(path: Path, batches: int) -> list[list[str]]:
    """CPU (this thread) per batch of write_batch with rollups, and of the raw insert alone."""
    db = open_db(path)
    rng = random.Random(3)
    targets = series(100)
    out = []
    for size in (1, 25):
        for mode in ("raw rows only", "raw rows + rollups"):
            cpu = []
            for _ in range(batches):
                now = time.time()
                rows = [dict(zip(COLUMNS, probe_row(targets[rng.randrange(100)], now, rng)))
                        for _ in range(size)]
                start = time.thread_time()
                if mode == "raw rows only":
                    with db.conn:
                        db.conn.execute("BEGIN IMMEDIATE")
                        db.conn.executemany(_INSERT_SQL, [tuple(r[c] for c in COLUMNS) for r in rows])
                else:
                    write_batch(db, rows)
                cpu.append(time.thread_time() - start)
            out.append([str(size), mode, f"{statistics.median(cpu) * 1e6:.0f}",
                        f"{sorted(cpu)[int(len(cpu) * 0.99)] * 1e6:.0f}"])
    db.conn.close()
    return out


def render(args: argparse.Namespace, built: dict, used: dict, reports: list, writer: list) -> str:
    """The Markdown body of the section."""
    raw, rolled = used.get("probe_results", 0), used.get(rollups.TABLE, 0)
    size_rows = [
        ["`probe_results` + indexes", f"{args.raw_days} d", f"{built['raw_rows']:,}", f"{raw / 1e6:,.0f} MB",
         f"{raw / args.targets / args.raw_days * 30 / 1e6:.1f} MB", f"{raw / built['raw_rows']:.0f} B"],
        [f"`{rollups.TABLE}`", f"{args.days} d", f"{used['rollup rows']:,}", f"{rolled / 1e6:,.1f} MB",
         f"{rolled / args.targets / args.days * 30 / 1e6:.2f} MB", f"{rolled / used['rollup rows']:.0f} B"],
    ]
    return "\n\n".join([
        f"{args.targets} targets (one probe each, a quarter realtime) probed every {args.interval:g} s. "
        f"Raw rows for the last {args.raw_days} days ({built['raw_rows']:,} rows, about 1.5 % failures; "
        f"generated and inserted in {built['raw_s']:.0f} s); their rollups back-filled by the "
        f"migration's code in {built['backfill_s']:.0f} s (what upgrading such a database costs at "
        f"start-up); rollups of the {args.days - args.raw_days} older days copied from those, shifted "
        f"back by {args.raw_days} days. Space is SQLite's own count of the pages of each table and its "
        "indexes (`dbstat`); per target and 30-day month it is linear in the probe rate.",
        markdown_table(["table", "covers", "rows", "size", "per target and month", "per row"], size_rows),
        "`modelwatch report --db DB ...` in a child process: wall time in seconds, Python start-up "
        f"included, median and max of {args.repeat} runs after a warm-up (page cache warm); "
        f"{args.targets} rows of output unless filtered. \"read from\" is the report's own `source`:",
        markdown_table(["options", "read from", "median s", "max s"], reports),
        f"The writer's CPU per batch (thread time; median and p99 of {args.batches} batches into the "
        "current hour of this database): the raw insert alone, and `store.write_batch` (raw insert + "
        f"rollup upserts, one transaction). {args.targets} targets every {args.interval:g} s make "
        f"{args.targets / args.interval * 0.25:.1f} rows per 0.25 s batch on average; 100 probes/s make 25:",
        markdown_table(["rows per batch", "writes", "median µs", "p99 µs"], writer),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between probes of a target")
    p.add_argument("--days", type=int, default=90, help="days of rollups")
    p.add_argument("--raw-days", type=int, default=30, help="days of raw rows (storage.retention)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each report")
    p.add_argument("--batches", type=int, default=400, help="writer batches timed per case")
    p.add_argument("--workdir", type=Path, help="keep the database here (default: a temporary directory)")
    p.add_argument("--write", action="store_true", help=f"write the section into {DOCS}")
    p.add_argument("--daily-targets", type=int,
                   help="measure only daily vs hourly rollups for a 90-day report over this many targets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build, measure, print and optionally write docs/benchmarks.md."""
    args = parse_args(argv)
    if subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode == 0:
        print("warning: pytest is running on this machine; timings will be noisy", file=sys.stderr)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelwatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "report-bench.db"
    for stale in work.glob("report-bench.db*"):
        stale.unlink()
    if args.daily_targets:
        try:
            print("\n" + daily_main(args, work))
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    try:
        built = build(path, args)
        used = sizes(path)
        reports = time_reports(path, args.repeat)
        writer = writer_cost(path, args.batches)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    env = (f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {platform.python_version()}, "
           f"SQLite {sqlite3.sqlite_version}; {code_version()}")
    command = "python bench/report_rollups.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = f"Run: {env}.  \nCommand: `{command.strip()}`\n\n{render(args, built, used, reports, writer)}"
    print("\n" + body)
    if args.write:
        replace_section(DOCS, "report-rollups", body)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
