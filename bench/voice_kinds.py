"""CPU per probe of each voice-agent kind, and how truthfully its stages and turns are timed.

For each kind below: start ``modelwatch sim`` (its own process) and ``modelwatch
run`` with ``--targets`` targets of that kind, every target its own model names
(so that the simulator's log, in order per model, pairs with each target's
probes). After ``--warmup`` s, the daemon's CPU time (utime+stime, all threads)
is read at the start and end of a ``--window`` s window; probes that started and
ended inside it come from SQLite, with their stage and turn rows.

CPU per probe = daemon CPU in the window / probes in it; CPU per step = the same
over the requests (voice chain: 3 stages) or turns (conversations) they made.
Reading error = measured - what the simulator did (``actual_ttft_s``), per
stage (joined with the stage's request: the k-th probe of a target made the
k-th request of each of its models) and per turn (REST: the k-th request of the
target's model with that turn number; realtime: the session's ``turns``, joined
by the session's request id). Loop lag p99 comes from the daemon's histogram.

Kinds (``--kinds`` picks some):
  rest              {kind: rest}: the baseline, one Chat Completions stream
  realtime-audio    {kind: realtime, modality: audio}
  barge-in          realtime audio with interrupt_after: 300ms (cancel acknowledged after 50 ms)
  voice-chain       {kind: voice-chain}: transcription -> chat -> speech (pcm)
  conversation      {kind: conversation, turns: 20}: REST with the growing history
  conversation-rt   {kind: conversation, api: realtime, turns: 20}: one OpenAI Realtime session
  conversation-live {kind: conversation, turns: 20} on gemini: one Gemini Live session
  webrtc-text       {kind: realtime, transport: webrtc}: a call as a browser makes it (no reading
                    error: the simulator times from response.create, which the probe cannot see)
  webrtc-audio      the same with modality: audio: audio as RTP, the first audible packet tapped

Example:  .venv/bin/python bench/voice_kinds.py --write
          .venv/bin/python bench/voice_kinds.py --kinds voice-chain,conversation-rt --targets 10 --window 20
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import (code_version, cpu_model, cpu_seconds, fmt, free_port, http, markdown_table, modelwatch_cmd, pct,
                     replace_section, sim_requests, start_sim, stop_process, wait_http)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
MARKER = "voice-kinds"
# What each kind's targets run: (provider type, base path, probe, models of a target, interval s)
KINDS = {
    "rest": ("openai", "/v1", "{kind: rest}", ("llm",), 10),
    "realtime-audio": ("openai", "/v1", "{kind: realtime, modality: audio}", ("rt",), 10),
    "barge-in": ("openai", "/v1", "{kind: realtime, modality: audio, interrupt_after: 300ms}", ("barge",), 10),
    "voice-chain": ("openai", "/v1", "{kind: voice-chain, stt_model: %(t)s-stt, tts_model: %(t)s-tts}",
                    ("llm", "stt", "tts"), 10),
    "conversation": ("openai", "/v1", "{kind: conversation, turns: 20, timeout: 60s}", ("conv",), 30),
    "conversation-rt": ("openai", "/v1", "{kind: conversation, api: realtime, turns: 20, timeout: 60s}",
                        ("conv",), 30),
    "conversation-live": ("gemini", "/v1beta", "{kind: conversation, turns: 20, timeout: 60s}", ("conv",), 30),
    "webrtc-text": ("openai", "/v1", "{kind: realtime, transport: webrtc}", ("rt",), 10),
    "webrtc-audio": ("openai", "/v1", "{kind: realtime, transport: webrtc, modality: audio}", ("rt",), 10),
}
# Realistic-looking delays (ms): a hosted model's, not the simulator's defaults.
BEHAVIOUR = {
    "llm": "{ttfb_ms: 20, ttft_ms: 200, jitter_ms: 50, inter_token_ms: 10, tokens: 8}",
    "rt": "{ttfb_ms: 50, ttft_ms: 250, jitter_ms: 50, inter_token_ms: 20, tokens: 8, audio_ms: 800, audio_chunk_ms: 100}",
    "barge": "{ttfb_ms: 50, ttft_ms: 250, tokens: 8, audio_ms: 3000, audio_chunk_ms: 100, cancel_ms: 50}",
    "stt": "{ttfb_ms: 20, ttft_ms: 150, inter_token_ms: 10, tokens: 3}",
    "tts": "{ttfb_ms: 20, ttft_ms: 120, inter_token_ms: 10, audio_ms: 800, audio_chunk_ms: 100}",
    "conv": "{ttfb_ms: 20, ttft_ms: 150, inter_token_ms: 10, tokens: 4, turn_ttft_ms: 5, turn_ttft_after: 5}",
}


def scenario(kind: str, targets: int, path: Path) -> None:
    models = KINDS[kind][3]
    lines = ["seed: 7", "models:"]
    for i in range(targets):
        for model in models:
            lines.append(f"  t{i:03d}-{model}: {BEHAVIOUR[model]}")
    path.write_text("\n".join(lines) + "\n")


def config(kind: str, targets: int, sim_url: str, port: int, db: Path, path: Path) -> None:
    ptype, base, probe, models, interval = KINDS[kind]
    lines = [f"storage: {{path: {db}}}", f"server: {{listen: '127.0.0.1:{port}'}}",
             f"defaults: {{interval: {interval}s, timeout: 10s}}",
             f"providers: {{p: {{type: {ptype}, base_url: '{sim_url}{base}', api_key: sk-bench}}}}", "targets:"]
    for i in range(targets):
        t = f"t{i:03d}"
        lines.append(f"  - {{name: {t}, provider: p, model: {t}-{models[0]}, probes: [{probe % {'t': t}}]}}")
    path.write_text("\n".join(lines) + "\n")


def loop_lag_p99(metrics: str) -> str:
    buckets = [(float(le), float(v)) for le, v in re.findall(
        r'modelwatch_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', metrics) if le != "+Inf"]
    total = float(re.search(r"modelwatch_event_loop_lag_seconds_count (\S+)", metrics).group(1))
    for le, count in buckets:
        if count >= 0.99 * total:
            return f"<= {le * 1000:g}"
    return "> 2500"


def reading_errors(kind: str, db: Path, window: tuple[float, float], log: list[dict]) -> tuple[list, int, int]:
    """(measured - simulator's actual TTFT for every stage or turn in the window, probes, steps)."""
    conn = sqlite3.connect(db)
    probes = conn.execute("SELECT id, target, ts, ttft_s, request_id, outcome FROM probe_results "
                          "WHERE ts >= ? AND ts + duration_s <= ? ORDER BY ts", window).fetchall()
    by_model: dict[str, list[dict]] = defaultdict(list)
    by_id = {q["request_id"]: q for q in log}
    for q in log:
        by_model[q["model"]].append(q)
    order: dict[str, list[int]] = defaultdict(list)  # probe ids of each target, all of them, in start order
    for pid, target in conn.execute("SELECT id, target FROM probe_results ORDER BY ts"):
        order[target].append(pid)
    errors, steps = [], 0
    for pid, target, _, ttft, rid, _ in probes:
        k = order[target].index(pid)
        if kind == "voice-chain":
            for stage, s_ttft in conn.execute("SELECT stage, ttft_s FROM probe_stages WHERE probe_id = ?", [pid]):
                steps += 1
                served = by_model.get(f"{target}-{'llm' if stage == 'llm' else stage}", [])
                if k < len(served) and s_ttft is not None and served[k]["actual_ttft_s"] is not None:
                    errors.append(s_ttft - served[k]["actual_ttft_s"])
        elif kind.startswith("conversation"):
            turns = conn.execute("SELECT turn, ttft_s FROM probe_turns WHERE probe_id = ? ORDER BY turn",
                                 [pid]).fetchall()
            steps += len(turns)
            if kind == "conversation":
                # the k-th session's requests: from the target's k-th turn-1 request, its turns in order
                served = by_model.get(f"{target}-conv", [])
                starts = [i for i, q in enumerate(served) if q.get("turn") == 1]
                mine = served[starts[k]:starts[k] + len(turns)] if k < len(starts) else []
                actual = {q["turn"]: q["actual_ttft_s"] for q in mine}
            else:
                session = by_id.get(rid)
                actual = {t["turn"]: t["actual_ttft_s"] for t in (session or {}).get("turns") or []}
            errors += [t_ttft - actual[t] for t, t_ttft in turns if t_ttft is not None and actual.get(t) is not None]
        elif kind.startswith("webrtc"):
            steps += 1  # the simulator times from response.create, the probe from its start: no join
        else:
            steps += 1
            served = by_id.get(rid)
            if served and ttft is not None and served["actual_ttft_s"] is not None:
                connect = conn.execute("SELECT connect_s FROM probe_results WHERE id = ?", [pid]).fetchone()[0] or 0
                errors.append(ttft - connect - served["actual_ttft_s"])
    conn.close()
    return errors, len(probes), steps


def run_kind(kind: str, targets: int, warmup: float, window: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    scenario(kind, targets, work / "scenario.yaml")
    sim, sim_url = start_sim(work / "scenario.yaml", work / "sim.log")
    daemon = None
    try:
        port, db = free_port(), work / "mw.db"
        config(kind, targets, sim_url, port, db, work / "mw.yaml")
        with open(work / "daemon.log", "w") as err:
            import subprocess
            daemon = subprocess.Popen(modelwatch_cmd("run", "-c", str(work / "mw.yaml")), stdout=subprocess.DEVNULL,
                                      stderr=err)
        wait_http(f"http://127.0.0.1:{port}/-/healthy", daemon)
        time.sleep(warmup)
        start_wall, start_cpu, sim_start_cpu = time.time(), cpu_seconds(daemon.pid), cpu_seconds(sim.pid)
        time.sleep(window)
        end_wall, end_cpu, sim_end_cpu = time.time(), cpu_seconds(daemon.pid), cpu_seconds(sim.pid)
        metrics = http("GET", f"http://127.0.0.1:{port}/metrics").decode()
        time.sleep(1.5)  # the writer commits within a second
        errors, probes, steps = reading_errors(kind, db, (start_wall, end_wall), sim_requests(sim_url))
        conn = sqlite3.connect(db)
        ok = conn.execute("SELECT count(*) FROM probe_results WHERE ts >= ? AND ts + duration_s <= ? "
                          "AND outcome = 'ok'", (start_wall, end_wall)).fetchone()[0]
        conn.close()
        cpu = end_cpu - start_cpu
        return {"kind": kind, "probes": probes, "ok": ok, "steps": steps, "cpu_ms_probe": cpu * 1000 / max(probes, 1),
                "cpu_ms_step": cpu * 1000 / max(steps, 1), "cpu_pct": cpu * 100 / window,
                "sim_cpu_pct": (sim_end_cpu - sim_start_cpu) * 100 / window, "errors": errors,
                "lag": loop_lag_p99(metrics)}
    finally:
        stop_process(daemon)
        stop_process(sim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--write", action="store_true", help=f"replace the {MARKER} section of docs/benchmarks.md")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mw-voice-"))
    rows = []
    for kind in args.kinds.split(","):
        r = run_kind(kind, args.targets, args.warmup, args.window, work / kind)
        e = r["errors"]
        row = [kind, f"{r['probes']} ({r['ok']} ok)", str(r["steps"]), fmt(r["cpu_ms_probe"], 2),
               fmt(r["cpu_ms_step"], 2), fmt(r["cpu_pct"], 1), fmt(r["sim_cpu_pct"], 1),
               " / ".join(fmt(pct(e, q) * 1000) for q in (50, 95, 99)) + f" / {fmt(max(e, default=float('nan')) * 1000)}",
               r["lag"]]
        rows.append(row)
        print(" | ".join(row), flush=True)
    table = markdown_table(["kind", "probes in window", "stages or turns", "CPU ms/probe", "CPU ms/stage or turn",
                            "daemon CPU % of a core", "simulator CPU % of a core",
                            "reading error vs sim actual, ms p50 / p95 / p99 / max", "loop lag p99, ms"], rows)
    head = (f"Run: {time.strftime('%Y-%m-%d')}; {cpu_model()}; Python {sys.version.split()[0]}; "
            f"{code_version()}.  \nCommand: `python bench/voice_kinds.py {' '.join(sys.argv[1:])}`")
    print(table)
    if args.write:
        replace_section(DOC, MARKER, head + "\n\n" + table)


if __name__ == "__main__":
    main()
