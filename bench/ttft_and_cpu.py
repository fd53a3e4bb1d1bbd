"""modelwatch vs blackbox_exporter: CPU per probe and timing error, side by side.

One run: start ``modelwatch sim`` (its own process), then for each N in
``--targets`` run two phases against it, one after the other:

modelwatch
    ``modelwatch run`` with N targets (model tNNNN each) at the interval for N.
    After ``--warmup`` s, CPU time (utime+stime from /proc/PID/stat, all threads)
    is sampled at the start and end of a ``--window`` s window. Probes completed
    in the window (ts + duration_s inside it) come from its SQLite table. TTFT
    and duration errors join rows with the simulator's request log by request
    id: error = measured - simulator's actual (and - injected) value. No /metrics
    scrape happens in the window unless ``--scrape-every`` asks for them. Right
    after the window ``--scrape-burst`` scrapes 0.5 s apart are timed (daemon
    CPU per scrape: CPU over the burst minus the window's rate, divided by
    their number; wall time; size; TTFT error of the probes that started
    during a scrape, and of those whose first token came during one); the first
    one's loop-lag histogram, covering the whole run, gives the loop lag p99.

blackbox_exporter
    ``prometheus-blackbox-exporter`` with one ``http`` module per target (POST of
    a streaming chat request for model tNNNN). A separate load generator
    (``blackbox_loadgen.py``, not counted) calls GET /probe for the N targets at
    the same interval and spread. Blackbox's CPU per probe includes serving
    /probe and rendering its answer, as modelwatch's includes its scheduler.
    Blackbox has no request id and no TTFT: its probe_duration_seconds is
    joined with the simulator's actual_duration_s per target in order (target
    i = model tNNNN; one probe of a target at a time, so the k-th request of a
    model in the simulator log is the k-th probe of that target).

Intervals: 1 s for N=1, 10 s otherwise (``--interval`` overrides), i.e.
1, 10 and 100 probes/s for N = 1, 100, 1000.

``--kind realtime`` probes OpenAI Realtime sessions over WebSocket instead
(``--modality text`` or ``audio``; scenario REALTIME below), modelwatch only:
blackbox_exporter has no prober that can hold a Realtime session and time its
first delta. The join and the errors are the same, by the 101's x-request-id.

``--protocol P[,P...]`` picks the wire protocol(s) of the modelwatch phase: ``chat``
(OpenAI Chat Completions, the default, = ``--kind rest``), ``responses`` (the
Responses API), ``anthropic`` (Messages), ``gemini`` (Gemini REST), ``realtime``
(OpenAI Realtime, = ``--kind realtime``), ``gemini-live`` (Gemini Live) and
``models`` (the free model-list check: no TTFT, only the duration joins). REST
protocols get scenario BEHAVIOUR, WebSocket ones REALTIME (``--modality`` applies
to both WebSocket protocols). Each protocol's simulator entry is joined on the id
its probe records: x-request-id (chat, responses, models), request-id
(anthropic), the chunks' responseId (gemini), setupComplete.sessionId
(gemini-live). A single ``chat`` or ``realtime`` run is exactly the ``--kind``
run (blackbox_exporter included for chat, same ``--write`` table); anything
else (a new protocol, several, or ``--runs`` > 1) is modelwatch only, gets its
own simulator per protocol and run, and ``--write`` replaces the "by protocol"
table. ``--runs R`` repeats the list R times, every other pass in reverse order,
so that drift of the machine's speed falls on every protocol alike.

Example:  .venv/bin/python bench/ttft_and_cpu.py --write
          .venv/bin/python bench/ttft_and_cpu.py --targets 1000 --window 20 --only modelwatch
          .venv/bin/python bench/ttft_and_cpu.py --kind realtime --modality audio --targets 100
          .venv/bin/python bench/ttft_and_cpu.py --protocol chat,anthropic,gemini-live --runs 2 --targets 100
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLK_TCK,
    clear_sim_requests,
    code_version,
    src_fingerprint,
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
    sleep_until,
    start_sim,
    stop_process,
    summary_ms,
    wait_http,
)

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
KEY = "sk-bench-000000000000"
BEHAVIOUR = {"ttfb_ms": 20, "ttft_ms": 200, "jitter_ms": 50, "inter_token_ms": 10, "tokens": 8}
# Realtime: session.created at 50 ms; first delta 250 +/- 50 ms after response.create; 8 text (or
# transcript) deltas 20 ms apart; audio modality: 600 ms of audio in 100 ms chunks, paced in real time.
REALTIME = {"ttfb_ms": 50, "ttft_ms": 250, "jitter_ms": 50, "inter_token_ms": 20, "tokens": 8,
            "audio_ms": 600, "audio_chunk_ms": 100}
# --protocol: provider type, base_url path on the simulator, the probe, which scenario block
# (BEHAVIOUR for "rest", REALTIME for "realtime"), and what it is, for the tables. "{modality}" is
# filled in for the WebSocket protocols.
PROTOCOLS = {
    "chat": ("openai", "/v1", "{kind: rest}", "rest", "OpenAI Chat Completions, SSE"),
    "responses": ("openai", "/v1", "{kind: rest, api: responses}", "rest", "OpenAI Responses, SSE"),
    "anthropic": ("anthropic", "/v1", "{kind: rest}", "rest", "Anthropic Messages, SSE"),
    "gemini": ("gemini", "/v1beta", "{kind: rest}", "rest", "Gemini streamGenerateContent, SSE"),
    "realtime": ("openai", "/v1", "{kind: realtime, modality: {modality}}", "realtime",
                 "OpenAI Realtime, WebSocket"),
    "gemini-live": ("gemini", "/v1beta", "{kind: realtime, modality: {modality}}", "realtime",
                    "Gemini Live, WebSocket"),
    "models": ("openai", "/v1", "{kind: models}", "rest", "GET /v1/models (OpenAI list)"),
}
TEST_PATTERN = "pytest"  # --wait-for-tests: processes whose command line matches this (pgrep -f)


def interval_for(n: int, override: float | None) -> float:
    """Seconds between two probes of one target."""
    if override:
        return override
    return 1.0 if n == 1 else 10.0


def target_name(i: int) -> str:
    """Name (and model) of target i, 0-based: t0001, t0002, ..."""
    return f"t{i + 1:04d}"


def write_scenario(path: Path, kind: str = "rest", listed: int = 0) -> None:
    """Every model name gets the bench behaviour (``default:``) of the probe kind.

    ``listed`` > 0 also names models t0001..tNNNN, so that the simulator's model list (which holds
    the scenario's names only) has every target in it, as ``kind: models`` probes require.
    """
    inner = ", ".join(f"{k}: {v}" for k, v in (REALTIME if kind == "realtime" else BEHAVIOUR).items())
    text = f"seed: 1\ndefault: {{{inner}}}\n"
    if listed:
        text += "models:\n" + "".join(f"  {target_name(i)}: {{{inner}}}\n" for i in range(listed))
    path.write_text(text)


def probe_spec(kind: str = "rest", modality: str | None = None, protocol: str | None = None) -> str:
    """The ``probes:`` entry of every bench target."""
    if protocol is not None:
        return PROTOCOLS[protocol][2].replace("{modality}", modality or "text")
    return f"{{kind: realtime, modality: {modality or 'text'}}}" if kind == "realtime" else "{kind: rest}"


def write_mw_config(path: Path, n: int, interval: float, sim_url: str, port: int, db: Path,
                    probe: str = "{kind: rest}", provider: tuple[str, str] = ("openai", "/v1")) -> None:
    """A modelwatch config with N targets on the simulator, each with one ``probe``.

    ``provider`` is the provider type and the path of its ``base_url`` on the simulator.
    """
    ptype, path_prefix = provider
    lines = [
        f"storage: {{path: {db}}}",
        f'server: {{listen: "127.0.0.1:{port}"}}',
        "max_concurrent_probes: 2000",
        f"defaults: {{interval: {interval:g}s, timeout: 10s}}",
        "providers:",
        f'  sim: {{type: {ptype}, base_url: "{sim_url}{path_prefix}", api_key: {KEY}, '
        'max_concurrent_probes: 1000}',
        "targets:",
    ]
    lines += [f"  - {{name: {target_name(i)}, provider: sim, model: {target_name(i)}, probes: [{probe}]}}"
              for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def write_bb_config(path: Path, n: int) -> None:
    """A blackbox_exporter config with one POST-a-streaming-chat module per target."""
    out = ["modules:"]
    for i in range(n):
        body = json.dumps({"model": target_name(i), "messages": [{"role": "user", "content": "Say OK"}],
                           "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 16},
                          separators=(",", ":"))
        out += [f"  chat-{target_name(i)}:", "    prober: http", "    timeout: 10s", "    http:",
                "      method: POST", "      headers:", f"        Authorization: Bearer {KEY}",
                "        Content-Type: application/json", f"      body: '{body}'",
                "      valid_status_codes: [200]"]
    path.write_text("\n".join(out) + "\n")


def parse_metrics(text: str) -> dict:
    """Probe count and the loop-lag histogram (cumulative buckets) from /metrics."""
    probes = sum(float(v) for v in re.findall(r"^modelwatch_probes_total\{[^}]*\} (\S+)$", text, re.MULTILINE))
    buckets = {float(le): float(v) for le, v in re.findall(
        r'^modelwatch_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.MULTILINE)}
    return {"probes": probes, "lag_buckets": buckets}


def lag_quantile_ms(before: dict, after: dict, q: float) -> str:
    """'<= X': upper bound (ms) of the loop-lag bucket holding quantile q between two scrapes."""
    diff = {le: after["lag_buckets"][le] - before["lag_buckets"].get(le, 0.0) for le in after["lag_buckets"]}
    total = diff.get(float("inf"), 0.0)
    if total <= 0:
        return "-"
    for le in sorted(diff):
        if diff[le] >= q * total:
            return f"<= {le * 1000:g}" if le != float("inf") else "> 2500"
    return "-"


def start_daemon(config: Path, log: Path, args: argparse.Namespace, profile: Path | None) -> subprocess.Popen:
    """``modelwatch run -c CONFIG``, optionally under cProfile (distorts CPU figures)."""
    cmd = modelwatch_cmd("run", "-c", str(config))
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "modelwatch", "run", "-c", str(config)]
    env = {**os.environ, "MODELWATCH_LOOP": args.loop} if args.loop else None
    with open(log, "w") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)


def start_py_spy(exe: str | None, pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """Sample the daemon with py-spy (collapsed stacks, active threads only) for ``seconds``."""
    if not exe:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", f"{max(1, int(seconds))}", "-r", "100",
                             "--nonblocking", "--threads", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Scraper(threading.Thread):
    """Plays Prometheus during the window: GET /metrics at start + every/2 + k * every (if every > 0)."""

    def __init__(self, url: str, start: float, end: float, every: float | None) -> None:
        super().__init__(daemon=True)
        self.url, self.start_at, self.end, self.every, self.done = url, start, end, every, 0
        if every:
            self.start()

    def run(self) -> None:
        """Scrape on schedule until the window ends (bounded count)."""
        at = self.start_at + self.every / 2
        for _ in range(10_000):
            if at >= self.end:
                break
            sleep_until(at)
            http("GET", self.url + "/metrics", timeout=60)
            self.done += 1
            at += self.every

    def join(self, timeout: float | None = 60) -> None:
        """Wait (bounded) for the last scrape; a no-op if scraping was off."""
        if self.is_alive():
            super().join(timeout)


def scrape(pid: int, url: str) -> dict:
    """Scrape /metrics once; parsed metrics plus the wall span and daemon CPU s it took."""
    cpu0, t0 = cpu_seconds(pid), time.time()
    text = http("GET", url + "/metrics", timeout=60).decode()
    t1, cpu1 = time.time(), cpu_seconds(pid)
    return {**parse_metrics(text), "t0": t0, "t1": t1, "cpu_s": cpu1 - cpu0, "bytes": len(text)}


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle or iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def _ancestors() -> set[int]:
    """This process and its ancestors (a test run that started the bench must not block it)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def tests_running() -> list[int]:
    """PIDs of other processes whose command line matches TEST_PATTERN (``pgrep -f``)."""
    try:
        out = subprocess.run(["pgrep", "-f", TEST_PATTERN], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    mine = _ancestors()
    return [int(p) for p in out.split() if p.isdigit() and int(p) not in mine]


def wait_for_tests(poll: float = 10.0, limit: float = 600.0) -> dict:
    """Wait until no test run is going (poll every ``poll`` s, at most ``limit`` s).

    Returns the seconds waited (0 if no test ran) and whether the wait ran out with tests still running.
    """
    t0 = time.monotonic()
    while tests_running():
        waited = time.monotonic() - t0
        if waited >= limit:
            print(f"  tests still running after {waited:.0f} s: measuring anyway", flush=True)
            return {"waited_s": waited, "gave_up": True}
        print(f"  tests running, waiting ({waited:.0f} s so far) ...", flush=True)
        time.sleep(poll)
    waited = time.monotonic() - t0
    return {"waited_s": waited if waited >= poll else 0.0, "gave_up": False}


def sleep_watching(end: float, watch: bool, every: float = 5.0) -> bool:
    """Sleep until ``end`` (wall clock); with ``watch``, look for test runs every ``every`` s.

    True if a test run was seen during the sleep.
    """
    seen = False
    while watch and time.time() + every < end:
        seen = seen or bool(tests_running())
        sleep_until(time.time() + every)
    seen = (watch and bool(tests_running())) or seen
    sleep_until(end)
    return seen


def run_modelwatch(n: int, interval: float, sim: subprocess.Popen, sim_url: str, work: Path,
                   args: argparse.Namespace, protocol: str | None = None, tag: str = "") -> dict:
    """One modelwatch phase: warm up, measure the window, then a burst of timed scrapes, then stop.

    ``protocol`` (a PROTOCOLS key) sets the provider and probe; None: ``args.kind``/``args.modality``
    on the OpenAI provider. ``tag`` goes into the file names (mw-TAG-N.*).
    """
    stem = f"mw-{tag}-{n}" if tag else f"mw-{n}"
    port, db = free_port(), work / f"{stem}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    provider = PROTOCOLS[protocol][:2] if protocol else ("openai", "/v1")
    write_mw_config(work / f"{stem}.yaml", n, interval, sim_url, port, db,
                    probe_spec(args.kind, args.modality, protocol), provider)
    clear_sim_requests(sim_url)
    profile = work / f"{stem}.prof" if args.profile else None
    proc = start_daemon(work / f"{stem}.yaml", work / f"{stem}.log", args, profile)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/healthy", proc)
        start = time.time() + args.warmup
        end = start + args.window
        scraper = Scraper(url, start, end, args.scrape_every)
        sleep_until(start)
        spy = start_py_spy(args.py_spy, proc.pid, args.window, work / f"{stem}.py-spy.txt")
        cpu0, sim0, all0 = cpu_seconds(proc.pid), cpu_seconds(sim.pid), machine_busy_seconds()
        tests_seen = sleep_watching(end, args.wait_for_tests)
        cpu1, sim1, all1 = cpu_seconds(proc.pid), cpu_seconds(sim.pid), machine_busy_seconds()
        scraper.join()
        if spy is not None:
            spy.wait(30)
        burst, cpu_b0, tb0 = [], cpu_seconds(proc.pid), time.time()
        for _ in range(args.scrape_burst):  # the first one's loop-lag histogram covers the whole run
            burst.append(scrape(proc.pid, url))
            sleep_until(burst[-1]["t0"] + 0.5)
        cpu_b1, tb1 = cpu_seconds(proc.pid), time.time()
    finally:
        stop_process(proc)
    log = sim_requests(sim_url)
    (work / f"{stem}-sim.json").write_text(json.dumps(log))
    busy = (cpu1 - cpu0) / args.window
    first, last = burst[0], burst[-1]
    span = tb1 - tb0
    spans = [(b["t0"], b["t1"]) for b in burst]
    during = mw_errors(read_rows_first_token(db, spans, log), log)
    started = mw_errors(read_rows_started(db, spans), log)
    return {"tool": "modelwatch", "probe": probe_label(args, protocol), "protocol": protocol, "n": n,
            "interval": interval, "cpu_s": cpu1 - cpu0, "sim_cpu_s": sim1 - sim0,
            "other_cpu_s": (all1 - all0) - (cpu1 - cpu0) - (sim1 - sim0), "tests_in_window": tests_seen,
            "window": args.window, "lag_p99": lag_quantile_ms({"lag_buckets": {}}, first, 0.99),
            "lag_buckets": {f"{le:g}": v for le, v in sorted(first["lag_buckets"].items())},
            "scrape": {"count": len(burst), "cpu_s": max(0.0, (cpu_b1 - cpu_b0 - busy * span) / len(burst)),
                       "wall_s": sorted(b["t1"] - b["t0"] for b in burst)[len(burst) // 2],
                       "bytes": first["bytes"], "lag_p99_after": lag_quantile_ms(first, last, 0.99),
                       "lag_max_after": lag_quantile_ms(first, last, 1.0), "ttft_err": during["ttft_err"],
                       "ttft_err_started": started["ttft_err"]},
            "scrapes_in_window": scraper.done, **mw_errors(read_rows(db, start, end), log)}


def read_rows(db: Path, start: float, end: float) -> list[dict]:
    """probe_results rows that completed inside [start, end]."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT ts, outcome, ttft_s, duration_s, request_id FROM probe_results "
                            "WHERE ts + duration_s >= ? AND ts + duration_s <= ?", (start, end)).fetchall()
    return [dict(r) for r in rows]


def read_rows_started(db: Path, spans: list[tuple[float, float]]) -> list[dict]:
    """probe_results rows of the probes that started inside one of ``spans`` (wall clock)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT ts, outcome, ttft_s, duration_s, request_id FROM probe_results "
                            "WHERE ts >= ? AND ts <= ?", (spans[0][0], spans[-1][1])).fetchall()
    return [dict(r) for r in rows if any(a <= r["ts"] <= b for a, b in spans)]


def read_rows_first_token(db: Path, spans: list[tuple[float, float]], log: list[dict]) -> list[dict]:
    """probe_results rows whose first token the simulator sent inside one of ``spans`` (wall clock).

    The send time is the probe's start (``ts``) plus the simulator's ``actual_ttft_s``: the time the
    daemon read the token would miss exactly the probes a blocked loop read late.
    """
    actual = {r["request_id"]: r["actual_ttft_s"] for r in log if r.get("actual_ttft_s") is not None}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT ts, outcome, ttft_s, duration_s, request_id FROM probe_results "
                            "WHERE ts >= ?", (spans[0][0] - 30,)).fetchall()
    return [dict(r) for r in rows if r["request_id"] in actual
            and any(a <= r["ts"] + actual[r["request_id"]] <= b for a, b in spans)]


def summary(values_s: list[float]) -> dict[str, float]:
    """summary_ms() plus the p95."""
    return {**summary_ms(values_s), "p95": pct(values_s, 95) * 1000}


def mw_errors(rows: list[dict], log: list[dict]) -> dict:
    """Counts and TTFT/duration errors (measured - simulator) of modelwatch rows.

    A row is joined when it is ok and the simulator's log has its request id; the TTFT error needs a
    TTFT on both sides (``kind: models`` has none: only its duration joins).
    """
    by_id = {r["request_id"]: r for r in log}
    ttft_act, ttft_inj, dur = [], [], []
    for row in rows:
        sim = by_id.get(row["request_id"])
        if row["outcome"] != "ok" or sim is None or sim["actual_duration_s"] is None:
            continue
        if row["ttft_s"] is not None and sim["actual_ttft_s"] is not None:
            ttft_act.append(row["ttft_s"] - sim["actual_ttft_s"])
            ttft_inj.append(row["ttft_s"] - sim["injected_ttft_s"])
        dur.append(row["duration_s"] - sim["actual_duration_s"])
    return {"completed": len(rows), "ok": sum(r["outcome"] == "ok" for r in rows), "joined": len(dur),
            "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in sorted({r["outcome"] for r in rows})},
            "ttft_err": summary(ttft_act), "ttft_err_injected": summary(ttft_inj),
            "duration_err": summary(dur)}


def run_blackbox(n: int, interval: float, sim: subprocess.Popen, sim_url: str, work: Path,
                 args: argparse.Namespace) -> dict:
    """One blackbox phase: exporter + separate load generator, window CPU, join with the sim log."""
    port = free_port()
    write_bb_config(work / f"bb-{n}.yml", n)
    clear_sim_requests(sim_url)
    with open(work / f"bb-{n}.log", "w") as err:
        bb = subprocess.Popen([BLACKBOX, f"--config.file={work / f'bb-{n}.yml'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=err)
    gen = None
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy", bb)
        first = time.time() + 0.5
        start, end = first + args.warmup, first + args.warmup + args.window
        out = work / f"bb-{n}.json"
        gen = subprocess.Popen([sys.executable, str(HERE / "blackbox_loadgen.py"),
                                "--blackbox", f"http://127.0.0.1:{port}",
                                "--target", f"{sim_url}/v1/chat/completions", "--targets", str(n),
                                "--interval", f"{interval:g}", "--start", f"{first:.6f}",
                                "--duration", f"{args.warmup + args.window + 1:g}", "--out", str(out)])
        sleep_until(start)
        cpu0, sim0 = cpu_seconds(bb.pid), cpu_seconds(sim.pid)
        sleep_until(end)
        cpu1, sim1 = cpu_seconds(bb.pid), cpu_seconds(sim.pid)
        gen.wait(interval + 60)
    finally:
        stop_process(gen)
        stop_process(bb)
    everything = json.loads(out.read_text())
    log = sim_requests(sim_url)
    (work / f"bb-{n}-sim.json").write_text(json.dumps(log))
    records = [r for r in everything if start <= r["done"] <= end]
    return {"tool": "blackbox_exporter", "n": n, "interval": interval, "cpu_s": cpu1 - cpu0,
            "sim_cpu_s": sim1 - sim0, "window": args.window, **bb_errors(records, everything, log, n)}


def bb_errors(window: list[dict], everything: list[dict], log: list[dict], n: int) -> dict:
    """Join blackbox probes to simulator requests per target in order; duration errors."""
    sim_by_model: dict[str, list[dict]] = {}
    for r in log:
        sim_by_model.setdefault(r["model"], []).append(r)
    match: dict[tuple[int, float], dict] = {}
    mismatched = 0
    for i in range(n):
        mine = sorted((r for r in everything if r["target"] == i), key=lambda r: r["sent"])
        theirs = sim_by_model.get(target_name(i), [])
        if len(mine) != len(theirs):
            mismatched += 1
            continue
        match.update({(i, r["sent"]): s for r, s in zip(mine, theirs)})
    dur, first_byte = [], []
    for r in window:
        sim = match.get((r["target"], r["sent"]))
        if r.get("probe_success") != 1 or sim is None:
            continue
        dur.append(r["probe_duration_seconds"] - sim["actual_duration_s"])
        ph = r["phases"]
        first_byte.append(ph["resolve"] + ph["connect"] + ph["tls"] + ph["processing"] - sim["actual_ttft_s"])
    return {"completed": len(window), "ok": sum(r.get("probe_success") == 1 for r in window),
            "joined": len(dur), "unmatched_targets": mismatched, "duration_err": summary_ms(dur),
            "first_byte_vs_ttft": summary_ms(first_byte)}


def probe_label(args: argparse.Namespace, protocol: str | None = None) -> str:
    """'rest', 'realtime text' or 'realtime audio'; with a protocol: its name (plus the modality)."""
    if protocol is not None:
        return f"{protocol} {args.modality}" if PROTOCOLS[protocol][3] == "realtime" else protocol
    return f"realtime {args.modality}" if args.kind == "realtime" else "rest"


def tool_label(r: dict) -> str:
    """Tool name (with the probe if not rest), plus the /metrics scrapes made inside the window, if any."""
    name = r["tool"] if r.get("probe", "rest") == "rest" else f"{r['tool']}, {r['probe']}"
    k = r.get("scrapes_in_window")
    return f"{name} + {k} scrapes" if k else name


def cpu_rows(results: list[dict]) -> list[list[str]]:
    """Rows of the CPU table."""
    rows = []
    for r in results:
        per_probe = r["cpu_s"] * 1000 / r["completed"] if r["completed"] else float("nan")
        rows.append([str(r["n"]), f"{r['interval']:g} s", fmt(r["n"] / r["interval"], 1), tool_label(r),
                     f"{r['completed']} ({r['ok']} ok)", fmt(per_probe, 3),
                     fmt(r["cpu_s"] / r["window"] * 100, 1),
                     fmt(r["sim_cpu_s"] * 1000 / r["completed"] if r["completed"] else float("nan"), 2)])
    return rows


def _trio(s: dict) -> str:
    """'p50 / p99 / max' of a summary_ms() dict."""
    return f"{fmt(s['p50'])} / {fmt(s['p99'])} / {fmt(s['max'])}"


def error_rows(results: list[dict]) -> list[list[str]]:
    """Rows of the timing-error table."""
    rows = []
    for r in results:
        if r["tool"] == "modelwatch":
            ttft, inj, lag = _trio(r["ttft_err"]), _trio(r["ttft_err_injected"]), r["lag_p99"]
        else:
            ttft, inj, lag = "no TTFT", "no TTFT", "n/a"
        rows.append([str(r["n"]), tool_label(r), str(r["joined"]), ttft, inj, _trio(r["duration_err"]), lag])
    return rows


def scrape_rows(results: list[dict]) -> list[list[str]]:
    """Rows of the /metrics scrape table (modelwatch only)."""
    rows = []
    for r in results:
        if "scrape" in r:
            s = r["scrape"]
            rows.append([str(r["n"]), fmt(s["bytes"] / 1000, 0), fmt(s["cpu_s"] * 1000, 1),
                         fmt(s["wall_s"] * 1000, 0), f"{s['lag_p99_after']} / {s['lag_max_after']}",
                         f"{s['ttft_err_started']['n']}: {_trio(s['ttft_err_started'])}",
                         f"{s['ttft_err']['n']}: {_trio(s['ttft_err'])}"])
    return rows


def render(results: list[dict]) -> str:
    """The Markdown tables."""
    cpu = markdown_table(["targets", "interval", "probes/s", "tool", "probes in window", "CPU ms/probe",
                          "CPU % of a core", "simulator CPU ms/request"],
                         cpu_rows(results))
    err = markdown_table(["targets", "tool", "probes joined", "TTFT error vs sim actual, ms p50 / p99 / max",
                          "TTFT error vs injected, ms p50 / p99 / max",
                          "duration error vs sim actual, ms p50 / p99 / max", "loop lag p99, ms"],
                         error_rows(results))
    tables = f"{cpu}\n\n{err}"
    rows = scrape_rows(results) if all(r.get("probe", "rest") == "rest" for r in results) else []
    if rows:
        tables += "\n\n" + markdown_table(
            ["targets", "/metrics size, kB", "daemon CPU ms per scrape", "wall ms (median)",
             "loop lag p99 / max during the scrapes, ms",
             "probes started during a scrape: n: TTFT error ms p50 / p99 / max",
             "probes whose first token came during a scrape: n: TTFT error ms p50 / p99 / max"], rows)
    return tables


def _spread(values: list[float], digits: int = 2) -> str:
    """'lo–hi' of some figures ('x' when they agree at this precision; '-' for none)."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    lo, hi = fmt(min(values), digits), fmt(max(values), digits)
    return lo if lo == hi else f"{lo}–{hi}"


def _per_probe_ms(r: dict, key: str = "cpu_s") -> float:
    """CPU ms per probe completed in the window (NaN for none)."""
    return r[key] * 1000 / r["completed"] if r["completed"] else float("nan")


def _four(s: dict) -> str:
    """'p50 / p95 / p99 / max' of a summary() dict."""
    return f"{fmt(s['p50'])} / {fmt(s['p95'])} / {fmt(s['p99'])} / {fmt(s['max'])}"


def render_by_protocol(results: list[dict], args: argparse.Namespace) -> str:
    """The by-protocol tables: one line per protocol (every run's figure or their range), then every run."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in sorted(results, key=lambda r: r["run"]):
        groups.setdefault((r["protocol"], r["n"]), []).append(r)
    several_n = len(args.targets) > 1
    head = (["targets"] if several_n else []) + [
        "protocol", "wire", "CPU ms/probe, run by run", "simulator CPU ms/request, run by run",
        "TTFT error vs sim actual p50, ms", "p95, ms", "p99, ms"]
    rows, detail = [], []
    for protocol in args.protocols:
        for n in args.targets:
            runs = groups.get((protocol, n), [])
            if not runs:
                continue
            lead = [str(n)] if several_n else []
            no_ttft = all(not r["ttft_err"]["n"] for r in runs)
            ttft = ["no TTFT"] * 3 if no_ttft else [_spread([r["ttft_err"][q] for r in runs]) for q in
                                                      ("p50", "p95", "p99")]
            rows.append(lead + [runs[0]["probe"], PROTOCOLS[protocol][4],
                                " / ".join(fmt(_per_probe_ms(r), 3) for r in runs),
                                " / ".join(fmt(_per_probe_ms(r, "sim_cpu_s"), 2) for r in runs), *ttft])
            for r in runs:
                detail.append(lead + [
                    r["probe"], str(r["run"]), f"{r['completed']} ({r['ok']} ok)", str(r["joined"]),
                    fmt(_per_probe_ms(r), 3), fmt(r["cpu_s"] / r["window"] * 100, 1),
                    fmt(_per_probe_ms(r, "sim_cpu_s"), 2), fmt(r["other_cpu_s"] / r["window"] * 100, 1),
                    "no TTFT" if not r["ttft_err"]["n"] else _four(r["ttft_err"]),
                    _trio(r["duration_err"]), r["lag_p99"]])
    summary_table = markdown_table(head, rows)
    detail_table = markdown_table(
        (["targets"] if several_n else []) + [
            "protocol", "run", "probes in window", "joined with sim log", "CPU ms/probe", "CPU % of a core",
            "simulator CPU ms/request", "rest of the machine, CPU % of a core",
            "TTFT error vs sim actual, ms p50 / p95 / p99 / max", "duration error vs sim actual, ms p50 / p99 / max",
            "loop lag p99, ms"], detail)
    notes = []
    for r in results:
        wait, what = r.get("tests_wait") or {}, f"run {r['run']}, {r['probe']}, N={r['n']}"
        if wait.get("gave_up"):
            notes.append(f"{what}: tests were still running after {wait['waited_s']:.0f} s; measured anyway.")
        elif r.get("tests_in_window"):
            notes.append(f"{what}: a test run was seen during the window.")
        if r["joined"] < r["ok"]:
            notes.append(f"{what}: only {r['joined']} of {r['ok']} ok probes found in the simulator's log.")
    waits = [r["tests_wait"]["waited_s"] for r in results if r.get("tests_wait")]
    if waits:
        waited = [w for w in waits if w > 0]
        notes.append(f"`--wait-for-tests`: before each phase the script waited until no `{TEST_PATTERN}` process "
                     f"ran; {len(waited)} of {len(waits)} phases had to wait"
                     + (f" ({max(waited):.0f} s at most)." if waited else "."))
    return summary_table + "\n\n" + detail_table + ("\n\n" + "  \n".join(notes) if notes else "")


def environment(loop: str | None, blackbox: bool = True) -> str:
    """Date, CPU, Python, aiohttp and (if it runs) blackbox_exporter versions."""
    if not blackbox:
        return (f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {platform.python_version()}; "
                f"aiohttp {importlib.metadata.version('aiohttp')}; {code_version(loop)}")
    try:
        out = subprocess.run([BLACKBOX, "--version"], capture_output=True, text=True, timeout=10,
                             check=False)
        bb = re.search(r"version (\S+)", out.stdout + out.stderr).group(1)
    except (OSError, AttributeError, subprocess.TimeoutExpired):
        bb = "unknown"
    return (f"{time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {platform.python_version()}; "
            f"aiohttp {importlib.metadata.version('aiohttp')}; {code_version(loop)}; blackbox_exporter {bb}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--targets", default="1,100,1000", help="comma list of target counts N (default 1,100,1000)")
    p.add_argument("--window", type=float, default=40.0, help="measured seconds per phase (default 40)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    p.add_argument("--interval", type=float, help="seconds between probes of a target (default: 1 s for N=1, "
                                                  "else 10 s)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), help="daemon event loop (sets MODELWATCH_LOOP; "
                   "default: the daemon's own choice)")
    p.add_argument("--only", choices=("modelwatch", "blackbox"), help="run one tool only")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--kind", choices=("rest", "realtime"), help="probe kind (default rest; realtime runs "
                      "modelwatch only); the same as --protocol chat or realtime")
    what.add_argument("--protocol", metavar="P[,P...]", help="comma list of wire protocols, from: "
                      f"{', '.join(PROTOCOLS)} (default chat). Anything but one chat or realtime is "
                      "modelwatch only, and --write fills the 'by protocol' table")
    p.add_argument("--modality", choices=("text", "audio"), help="realtime and gemini-live only: what the "
                   "probe times (default text)")
    p.add_argument("--runs", type=int, default=1, help="repeat the protocol list this many times, every other "
                   "pass in reverse order (default 1)")
    p.add_argument("--wait-for-tests", action="store_true", help=f"before each phase wait until no process "
                   f"matching '{TEST_PATTERN}' (pgrep -f) runs: poll every 10 s, at most 10 min, then measure "
                   "anyway and say so; also note test runs seen during the window")
    p.add_argument("--workdir", type=Path, help="keep configs, logs and databases here (default: a temp dir)")
    p.add_argument("--profile", action="store_true", help="run the daemon under cProfile (writes "
                   "WORKDIR/mw-N.prof; CPU figures are then inflated)")
    p.add_argument("--scrape-every", type=float, metavar="S", help="also GET the daemon's /metrics every S "
                   "seconds during the window, as Prometheus would (default: no scrapes in the window)")
    p.add_argument("--scrape-burst", type=int, default=10, metavar="K", help="after the window, GET /metrics "
                   "K times, 0.5 s apart, and report CPU per scrape (default 10)")
    p.add_argument("--py-spy", metavar="EXE", help="sample the daemon with this py-spy during the window "
                   "(writes WORKDIR/mw-N.py-spy.txt, collapsed stacks)")
    p.add_argument("--write", action="store_true", help=f"write the tables into {DOCS}")
    args = p.parse_args(argv)
    try:
        args.targets = [int(t) for t in args.targets.split(",") if t]
    except ValueError:
        p.error("--targets must be a comma list of integers")
    if not all(1 <= t <= 5000 for t in args.targets) or not args.targets:
        p.error("each target count must be 1..5000")
    if not (1 <= args.window <= 600 and 0 <= args.warmup <= 120):
        p.error("--window must be 1..600 s and --warmup 0..120 s")
    if not 2 <= args.scrape_burst <= 50:
        p.error("--scrape-burst must be 2..50")
    if args.scrape_every is not None and not 1 <= args.scrape_every <= 600:
        p.error("--scrape-every must be 1..600 s")
    if args.interval is not None and not 0.5 <= args.interval <= 600:
        p.error("--interval must be 0.5..600 s")
    if not 1 <= args.runs <= 10:
        p.error("--runs must be 1..10")
    if args.protocol is None:
        args.protocols = ["realtime" if args.kind == "realtime" else "chat"]
    else:
        args.protocols = [x.strip() for x in args.protocol.split(",") if x.strip()]
        unknown = [x for x in args.protocols if x not in PROTOCOLS]
        if unknown or not args.protocols or len(set(args.protocols)) != len(args.protocols):
            p.error(f"--protocol takes distinct names from: {', '.join(PROTOCOLS)}")
    # One chat or realtime pass is the --kind run of old; everything else compares protocols.
    args.by_protocol = args.runs > 1 or args.protocols not in (["chat"], ["realtime"])
    args.kind = "realtime" if args.protocols == ["realtime"] else "rest"
    websocket = any(PROTOCOLS[x][3] == "realtime" for x in args.protocols)
    if args.modality and not websocket:
        p.error("--modality is for --kind realtime (--protocol realtime or gemini-live)")
    args.modality = args.modality or ("text" if websocket else None)
    if args.by_protocol or args.kind == "realtime":
        if args.only == "blackbox":
            p.error("blackbox_exporter speaks only Chat Completions, one run: this run is modelwatch only")
        args.only = "modelwatch"
    return args


def report_phase(result: dict) -> None:
    """Print one phase's result and warn if the join with the simulator's log came up short."""
    print("  " + json.dumps({k: v for k, v in result.items() if k not in ("tool", "n")}), flush=True)
    if result["joined"] < 0.98 * result["ok"]:
        print(f"  WARNING: only {result['joined']} of {result['ok']} ok probes found in the simulator's "
              "log (it keeps the last 10,000 requests: shorten --window; or the probe's request id is "
              "not the simulator's)", flush=True)


def run_all(args: argparse.Namespace, work: Path) -> list[dict]:
    """Start the simulator and run every requested phase against it."""
    if args.by_protocol:
        return run_protocols(args, work)
    write_scenario(work / "scenario.yaml", args.kind)
    sim, sim_url = start_sim(work / "scenario.yaml", work / "sim.log")
    results = []
    try:
        for n in args.targets:
            interval = interval_for(n, args.interval)
            phases = [("modelwatch", run_modelwatch), ("blackbox", run_blackbox)]
            for name, phase in phases:
                if args.only and args.only != name:
                    continue
                wait = wait_for_tests() if args.wait_for_tests else None
                print(f"N={n} interval={interval:g}s: {name} ...", flush=True)
                result = phase(n, interval, sim, sim_url, work, args)
                if wait is not None:
                    result["tests_wait"] = wait
                report_phase(result)
                results.append(result)
    finally:
        stop_process(sim)
    return results


def run_protocols(args: argparse.Namespace, work: Path) -> list[dict]:
    """modelwatch phases for every protocol, ``--runs`` passes; a fresh simulator per protocol and pass."""
    results = []
    for run in range(1, args.runs + 1):
        order = args.protocols if run % 2 else args.protocols[::-1]
        for protocol in order:
            tag = f"{protocol}-r{run}"
            scenario = work / f"scenario-{tag}.yaml"
            write_scenario(scenario, PROTOCOLS[protocol][3], max(args.targets) if protocol == "models" else 0)
            sim, sim_url = start_sim(scenario, work / f"sim-{tag}.log")
            try:
                for n in args.targets:
                    interval = interval_for(n, args.interval)
                    wait = wait_for_tests() if args.wait_for_tests else None
                    print(f"run {run} {protocol} N={n} interval={interval:g}s: modelwatch ...", flush=True)
                    result = run_modelwatch(n, interval, sim, sim_url, work, args, protocol, tag)
                    result.update(run=run, tests_wait=wait)
                    report_phase(result)
                    results.append(result)
            finally:
                stop_process(sim)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, print the tables, optionally write docs/benchmarks.md."""
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelwatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(args.loop, blackbox=args.only != "modelwatch")
    code_before = src_fingerprint()
    results = run_all(args, work)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    tables = render_by_protocol(results, args) if args.by_protocol else render(results)
    if src_fingerprint() != code_before:
        env += f" (WARNING: src/ changed during the run, now {code_version(args.loop)})"
    command = "python bench/ttft_and_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{env}\n\n{tables}\n\nraw results and logs: {work}")
    if args.write:
        section = ("ttft-and-cpu" if args.kind == "rest" else f"realtime-{args.modality}") + \
            ("-scraped" if args.scrape_every else "")
        if args.by_protocol:
            section = "by-protocol"
        replace_section(DOCS, section, f"Run: {env}.  \nCommand: `{command.strip()}`\n\n{tables}")
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
