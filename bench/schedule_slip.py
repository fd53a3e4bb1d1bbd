"""Does the schedule keep up? Many targets on one provider, its max_concurrent_probes as configured.

Reproduces issue 10's case: 1,000 REST targets every 10 s on one provider with the default
``max_concurrent_probes`` (8) against probes of ~115 ms, which can carry at most 8 / 0.115 = ~70
probes/s of the 100 planned. Starts ``modelwatch sim`` and ``modelwatch run`` on 127.0.0.1 only,
lets the daemon warm up for ``--warmup`` s (at least one interval, so that every target has had
its first slot), then reads /metrics at the start and end of a ``--window`` s window and prints
from the difference:

* probes/s completed against probes/s planned (targets / interval), and runs skipped;
* how late probes started against their slot (``modelwatch_probe_start_delay_seconds``):
  p50/p90/p99 from the histogram's buckets (so within a bucket) and the mean;
* what they waited for (``modelwatch_probe_slot_wait_seconds``) per ``limit``: mean and p90;
* the daemon's own estimate of the slots needed, the limit, and its "cannot carry" log lines.

Every wait is bounded; children are stopped at the end, also on errors.

Example:  .venv/bin/python bench/schedule_slip.py
          .venv/bin/python bench/schedule_slip.py --limit 16 --window 60
          .venv/bin/python bench/schedule_slip.py --targets 200 --interval 2 --warmup 4 --window 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (code_version, cpu_model, free_port, http, modelwatch_cmd,  # noqa: E402
                     start_sim, stop_process, wait_http)

KEY = "sk-bench-0000111122223333"
# ~115 ms per probe, as in the issue: first token after 80 ms, then 8 tokens 5 ms apart.
BEHAVIOUR = {"ttfb_ms": 5, "ttft_ms": 80, "inter_token_ms": 5, "tokens": 8}
LIMITS = ("target", "provider", "global")


def write_scenario(path: Path) -> None:
    """Every model name answers with BEHAVIOUR."""
    inner = ", ".join(f"{k}: {v}" for k, v in BEHAVIOUR.items())
    path.write_text(f"seed: 1\ndefault: {{{inner}}}\n")


def write_config(work: Path, args: argparse.Namespace, sim_url: str, port: int) -> Path:
    """The daemon's config: ``--targets`` REST targets on one provider; returns its path."""
    limit = f", max_concurrent_probes: {args.limit}" if args.limit else ""
    lines = [f"storage: {{path: {work / 'mw.db'}}}", f'server: {{listen: "127.0.0.1:{port}"}}',
             f"max_concurrent_probes: {args.global_limit}",
             f"defaults: {{interval: {args.interval:g}s, timeout: 10s}}", "providers:",
             f'  sim: {{type: openai, base_url: "{sim_url}/v1", api_key: {KEY}{limit}}}', "targets:"]
    lines += [f"  - {{name: t{i:04d}, provider: sim, model: t{i:04d}, probes: [{{kind: rest}}]}}"
              for i in range(args.targets)]
    config = work / "modelwatch.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} of one /metrics page."""
    text = http("GET", url + "/metrics", timeout=30).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def timed_scrape(url: str) -> tuple[float, dict]:
    """A scrape and the moment it stands for: the middle of it (a big page takes a while)."""
    start = time.monotonic()
    page = scrape(url)
    return (start + time.monotonic()) / 2, page


def total(page: dict, name: str, **labels: str) -> float:
    """Sum of a sample over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, pairs), v in page.items() if n == name and want <= set(pairs))


def buckets(before: dict, after: dict, name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram's increase between two scrapes."""
    out = {}
    for (n, pairs), v in after.items():
        d = dict(pairs)
        if n == f"{name}_bucket" and all(d.get(k) == val for k, val in labels.items()):
            le = float(d["le"])
            out[le] = out.get(le, 0.0) + v - before.get((n, pairs), 0.0)
    return sorted(out.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    if not cumulative or cumulative[-1][1] <= 0:
        return float("nan")
    rank, lower, below = q * cumulative[-1][1], 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return lower  # beyond the last finite bucket: its bound, as Prometheus does
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = le, count
    return lower


def histogram_figures(before: dict, after: dict, name: str, **labels: str) -> dict[str, float]:
    """Mean, p50, p90, p99 (seconds) and count of a histogram's increase between two scrapes."""
    count = total(after, f"{name}_count", **labels) - total(before, f"{name}_count", **labels)
    summed = total(after, f"{name}_sum", **labels) - total(before, f"{name}_sum", **labels)
    cumulative = buckets(before, after, name, **labels)
    return {"count": count, "mean": summed / count if count else float("nan"),
            **{f"p{q}": quantile(q / 100, cumulative) for q in (50, 90, 99)}}


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Run simulator and daemon, return the window's figures."""
    sim = daemon = None
    try:
        write_scenario(work / "scenario.yaml")
        sim, sim_url = start_sim(work / "scenario.yaml", work / "sim.log")
        port = free_port()
        config = write_config(work, args, sim_url, port)
        with open(work / "daemon.log", "w") as err:
            daemon = subprocess.Popen(modelwatch_cmd("run", "-c", str(config)), stdout=subprocess.DEVNULL, stderr=err)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/-/healthy", daemon, timeout=60)
        time.sleep(args.warmup)
        t0, before = timed_scrape(url)
        time.sleep(max(0.0, args.window - (time.monotonic() - t0)))
        t1, after = timed_scrape(url)
    finally:
        stop_process(daemon)
        stop_process(sim)
    seconds = t1 - t0
    log = (work / "daemon.log").read_text()
    return {
        "targets": args.targets, "interval_s": args.interval,
        "provider_limit": total(after, "modelwatch_provider_max_concurrent_probes"),
        "window_s": round(seconds, 2),
        "planned_per_s": args.targets / args.interval,
        "probes_per_s": (total(after, "modelwatch_probes_total") - total(before, "modelwatch_probes_total"))
        / seconds,
        "skipped_per_s": (total(after, "modelwatch_skipped_runs_total")
                          - total(before, "modelwatch_skipped_runs_total")) / seconds,
        "needed_slots": total(after, "modelwatch_provider_concurrency_needed"),
        "start_delay_s": histogram_figures(before, after, "modelwatch_probe_start_delay_seconds"),
        "slot_wait_s": {limit: histogram_figures(before, after, "modelwatch_probe_slot_wait_seconds", limit=limit)
                        for limit in LIMITS},
        "cannot_carry_log_lines": log.count("cannot carry the schedule"),
        "carries_again_log_lines": log.count("carries the schedule again"),
    }


def report(figures: dict) -> str:
    """The figures as a few plain lines."""
    def ms(h: dict) -> str:
        return " ".join(f"{k}={h[k] * 1000:.0f}ms" for k in ("mean", "p50", "p90", "p99"))
    lines = [
        f"{figures['targets']} targets every {figures['interval_s']:g}s on one provider, "
        f"max_concurrent_probes={figures['provider_limit']:g}; window {figures['window_s']:g}s",
        f"probes/s: {figures['probes_per_s']:.1f} of {figures['planned_per_s']:.1f} planned; "
        f"skipped runs/s: {figures['skipped_per_s']:.1f}",
        f"slots needed (daemon's estimate): {figures['needed_slots']:.1f}",
        f"start delay: {ms(figures['start_delay_s'])} (n={figures['start_delay_s']['count']:.0f})",
    ]
    lines += [f"slot wait, limit={limit}: {ms(h)}" for limit, h in figures["slot_wait_s"].items()]
    lines.append(f"log: 'cannot carry the schedule' x{figures['cannot_carry_log_lines']}, "
                 f"'carries the schedule again' x{figures['carries_again_log_lines']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--limit", type=int, default=None,
                        help="the provider's max_concurrent_probes (default: modelwatch's default, 8)")
    parser.add_argument("--global-limit", type=int, default=64, help="global max_concurrent_probes (64)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the window (20)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured (60)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-bench-slip-") as tmp:
        figures = measure(args, Path(tmp))
    figures["machine"], figures["code"] = cpu_model(), code_version()
    print(json.dumps(figures, indent=2) if args.json else
          f"{figures['code']} on {figures['machine']}\n{report(figures)}")


if __name__ == "__main__":
    main()
