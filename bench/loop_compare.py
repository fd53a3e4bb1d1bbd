"""uvloop vs asyncio for the daemon: repeated ttft_and_cpu.py runs, alternating loops.

Runs the modelwatch phase of ``ttft_and_cpu.py`` (REST probes, N targets,
default 1000 at 10 s) ``--runs`` times on each loop, alternating, with the
order flipped every pair (asyncio, uvloop, uvloop, asyncio, ...) so slow
drift of the machine does not favour one loop. Each run starts its own
simulator and daemon (``MODELWATCH_LOOP``). Reports CPU ms per probe and the
TTFT error (measured - simulator's actual) per run, and the median per loop.

Example:  .venv/bin/python bench/loop_compare.py --runs 3 --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ttft_and_cpu as tc
from _common import fmt, markdown_table, replace_section, src_fingerprint

LOOPS = ("asyncio", "uvloop")


def order(runs: int) -> list[str]:
    """asyncio, uvloop, uvloop, asyncio, asyncio, uvloop, ... (runs of each)."""
    out: list[str] = []
    for i in range(runs):
        out += list(LOOPS) if i % 2 == 0 else list(reversed(LOOPS))
    return out


def render(rows: list[tuple[int, str, dict]]) -> str:
    """Per-run rows, then the median per loop."""
    def cpu_ms(r: dict) -> float:
        return r["cpu_s"] * 1000 / r["completed"] if r["completed"] else float("nan")

    table = [[str(i), loop, str(r["completed"]), fmt(cpu_ms(r), 3), fmt(r["sim_cpu_s"] * 1000 / r["completed"], 2),
              fmt(r["ttft_err"]["p50"]), fmt(r["ttft_err"]["p99"]), fmt(r["ttft_err"]["max"])]
             for i, loop, r in rows]
    for loop in LOOPS:
        mine = [r for _, lp, r in rows if lp == loop]
        if mine:
            med = statistics.median
            table.append(["median", loop, "", fmt(med(cpu_ms(r) for r in mine), 3),
                          fmt(med(r["sim_cpu_s"] * 1000 / r["completed"] for r in mine), 2),
                          fmt(med(r["ttft_err"]["p50"] for r in mine)), fmt(med(r["ttft_err"]["p99"] for r in mine)),
                          fmt(med(r["ttft_err"]["max"] for r in mine))])
    return markdown_table(["run", "loop", "probes in window", "CPU ms/probe", "simulator CPU ms/request",
                           "TTFT error p50, ms", "TTFT error p99, ms", "TTFT error max, ms"], table)


def main(argv: list[str] | None = None) -> int:
    """Run the alternating series, print the table, optionally write it to docs/benchmarks.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--runs", type=int, default=3, help="runs per loop (default 3)")
    p.add_argument("--targets", type=int, default=1000, help="targets N (default 1000)")
    p.add_argument("--window", type=float, default=40.0, help="measured seconds per run (default 40)")
    p.add_argument("--workdir", type=Path, help="keep every run's files here (default: a temp dir)")
    p.add_argument("--write", action="store_true", help=f"write the table into {tc.DOCS}")
    args = p.parse_args(argv)
    if not (1 <= args.runs <= 10 and 1 <= args.targets <= 5000 and 1 <= args.window <= 600):
        p.error("--runs must be 1..10, --targets 1..5000 and --window 1..600 s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelwatch-loops-"))
    env = tc.environment("LOOP", blackbox=False).replace("LOOP loop", "asyncio and uvloop loops")
    before = src_fingerprint()
    rows: list[tuple[int, str, dict]] = []
    counts = dict.fromkeys(LOOPS, 0)
    for loop in order(args.runs):
        counts[loop] += 1
        run_dir = work / f"{loop}-{counts[loop]}"
        run_dir.mkdir(parents=True, exist_ok=True)
        run_args = tc.parse_args(["--targets", str(args.targets), "--only", "modelwatch", "--loop", loop,
                                  "--window", f"{args.window:g}"])
        print(f"run {len(rows) + 1}: {loop}", flush=True)
        (result,) = tc.run_all(run_args, run_dir)
        rows.append((counts[loop], loop, result))
        print(f"  {result['cpu_s'] * 1000 / max(1, result['completed']):.3f} ms CPU/probe, TTFT error p99 "
              f"{result['ttft_err']['p99']:.2f} ms", flush=True)
    (work / "results.json").write_text(json.dumps([{"loop": lp, **r} for _, lp, r in rows], indent=1))
    if src_fingerprint() != before:
        env += " (WARNING: src/ changed during the run)"
    table = render(rows)
    command = "python bench/loop_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{env}\n\n{table}\n\nraw results and logs: {work}")
    if args.write:
        replace_section(tc.DOCS, "loop-compare", f"Run: {env}.  \nCommand: `{command.strip()}`\n\n{table}")
        print(f"wrote {tc.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
