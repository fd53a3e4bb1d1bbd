"""The status site at 1,000 targets with 90 days of history: server time per page, and whether it stalls probing.

The database is built directly, without a daemon and without ``store.write_batch``
(plain ``executemany`` into the tables ``open_db`` creates), for N targets
(default 1,000) with two probes each (``rest`` and ``realtime``):

- ``probe_rollups_daily``: one row per probe and UTC day for the last 90 days
  (today's row covers the part of the day gone by): 1,440 probes a day for
  rest, 288 for realtime; failures 0.5-4 % per probe plus, on about 1 day in
  60, an outage day of 5-40 %, spread over timeout, server_error, overloaded,
  rate_limited, connect_error and protocol_error; TTFT and duration
  histograms of about 10-20 buckets around each probe's own median.
- ``probe_rollups_hourly``: the same per UTC hour for the last 48 hours
  (60 rest and 12 realtime probes an hour).
- ``probe_results``: raw rows of the last 2 hours, rest every 60 s and
  realtime every 5 min, about 2 % scattered failures and, on 3 % of the
  probes, a streak of 4 failures in a row (an incident that opens and closes;
  on 0.5 % the streak lasts to the end: an ongoing incident).

It is cached as ``WORK/status-bench-N.db`` and reused while younger than
``--max-age-h`` hours (the windows count back from the wall clock, so an old
one would have an empty last day).

1. In process (this interpreter, ``time.perf_counter``): ``SnapshotBuilder.build``
   cold (a new builder) and warm (the same builder again: a steady refresh),
   ``Site.refresh`` (build + index page + status JSON) and the answer to each
   path through ``modelwatch.status.worker.answer``, the function the daemon's
   worker process runs for a request (the site's answer and its gzip),
   median and max of ``--repeat`` calls; sizes raw and gzipped.
2. Through a real daemon: ``modelwatch run`` with the same N targets x 2
   probes (rest every 60 s, realtime every 5 min: about N/60 * 1.2 probes/s)
   against ``modelwatch sim`` on 127.0.0.1, ``storage.path`` a copy of the
   bench database, ``status.refresh`` default (15 s). Client latency of each
   path, uncached (a query parameter the daemon has not seen yet, so the
   request goes to the worker process as the first one after a refresh does;
   the site ignores parameters it does not know) and cached (the same URL
   again). Then a quiet phase (no status traffic) and a load phase (a client
   fetching status URLs ``--rate`` times a second, half of them uncached),
   each ``--phase`` seconds: the daemon's event-loop lag
   (``modelwatch_event_loop_lag_seconds``, scraped at both ends of each
   phase), the ``loop_lag_s`` column of the probes that started in each phase,
   and their TTFT error against the simulator's own measurement.

Example:  .venv/bin/python bench/status_page.py --write
          .venv/bin/python bench/status_page.py --targets 200 --skip-daemon
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
from http.client import HTTPConnection, HTTPException
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    clear_sim_requests,
    code_version,
    cpu_model,
    cpu_seconds,
    fmt,
    free_port,
    http,
    markdown_table,
    modelwatch_cmd,
    pct,
    replace_section,
    sim_requests,
    start_sim,
    stop_process,
    wait_http,
)
from ttft_and_cpu import lag_quantile_ms, mw_errors, parse_metrics  # noqa: E402

from modelwatch import rollups  # noqa: E402
from modelwatch.outcomes import COLUMNS  # noqa: E402
from modelwatch.status import worker  # noqa: E402
from modelwatch.status.site import GZIP_LEVEL  # noqa: E402
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder  # noqa: E402
from modelwatch.store import _INSERT_SQL, open_db  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
DAY, HOUR = 86400, 3600
PROVIDER, LOCATION = "sim", "bench"  # what the daemon's config below writes, so its rows join the same series
KINDS = {"rest": {"per_day": 1440, "interval": 60}, "realtime": {"per_day": 288, "interval": 300}}
FAILURES = ("timeout", "server_error", "overloaded", "rate_limited", "connect_error", "protocol_error")
FAIL_HTTP = {"server_error": (500, "server_error"), "overloaded": (529, "overloaded_error"),
             "rate_limited": (429, "rate_limit_exceeded"), "timeout": (None, "ttft"),
             "connect_error": (None, "ConnectionResetError"), "protocol_error": (200, "stream_ended")}
SPREAD = range(-7, 8)  # histogram buckets around the median's (15; fewer when counts are small)
BEHAVIOUR = "{ttfb_ms: 20, ttft_ms: 200, jitter_ms: 50, inter_token_ms: 10, tokens: 8}"


def target_name(i: int) -> str:
    return f"t{i + 1:04d}"


def the_series(n: int) -> list[Series]:
    """Every probe the page shows: N targets, rest then realtime."""
    return [Series(target_name(i), kind, PROVIDER, target_name(i)) for i in range(n) for kind in KINDS]


# --- the database ------------------------------------------------------------------------------

def _hist(rng: random.Random, total: int, center: int) -> str:
    """A histogram of ``total`` values around bucket ``center``, as the rollups store it."""
    if total <= 0:
        return "{}"
    weights = [math.exp(-(o / 3.2) ** 2) * rng.uniform(0.7, 1.3) for o in SPREAD]
    scale = total / sum(weights)
    counts = {center + o: int(w * scale) for o, w in zip(SPREAD, weights)}
    counts[center] += total - sum(counts.values())
    return json.dumps({str(b): c for b, c in sorted(counts.items()) if c}, separators=(",", ":"))


def _rollup_row(rng: random.Random, key: tuple, probes: int, fail_rate: float, centers: tuple[int, int],
                columns: tuple[str, ...]) -> tuple:
    """One rollup row in ``columns`` order: outcome counts, histograms, tokens and cost."""
    failed = min(probes, int(probes * fail_rate + rng.random()))
    outcomes = dict.fromkeys(rollups.OUTCOMES, 0)
    for _ in range(failed):
        outcomes[rng.choice(FAILURES)] += 1
    ok = probes - failed
    outcomes["ok"] = ok
    values = {"probes": probes, **outcomes, "ttft_hist": _hist(rng, ok, centers[0] + rng.randint(-1, 1)),
              "duration_hist": _hist(rng, ok, centers[1] + rng.randint(-1, 1)),
              "input_tokens": ok * 15, "output_tokens": ok * 8, "input_audio_tokens": 0,
              "output_audio_tokens": 0, "cost_usd": ok * 7e-6}
    return (*key, *(values[c] for c in columns[len(key):]))


def _probe_profile(rng: random.Random) -> dict:
    ttft = rng.uniform(0.2, 1.2)
    return {"ttft": ttft, "centers": (rollups.bucket_of(ttft), rollups.bucket_of(ttft + 0.15)),
            "fail": rng.uniform(0.005, 0.04)}


def build_db(path: Path, n: int) -> dict:
    """Create the bench database at ``path``; return what it holds and how long it took."""
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    t0 = time.perf_counter()
    now = time.time()
    db = open_db(path)
    conn = db.conn
    conn.execute("PRAGMA synchronous=OFF")  # generation only
    rng = random.Random(12)
    profiles = {(target_name(i), kind): _probe_profile(rng) for i in range(n) for kind in KINDS}
    today, this_hour = rollups.day_of(now), rollups.hour_of(now)
    daily_sql = (f"INSERT INTO {rollups.DAILY.table} ({', '.join(rollups.DAILY.columns)}) "
                 f"VALUES ({', '.join('?' for _ in rollups.DAILY.columns)})")
    hourly_sql = (f"INSERT INTO {rollups.HOURLY.table} ({', '.join(rollups.HOURLY.columns)}) "
                  f"VALUES ({', '.join('?' for _ in rollups.HOURLY.columns)})")
    counts = {"daily": 0, "hourly": 0, "raw": 0}
    for back in range(89, -1, -1):
        day = today - back * DAY
        share = (now - day) / DAY if back == 0 else 1.0
        rows = []
        for (target, kind), p in profiles.items():
            fail = p["fail"] if rng.random() > 1 / 60 else rng.uniform(0.05, 0.4)
            rows.append(_rollup_row(rng, (day, target, kind, PROVIDER, target, LOCATION),
                                    int(KINDS[kind]["per_day"] * share), fail, p["centers"],
                                    rollups.DAILY.columns))
        with conn:
            conn.execute("BEGIN")
            conn.executemany(daily_sql, rows)
        counts["daily"] += len(rows)
    for back in range(47, -1, -1):
        hour = this_hour - back * HOUR
        share = (now - hour) / HOUR if back == 0 else 1.0
        rows = [_rollup_row(rng, (hour, target, kind, PROVIDER, target, LOCATION),
                            int(KINDS[kind]["per_day"] / 24 * share), p["fail"], p["centers"],
                            rollups.HOURLY.columns)
                for (target, kind), p in profiles.items()]
        with conn:
            conn.execute("BEGIN")
            conn.executemany(hourly_sql, rows)
        counts["hourly"] += len(rows)
    raw = []
    for (target, kind), p in profiles.items():
        interval = KINDS[kind]["interval"]
        runs = 2 * HOUR // interval
        phase = rng.uniform(0, interval)
        streak = range(0)
        pick = rng.random()
        if pick < 0.03:
            first = rng.randrange(runs - 4)
            streak = range(first, first + 4)
        elif pick < 0.035:
            first = runs - rng.randint(3, 8)
            streak = range(first, runs)
        outcome_of_streak = rng.choice(FAILURES)
        for k in range(runs):
            ts = now - 2 * HOUR + phase + k * interval
            failed = k in streak or rng.random() < 0.02
            raw.append(_raw_row(rng, ts, target, kind, p["ttft"],
                                (outcome_of_streak if k in streak else rng.choice(FAILURES)) if failed else "ok"))
    raw.sort(key=lambda r: r[0])  # as the daemon writes them: in time order
    with conn:
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, raw)
    counts["raw"] = len(raw)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    return {**counts, "built_at": now, "build_s": time.perf_counter() - t0, "targets": n,
            "bytes": path.stat().st_size}


_TS = COLUMNS.index("ts")


def _raw_row(rng: random.Random, ts: float, target: str, kind: str, ttft: float, outcome: str) -> tuple:
    row = dict.fromkeys(COLUMNS)
    row.update(ts=ts, target=target, provider=PROVIDER, model=target, kind=kind, location=LOCATION,
               outcome=outcome, connect_s=rng.uniform(0.001, 0.003), loop_lag_s=rng.uniform(0.0, 0.004))
    row["ttfb_s"] = row["connect_s"] + 0.02
    if outcome == "ok":
        t = ttft * rng.lognormvariate(0, 0.2)
        row.update(http_status=200 if kind == "rest" else 101, ttft_s=t, duration_s=t + 0.15,
                   input_tokens=15, output_tokens=8, request_id=f"req_{rng.getrandbits(64):016x}",
                   cost_usd=7e-6)
    else:
        status, code = FAIL_HTTP[outcome]
        row.update(http_status=status, error_code=code, error="synthetic failure",
                   duration_s=row["ttfb_s"] + rng.uniform(0, 0.2))
    return tuple(row[c] for c in COLUMNS)


def bench_db(work: Path, n: int, max_age_h: float, rebuild: bool) -> tuple[Path, dict]:
    """The cached database of N targets, built again when missing, too old or asked for."""
    path = work / f"status-bench-{n}.db"
    meta_path = work / f"status-bench-{n}.json"
    if not rebuild and path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if time.time() - meta["built_at"] < max_age_h * HOUR:
            print(f"reusing {path} (built {(time.time() - meta['built_at']) / 60:.0f} min ago)", flush=True)
            return path, {**meta, "reused": True}
    print(f"building {path} ...", flush=True)
    meta = build_db(path, n)
    meta_path.write_text(json.dumps(meta))
    print(f"built in {meta['build_s']:.0f} s: {meta['daily']:,} daily, {meta['hourly']:,} hourly rollup rows, "
          f"{meta['raw']:,} raw rows, {meta['bytes'] / 1e6:.0f} MB", flush=True)
    return path, {**meta, "reused": False}


# --- in process --------------------------------------------------------------------------------

def paths(n: int) -> list[tuple[str, str, dict]]:
    """(label, path, query) of each status URL measured; X is the middle target."""
    x = target_name(n // 2)
    return [("`/`", "/", {}),
            ("`/pages/2/`", "/pages/2/", {}),
            (f"`/targets/{x}/`", f"/targets/{x}/", {}),
            (f"`/embed/{x}/?kind=realtime&window=7d`", f"/embed/{x}/", {"kind": "realtime", "window": "7d"}),
            ("`/api/v1/status`", "/api/v1/status", {}),
            (f"`/api/v1/targets/{x}`", f"/api/v1/targets/{x}", {}),
            (f"`/api/v1/targets/{x}/history?grain=hour`", f"/api/v1/targets/{x}/history",
             {"kind": "rest", "grain": "hour"}),
            (f"`/api/v1/targets/{x}/history?grain=day`", f"/api/v1/targets/{x}/history",
             {"kind": "rest", "grain": "day"}),
            ("`/api/v1/incidents`", "/api/v1/incidents", {}),
            (f"`/badge/{x}.svg?window=30d`", f"/badge/{x}.svg", {"window": "30d"})]


def timed(fn, repeat: int) -> tuple[list[float], object]:  # noqa: ANN001
    """Seconds of each of ``repeat`` calls of ``fn``, and its last result."""
    out, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t0)
    return out, result


def _ms(values: list[float]) -> tuple[str, str]:
    return fmt(statistics.median(values) * 1000, 1), fmt(max(values) * 1000, 1)


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def in_process(db: Path, n: int, repeat: int, build_repeat: int) -> dict:
    """Build and render in this process: the worker's own code, without the IPC."""
    settings, series = Settings(), the_series(n)
    cold, _ = timed(lambda: SnapshotBuilder(db, settings, series).build(), 2)
    builder = SnapshotBuilder(db, settings, series)
    builder.build()
    warm, snapshot = timed(builder.build, build_repeat)
    worker.start(str(db), settings, series)
    worker._site.refresh()  # cold; the worker runs this in its build thread
    refresh, _ = timed(worker._site.refresh, build_repeat)
    rows = [["`SnapshotBuilder.build`, cold (new builder)", *_ms(cold), "", ""],
            ["`SnapshotBuilder.build`, warm (a steady refresh)", *_ms(warm), "", ""],
            ["`Site.refresh` (warm build + every index page and the status JSON, rendered and gzipped)",
             *_ms(refresh), "", ""]]
    answers = {}
    for label, path, query in paths(n):
        times, answer = timed(lambda p=path, q=query: worker.answer(p, q), repeat)
        assert answer.status == 200, (path, answer.status, answer.body[:200])
        gz = answer.gzipped if answer.gzipped is not None else gzip.compress(answer.body, GZIP_LEVEL)
        answers[label] = statistics.median(times)
        rows.append([f"answer {label}", *_ms(times), f"{len(answer.body) / 1000:,.1f}",
                     f"{len(gz) / 1000:,.1f}" + ("" if answer.gzipped is not None else " (not sent gzipped)")])
    incidents = len(snapshot["incidents"])
    ongoing = sum(i["ongoing"] for i in snapshot["incidents"])
    return {"rows": rows, "rss_mb": rss_mb(), "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "incidents": incidents, "ongoing": ongoing, "state": snapshot["state"],
            "cold_s": statistics.median(cold), "warm_s": statistics.median(warm),
            "refresh_s": statistics.median(refresh), "answers": answers}


# --- through the daemon ------------------------------------------------------------------------

def write_config(path: Path, n: int, sim_url: str, port: int, db: Path) -> None:
    lines = [f"storage: {{path: {db}}}", f'server: {{listen: "127.0.0.1:{port}"}}', f"location: {LOCATION}",
             "max_concurrent_probes: 2000", "defaults: {interval: 60s, timeout: 10s}", "providers:",
             f'  {PROVIDER}: {{type: openai, base_url: "{sim_url}/v1", api_key: sk-bench-000000000000, '
             "max_concurrent_probes: 1000}", "targets:"]
    lines += [f"  - {{name: {target_name(i)}, provider: {PROVIDER}, model: {target_name(i)}, probes: "
              "[{kind: rest}, {kind: realtime, modality: text, interval: 5m}]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


class Client:
    """One keep-alive HTTP/1.1 connection to the daemon, asking for gzip as browsers do."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, url: str) -> tuple[int, int, float]:
        """(status, body bytes, seconds) of one GET."""
        t0 = time.perf_counter()
        for attempt in range(2):
            try:
                self.conn.request("GET", url, headers={"Accept-Encoding": "gzip"})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, len(body), time.perf_counter() - t0
            except (HTTPException, ConnectionError):
                self.conn.close()
                self.conn = HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
                t0 = time.perf_counter()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def url_of(path: str, query: dict, bench: int | None = None) -> str:
    q = dict(query)
    if bench is not None:
        q["bench"] = str(bench)
    return path + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else "")


def worker_pid(daemon: int) -> int | None:
    """The daemon's status worker (a multiprocessing spawn child)."""
    children = []
    for task in Path(f"/proc/{daemon}/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for pid in children:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            return int(pid)
    return None


def scrape(url: str) -> dict:
    text = http("GET", url + "/metrics", timeout=60).decode()
    refresh = [float(v) for line in text.splitlines() if line.startswith("modelwatch_status_refresh_seconds ")
               for v in line.split()[1:2]]
    return {**parse_metrics(text), "refresh_s": refresh[0] if refresh else float("nan"), "t": time.time()}


class Load(threading.Thread):
    """Fetches status URLs ``rate`` times a second until ``end``, all cached or all uncached."""

    def __init__(self, port: int, n: int, rate: float, end: float, uncached: bool) -> None:
        super().__init__(daemon=True)
        self.client, self.n, self.rate, self.end, self.uncached = Client(port), n, rate, end, uncached
        self.lat: list[float] = []
        self.statuses: dict[int, int] = {}
        self.start()

    def run(self) -> None:
        rng = random.Random(3 + self.uncached)
        cached = [url_of(p, q) for _l, p, q in paths(self.n)]
        at, k = time.time(), 0
        while at < self.end and k < 1_000_000:
            k += 1
            if not self.uncached:
                url = rng.choice(cached)
            else:  # a badge, embed or target JSON of any target, with a query string never asked before
                t = target_name(rng.randrange(self.n))
                path, query = rng.choice([(f"/badge/{t}.svg", {"window": rng.choice(["24h", "7d", "30d"])}),
                                          (f"/embed/{t}/", {"kind": "realtime"}), (f"/api/v1/targets/{t}", {})])
                url = url_of(path, query, k)
            status, _size, took = self.client.get(url)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.lat.append(took)
            at = max(at + 1 / self.rate, time.time() - 1)  # no catching up in bursts after a slow answer
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
        self.client.close()


def phase_rows(db: Path, start: float, end: float) -> list[dict]:
    """Probe rows that started in [start, end] (and have ended by now)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT ts, kind, outcome, ttft_s, duration_s, request_id, loop_lag_s FROM probe_results "
            "WHERE ts >= ? AND ts <= ?", (start, end))]


def through_daemon(db_src: Path, work: Path, n: int, args: argparse.Namespace) -> dict:
    """Run the daemon on a copy of the bench database; measure latencies, then the quiet and load phases."""
    db = work / f"status-daemon-{n}.db"
    for stale in work.glob(db.name + "*"):
        stale.unlink()
    shutil.copyfile(db_src, db)
    scenario = work / "status-scenario.yaml"
    scenario.write_text(f"seed: 1\ndefault: {BEHAVIOUR}\n")
    sim, sim_url = start_sim(scenario, work / "status-sim.log")
    port = free_port()
    config = work / f"status-daemon-{n}.yaml"
    write_config(config, n, sim_url, port, db)
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    proc = None
    try:
        t_start = time.time()
        with open(work / f"status-daemon-{n}.log", "w") as err:
            proc = subprocess.Popen(modelwatch_cmd("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=err)
        wait_http(url + "/-/healthy", proc, timeout=120)
        out["healthy_s"] = time.time() - t_start
        deadline = time.time() + 120
        while time.time() < deadline:  # 503 until the worker's first (cold) refresh is done
            try:
                http("GET", url + "/api/v1/status", timeout=30)
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
                time.sleep(0.2)
        out["first_page_s"] = time.time() - t_start
        time.sleep(args.warmup)
        wpid = worker_pid(proc.pid)
        out["worker_rss_mb"] = rss_mb(wpid) if wpid else float("nan")
        out["daemon_rss_mb"] = rss_mb(proc.pid)
        out["latency"] = latencies(port, n, args.repeat)
        clear_sim_requests(sim_url)
        phases = {}
        for name in ("quiet", "load"):
            before = scrape(url)
            cpu0, wcpu0 = cpu_seconds(proc.pid), cpu_seconds(wpid) if wpid else 0.0
            start = time.time()
            end = start + args.phase
            load = [Load(port, n, args.rate / 2, end, uncached) for uncached in (False, True)] \
                if name == "load" else None
            time.sleep(max(0.0, end - time.time()))
            for thread in load or ():
                thread.join(60)
            cpu1, wcpu1 = cpu_seconds(proc.pid), cpu_seconds(wpid) if wpid else 0.0
            after = scrape(url)
            phases[name] = {"start": start, "end": end, "before": before, "after": after,
                            "cpu_s": cpu1 - cpu0, "worker_cpu_s": wcpu1 - wcpu0, "load": load}
        time.sleep(12)  # let the last probes of the load phase end and be written
        out["worker_rss_after_mb"] = rss_mb(wpid) if wpid else float("nan")
        log = sim_requests(sim_url)
        for name, ph in phases.items():
            rows = phase_rows(db, ph["start"], ph["end"] - 11)  # the probes that ran inside the phase
            ph["rows"] = rows
            ph["errors"] = mw_errors(rows, log)
        out["phases"] = phases
    finally:
        stop_process(proc)
        stop_process(sim)
    return out


def latencies(port: int, n: int, repeat: int) -> list[list[str]]:
    """Client latency of each path, uncached (never-seen query parameter) then cached."""
    client = Client(port)
    rows = []
    k = 0
    for label, path, query in paths(n):
        uncached, cached, size, failed = [], [], 0, {}
        for _ in range(repeat):
            k += 1
            status, size, took = client.get(url_of(path, query, 10_000_000 + k))
            if status != 200:
                failed[status] = failed.get(status, 0) + 1
            uncached.append(took)
            time.sleep(0.05)
        client.get(url_of(path, query))  # into the daemon's cache (unless it was already)
        for _ in range(repeat):
            status, size, took = client.get(url_of(path, query))
            if status != 200:
                failed[status] = failed.get(status, 0) + 1
            cached.append(took)
        rows.append([label, *_ms(uncached), fmt(pct(uncached, 90) * 1000, 1), *_ms(cached),
                     f"{size / 1000:,.1f}", ", ".join(f"{s}: {c}" for s, c in sorted(failed.items())) or "-"])
    client.close()
    return rows


def _q(values: list[float], q: float) -> str:
    return fmt(pct(values, q) * 1000, 1) if values else "-"


def stall_rows(phases: dict) -> list[list[str]]:
    rows = []
    for name, ph in phases.items():
        lags = [r["loop_lag_s"] for r in ph["rows"] if r["loop_lag_s"] is not None]
        err = ph["errors"]["ttft_err"]
        statuses: dict[int, int] = {}
        for thread in ph["load"] or ():
            for status, count in thread.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        traffic = "none" if ph["load"] is None else (
            f"{sum(statuses.values())} requests ({', '.join(f'{s}: {c}' for s, c in sorted(statuses.items()))})")
        rows.append([name, traffic, f"{len(ph['rows'])}",
                     lag_quantile_ms(ph["before"], ph["after"], 0.5), lag_quantile_ms(ph["before"], ph["after"], 0.99),
                     lag_quantile_ms(ph["before"], ph["after"], 1.0),
                     _q(lags, 50), _q(lags, 99), fmt(max(lags) * 1000, 1) if lags else "-",
                     fmt(err["p50"], 2), fmt(err["p99"], 2), fmt(err["max"], 2),
                     fmt(ph["cpu_s"] / (ph["end"] - ph["start"]) * 100, 1),
                     fmt(ph["worker_cpu_s"] / (ph["end"] - ph["start"]) * 100, 1)])
    return rows


def load_rows(phases: dict) -> list[list[str]]:
    return [["uncached" if t.uncached else "cached", str(len(t.lat)), _q(t.lat, 50), _q(t.lat, 90), _q(t.lat, 99),
             fmt(max(t.lat) * 1000, 1) if t.lat else "-",
             ", ".join(f"{s}: {c}" for s, c in sorted(t.statuses.items()))] for t in phases["load"]["load"]]


# --- output ------------------------------------------------------------------------------------

def render(args: argparse.Namespace, meta: dict, inproc: dict, daemon: dict | None) -> str:
    n = args.targets
    parts = [
        f"The database was built directly by the script (plain `executemany` into the schema `open_db` "
        f"creates; no daemon, no `write_batch`): {n:,} targets × 2 probes (rest, realtime) with "
        f"{meta['daily']:,} daily rollup rows (90 days; 1,440 rest and 288 realtime probes a day, 0.5–4 % "
        f"failures of six outcomes, outage days of 5–40 % on about 1 day in 60, TTFT and duration histograms "
        f"of 10–20 buckets), {meta['hourly']:,} hourly rollup rows (the last 48 h) and {meta['raw']:,} raw "
        f"rows (the last 2 h: rest every 60 s, realtime every 5 min, 2 % scattered failures, failure streaks "
        f"on 3.5 % of the probes); {meta['bytes'] / 1e6:,.0f} MB, built in {meta['build_s']:.0f} s. "
        f"The snapshot held {inproc['incidents']} incidents ({inproc['ongoing']} ongoing).",
        f"**In process** (the worker's own code in one process, `time.perf_counter`; median and max of "
        f"{args.repeat} calls; builds and refreshes {args.build_repeat}, cold 2). \"answer\" is "
        "`modelwatch.status.worker.answer(path, query)`, what the worker runs per uncached request: the "
        "site's answer plus its gzip when over 2 kB. Process RSS after all of it: "
        f"{inproc['rss_mb']:.0f} MB (peak {inproc['maxrss_mb']:.0f} MB).",
        markdown_table(["what", "median ms", "max ms", "body kB", "gzipped kB"], inproc["rows"]),
    ]
    if daemon is not None:
        ph = daemon["phases"]
        probes_s = n / 60 + n / 300
        parts += [
            f"**Through the daemon**: `modelwatch run` with the same {n:,} targets × 2 probes (rest every "
            f"60 s, realtime every 5 min: {probes_s:.0f} probes/s) against `modelwatch sim` on 127.0.0.1, "
            f"storage a copy of that database, `status.refresh` 15 s. Healthy after "
            f"{daemon['healthy_s']:.1f} s, first status answer (the worker's cold refresh) after "
            f"{daemon['first_page_s']:.1f} s. Worker RSS {daemon['worker_rss_mb']:.0f} MB "
            f"({daemon['worker_rss_after_mb']:.0f} MB at the end), daemon {daemon['daemon_rss_mb']:.0f} MB; "
            f"the worker's last refresh took {ph['load']['after']['refresh_s'] * 1000:.0f} ms "
            "(`modelwatch_status_refresh_seconds`). Client latency of one GET on a keep-alive connection, "
            "`Accept-Encoding: gzip`, body read; uncached = a query parameter the daemon has not seen, so "
            "the request goes to the worker as the first one after a refresh does (IPC + answer; it waits "
            f"when a refresh is running); cached = the same URL again. {args.repeat} of each:",
            markdown_table(["path", "uncached median ms", "uncached max ms", "uncached p90 ms", "cached median ms",
                            "cached max ms", "bytes sent kB", "not 200"], daemon["latency"]),
            f"**Does status traffic stall probing?** Two phases of {args.phase:g} s one after the other: "
            f"quiet (no status request) and load ({args.rate:g} requests/s from two clients: half of them "
            "cached pages, badges and JSON of the table above, half a badge, embed or target JSON of a "
            "random target with a never-seen query string; each client waits for its answer, so a slow "
            "answer lowers the rate). Loop lag from the daemon's "
            "`modelwatch_event_loop_lag_seconds` histogram between scrapes at both ends of the phase (bucket "
            "upper bounds); `loop_lag_s` and the TTFT error (`ttft_s` − the simulator's `actual_ttft_s`) of "
            "the probes that started in the phase; CPU of the daemon and of its worker process in % of a core:",
            markdown_table(["phase", "status traffic", "probes", "loop lag p50 ms", "p99 ms", "max ms",
                            "`loop_lag_s` p50 ms", "p99 ms", "max ms", "TTFT error p50 ms", "p99 ms", "max ms",
                            "daemon CPU %", "worker CPU %"], stall_rows(ph)),
            "Client latency during the load phase:",
            markdown_table(["requests", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "statuses"], load_rows(ph)),
        ]
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=9, help="timed calls (and requests) of each case")
    p.add_argument("--build-repeat", type=int, default=3, help="timed warm builds and refreshes (cold: 2)")
    p.add_argument("--work", type=Path, default=Path("/tmp/modelwatch-status-bench"),
                   help="where the database is kept between runs")
    p.add_argument("--max-age-h", type=float, default=6.0, help="rebuild a cached database older than this")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--skip-daemon", action="store_true", help="in-process figures only")
    p.add_argument("--warmup", type=float, default=20.0, help="s after the first status answer")
    p.add_argument("--phase", type=float, default=60.0, help="s of each of the quiet and load phases")
    p.add_argument("--rate", type=float, default=20.0, help="status requests/s in the load phase")
    p.add_argument("--out", type=Path, help="also write the Markdown to this file")
    p.add_argument("--write", action="store_true", help=f"replace the section in {DOCS}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    db, meta = bench_db(args.work, args.targets, args.max_age_h, args.rebuild)
    print("in process ...", flush=True)
    inproc = in_process(db, args.targets, args.repeat, args.build_repeat)
    print(f"  cold build {inproc['cold_s']:.2f} s, warm {inproc['warm_s']:.2f} s, refresh {inproc['refresh_s']:.2f} s",
          flush=True)
    daemon = None
    if not args.skip_daemon:
        print("through the daemon ...", flush=True)
        daemon = through_daemon(db, args.work, args.targets, args)
    env = (f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {platform.python_version()}, "
           f"SQLite {sqlite3.sqlite_version}; {code_version()}")
    command = "python bench/status_page.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = f"Run: {env}.  \nCommand: `{command.strip()}`\n\n{render(args, meta, inproc, daemon)}"
    print("\n" + body)
    if args.out:
        args.out.write_text(body + "\n")
    if args.write:
        replace_section(DOCS, "status-page", body)
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
