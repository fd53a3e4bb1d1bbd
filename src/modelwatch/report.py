"""``modelwatch report``: availability and latency per target and kind from SQLite."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from pathlib import Path

from modelwatch.outcomes import ATTRIBUTION, Outcome

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def build_report(db_path: str | Path, since_s: float, now: float | None = None) -> list[dict]:
    """One dict per (target, kind) with counts, availability and percentiles."""
    now = time.time() if now is None else now
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT target, kind, outcome, ttft_s, duration_s, cost_usd FROM probe_results "
            "WHERE ts >= ? ORDER BY target, kind", [now - since_s]).fetchall()
    finally:
        conn.close()
    groups: dict[tuple[str, str], dict] = {}
    for target, kind, outcome, ttft, duration, cost in rows:
        g = groups.setdefault((target, kind), {"outcomes": {}, "ttft": [], "duration": [], "cost": None})
        g["outcomes"][outcome] = g["outcomes"].get(outcome, 0) + 1
        if cost is not None:
            g["cost"] = (g["cost"] or 0.0) + cost
        if ttft is not None and outcome == Outcome.OK.value:
            g["ttft"].append(ttft)
        if duration is not None and outcome == Outcome.OK.value:
            g["duration"].append(duration)
    return [_summary(target, kind, g) for (target, kind), g in groups.items()]


def _summary(target: str, kind: str, g: dict) -> dict:
    total = sum(g["outcomes"].values())
    ok = g["outcomes"].get(Outcome.OK.value, 0)
    provider_failures = sum(n for o, n in g["outcomes"].items()
                            if ATTRIBUTION.get(Outcome(o)) == "provider")
    row = {"target": target, "kind": kind, "probes": total,
           "availability": round(ok / total, 6) if total else None,
           "provider_availability": round(1 - provider_failures / total, 6) if total else None}
    for name in ("ttft", "duration"):
        values = sorted(g[name])
        for p in PERCENTILES:
            row[f"{name}_p{p}_s"] = percentile(values, p)
    for outcome in Outcome:
        row[outcome.value] = g["outcomes"].get(outcome.value, 0)
    row["cost_usd"] = None if g["cost"] is None else round(g["cost"], 6)
    return row


def render(rows: list[dict], fmt: str) -> str:
    """The report as table, json (one array) or csv text."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return _table(rows)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "no probe results in this range"
    head = ["TARGET", "KIND", "PROBES", "AVAIL", "TTFT p50/p95/p99", "DURATION p95", "COST", "FAILURES"]
    lines = [head]
    for r in rows:
        failures = ", ".join(f"{o.value}={r[o.value]}" for o in Outcome
                             if o is not Outcome.OK and r[o.value])
        lines.append([
            r["target"], r["kind"], str(r["probes"]),
            f"{r['availability'] * 100:.2f}%" if r["availability"] is not None else "-",
            "/".join(_ms(r[f"ttft_p{p}_s"]) for p in PERCENTILES),
            _ms(r["duration_p95_s"]), "-" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}",
            failures or "-",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"
