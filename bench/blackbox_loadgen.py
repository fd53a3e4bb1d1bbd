"""Load generator for blackbox_exporter: plays Prometheus, calling GET /probe on a schedule.

Run by ``ttft_and_cpu.py`` as its own process, so its CPU is not counted
against blackbox_exporter. Target i (0-based) is probed with module
``chat-tNNNN`` every ``--interval`` seconds, first at ``--start`` +
i * interval / N, so the N probes of an interval are evenly spaced, like
modelwatch's first-run spread. A probe of a target never overlaps the previous
one of the same target (it is skipped and counted if it would). Stops sending
at ``--start + --duration`` and writes one JSON object per probe to ``--out``:
target, scheduled, sent and done (wall clock), and blackbox's probe_success,
probe_duration_seconds and probe_http_duration_seconds by phase.

Only loopback URLs are accepted.

Example: python bench/blackbox_loadgen.py --blackbox http://127.0.0.1:9115 \\
         --target http://127.0.0.1:8080/v1/chat/completions --targets 100 --interval 10 \\
         --start $(date +%s) --duration 30 --out /tmp/bb.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from urllib.parse import quote, urlsplit

import aiohttp

_SAMPLE = re.compile(r'^(probe_success|probe_duration_seconds|probe_http_duration_seconds)'
                     r'(?:\{phase="(\w+)"\})?\s+(\S+)$', re.MULTILINE)


def parse_probe(text: str) -> dict:
    """The few samples we use from a /probe answer."""
    out: dict = {"phases": {}}
    for name, phase, value in _SAMPLE.findall(text):
        if name == "probe_http_duration_seconds":
            out["phases"][phase] = float(value)
        else:
            out[name] = float(value)
    return out


async def probe_once(session: aiohttp.ClientSession, url: str, index: int, scheduled: float) -> dict:
    """One GET /probe; returns what blackbox said plus our wall-clock stamps."""
    record = {"target": index, "scheduled": scheduled, "sent": time.time()}
    try:
        async with session.get(url) as resp:
            text = await resp.text()
            record["http_status"] = resp.status
        record.update(parse_probe(text))
    except (aiohttp.ClientError, TimeoutError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["done"] = time.time()
    return record


async def run(args: argparse.Namespace) -> list[dict]:
    """Fire probes on schedule until the duration ends; wait for the last ones."""
    results: list[dict] = []
    busy: dict[int, asyncio.Task] = {}
    skipped = 0
    timeout = aiohttp.ClientTimeout(total=args.interval + 15)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        step = args.interval / args.targets
        end = args.start + args.duration
        k = 0
        while (scheduled := args.start + k * step) < end and k < 10_000_000:
            index = k % args.targets
            k += 1
            await asyncio.sleep(max(0.0, scheduled - time.time()))
            if index in busy and not busy[index].done():
                skipped += 1
                continue
            module = f"chat-t{index + 1:04d}"
            url = f"{args.blackbox}/probe?module={module}&target={quote(args.target, safe='')}"
            task = asyncio.create_task(probe_once(session, url, index, scheduled))
            task.add_done_callback(lambda t: results.append(t.result()))
            busy[index] = task
        pending = [t for t in busy.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=args.interval + 20)
    if skipped:
        print(f"blackbox_loadgen: skipped {skipped} probes whose previous run was still going", file=sys.stderr)
    return results


def loopback(url: str) -> str:
    """Reject anything but http://127.x.x.x URLs."""
    host = urlsplit(url).hostname or ""
    if not host.startswith("127.") or not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"only http://127.x.x.x URLs are allowed, got {url}")
    return url.rstrip("/")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--blackbox", type=loopback, required=True, help="blackbox_exporter base URL")
    p.add_argument("--target", type=loopback, required=True, help="URL blackbox probes (the simulator)")
    p.add_argument("--targets", type=int, required=True, help="number of targets N (1..10000)")
    p.add_argument("--interval", type=float, required=True, help="seconds between probes of one target")
    p.add_argument("--start", type=float, required=True, help="wall-clock time (epoch s) of the first probe")
    p.add_argument("--duration", type=float, required=True, help="seconds to keep sending (max 3600)")
    p.add_argument("--out", required=True, help="JSON output file")
    args = p.parse_args(argv)
    if not (1 <= args.targets <= 10_000 and 0 < args.duration <= 3600 and 0.1 <= args.interval <= 3600):
        p.error("targets must be 1..10000, duration 0..3600 s, interval 0.1..3600 s")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the schedule and write the results."""
    args = parse_args(argv)
    results = asyncio.run(run(args))
    with open(args.out, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
