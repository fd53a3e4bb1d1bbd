"""The status page's figures as terminal text (``modelwatch status``)."""

from __future__ import annotations

from modelwatch.status.html import fmt_duration, fmt_latency
from modelwatch.status.snapshot import WINDOWS

STATE_WORDS = {"operational": "operational", "degraded": "degraded", "partial_outage": "partial outage",
               "major_outage": "MAJOR OUTAGE", "no_data": "no data"}


def render_terminal(snapshot: dict, incidents: int = 10) -> str:
    """A table per probe (state, last run, each window) and the newest incidents."""
    head = ["TARGET", "KIND", "STATE", "LAST RUN", "ERRORS 24h", "TTFT p50/p95 24h",
            *(f"AVAIL {w}" for w in WINDOWS), "OUR SIDE"]
    lines = [head]
    for target in snapshot["targets"]:
        for probe in target["probes"]:
            day = probe["windows"]["24h"]
            last = probe["last_run"]
            ours = probe["our_side"]["outcomes"]
            lines.append([
                target["target"], probe["kind"], STATE_WORDS[probe["state"]],
                "-" if last is None else f"{last['ts'][11:19]} {last['outcome']}",
                f"{day['errors']} / {day['runs']} runs" if day["enough_data"] else "no measurements yet",
                f"{fmt_latency(day['ttft_p50_s'])} / {fmt_latency(day['ttft_p95_s'])}" if day["enough_data"] else "-",
                *(_percent(probe["windows"][w]) for w in WINDOWS),
                ", ".join(f"{o}={n}" for o, n in sorted(ours.items())) or "-",
            ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out = [f"{snapshot['title']}: {STATE_WORDS[snapshot['state']]} as of {snapshot['as_of']}", "", *table]
    shown = snapshot["incidents"][:incidents]
    if shown:
        out += ["", f"Incidents (newest {len(shown)} of {len(snapshot['incidents'])}):"]
        for i in shown:
            end = "ongoing" if i["ongoing"] else f"to {i['end']}"
            code = f" ({i['error_code']})" if i["error_code"] else ""
            out.append(f"  {i['target']} {i['kind']}: {i['start']} {end}, {fmt_duration(i['duration_s'])}, "
                       f"{i['failures']} of {i['runs']} runs failed, mostly {i['dominant_outcome']}{code}")
    out += ["", f"Availability: ok / runs; windows fewer than {snapshot['min_runs']} runs say "
                "'no measurements yet' (status.min_runs). State: provider availability of the last runs."]
    return "\n".join(out)


def _percent(window: dict) -> str:
    if not window["enough_data"] or window["availability"] is None:
        return "-"
    return f"{window['availability'] * 100:.2f}%"

