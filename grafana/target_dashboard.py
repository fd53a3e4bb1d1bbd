"""The target drill-down: one target (or one model) in depth, "what exactly is going wrong?".

Rows: now; phases over time; outcomes; realtime vs REST side by side (one column per kind);
voice agents (time to first audio, chain stages, turn bands, barge-in); tokens and cost per
probe. The overview links here with the target and kind preselected.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, stat, statetimeline, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

import dashboard_parts as parts
import voice_panels
from dashboard_parts import (AVAILABILITY_THRESHOLDS, DURATION_THRESHOLDS, TTFT_THRESHOLDS, graph,
                             place, query, thresholds)
from probe_promql import PROBES, ProbeQueries

VARIABLES = ("location", "provider", "model", "target", "kind")
Q = ProbeQueries(VARIABLES)
LEGEND = "{{target}} ({{kind}})"
QUANTILES = (("A", 0.5, "p50"), ("B", 0.95, "p95"), ("C", 0.99, "p99"))


def now_stat(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    """A small instant-value tile for the top row."""
    return (place(stat.Panel(), title, description, unit, [query(expr, LEGEND, instant=True)],
                  span=6, height=5)
            .graph_mode(common.BigValueGraphMode.NONE).text_mode(common.BigValueTextMode.VALUE_AND_NAME))


def now_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 1: the selected targets right now and over the selected range."""
    last = now_stat("Last probe", "Outcome of the last completed probe of each selected target and "
                    "kind; the Outcomes row says which outcome.", "none", Q.last_success())
    last = (last.mappings(parts.status_mappings("OK", "FAILED")).thresholds(thresholds("red", (1, "green")))
            .color_mode(common.BigValueColorMode.BACKGROUND))
    availability = now_stat(
        "Availability", "Share of ok probes over the selected range; every other outcome counts as down.",
        "percentunit", Q.ok_ratio("$__range"))
    provider = now_stat(
        "Provider availability",
        "Over the selected range, 1 minus the share of probes the provider failed (timeout, "
        "connect_error, overloaded, server_error, protocol_error); our own configuration problems "
        "and rate limits are not held against it. If this is high while Availability is low, the "
        "problem is on our side.", "percentunit", Q.provider_ratio("$__range"))
    for tile in (availability, provider):
        tile.decimals(2).thresholds(thresholds("red", *AVAILABILITY_THRESHOLDS))
    age = now_stat(
        "Time since last result",
        "Age of the last result in multiples of the probe's interval; past 3 the probe is overdue "
        "(hung probe, stuck scheduler, daemon down or budget pause).",
        "suffix: intervals", Q.last_run_age())
    age = age.decimals(1).thresholds(thresholds("green", (2, "yellow"), (3, "red")))
    board = board.with_row(dash.Row("Now"))
    return board.with_panel(last).with_panel(availability).with_panel(provider).with_panel(age)


def quantile_graph(title: str, histogram: str, description: str,
                   limits: tuple[tuple[float, str], ...]) -> timeseries.Panel:
    """p50 (dashed), p95 and p99 of one probe histogram over time."""
    queries = [query(Q.quantile(q, histogram, "$__rate_interval"), f"{LEGEND} {name}", ref=ref)
               for ref, q, name in QUANTILES]
    panel = graph(title, description, "s", queries, span=12, height=9)
    return parts.dashed_query(panel.thresholds(thresholds("green", *limits)), "A")


def distribution(title: str, histogram: str, description: str) -> heatmap.Panel:
    """A heatmap of one probe histogram's buckets: shows bimodal latency a quantile hides."""
    q = query(Q.buckets(histogram, "$__rate_interval"), "{{le}}",
              fmt=prometheus_model.PromQueryFormat.HEATMAP)
    panel = place(heatmap.Panel(), title, description, "s", [q], span=12, height=8)
    return (panel.interval("2m").calculate(False)
            .y_axis(heatmap.YAxisConfig().unit("s"))
            .color(heatmap.HeatmapColorOptions().mode(heatmap_model.HeatmapColorMode.SCHEME)
                   .scheme("Oranges").scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
                   .exponent(0.5).steps(64))
            .cell_values(heatmap.CellValues().unit("short"))
            .thresholds(thresholds("green")))


def phases_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 2: every phase of each probe, then TTFT and duration as quantiles and as distributions."""
    ttft = quantile_graph(
        "Time to first token", "ttft",
        "p50 (dashed), p95 and p99 of the time from probe start to the first content token "
        "(REST) or first text/audio delta (realtime), from modelwatch_probe_ttft_seconds.",
        TTFT_THRESHOLDS)
    duration = quantile_graph(
        "Duration", "duration",
        "p50 (dashed), p95 and p99 of the time from probe start to the stream's terminator "
        "([DONE], message_stop, response.done, turnComplete), successful probes only.",
        DURATION_THRESHOLDS)
    ttft_heat = distribution(
        "TTFT distribution", "ttft",
        "How many probes fell in each TTFT bucket per interval (0.1 s to 60 s). Two bands mean "
        "two behaviours (e.g. a cold path or a queue) that a single quantile averages away.")
    duration_heat = distribution(
        "Duration distribution", "duration",
        "How many successful probes fell in each duration bucket per interval.")
    each = graph(
        "Phases of each probe",
        "Seconds from probe start to each phase the last probe reached, as each scrape saw it "
        "(modelwatch_probe_phase_seconds): connect (TCP+TLS, plus the WebSocket upgrade), ttfb "
        "(response headers, or the realtime session created), ttft (first token or audio), "
        "duration (the terminator). A slow connect with a normal ttft - connect is our network "
        "or the provider's edge; a normal ttfb with a slow ttft is the model itself. A phase "
        "the probe never reached has no point, so a failed connect shows as a gap.",
        "s", [query(Q.phases(), f"{LEGEND} {{{{phase}}}}")], span=24, height=9, calcs=("mean", "max"))
    board = board.with_row(dash.Row("Phases"))
    return (board.with_panel(each).with_panel(ttft).with_panel(duration).with_panel(ttft_heat)
            .with_panel(duration_heat))


def outcomes_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 3: the outcome timeline, outcomes by kind of blame, availability both ways."""
    timeline = place(
        statetimeline.Panel(), "Outcome timeline",
        "OK or FAILED per target and kind over time, as each scrape saw the last probe. Red "
        "stretches are failures; the bars below say which outcome. Gaps mean no result: the "
        "probe was not running or the daemon was not scraped.",
        "none", [query(Q.last_success(), LEGEND)], span=24, height=6)
    timeline = (timeline.mappings(parts.status_mappings("OK", "FAILED"))
                .thresholds(thresholds("red", (1, "green"))).show_value(common.VisibilityMode.NEVER)
                .merge_values(True).fill_opacity(80).row_height(0.8))
    outcomes = graph(
        "Outcomes over time",
        "Every probe per interval stacked by outcome, coloured by who is usually to blame: green "
        "ok, reds the provider, purples our configuration, orange rate limits, blue content "
        "filters. The provider's own error_code for each failure is in SQLite.",
        "short", [query(Q.increase(PROBES, "$__rate_interval", by="outcome"), "{{outcome}}")],
        span=12, bars=True, stacked=True, calcs=("sum",))
    outcomes = parts.colour_outcomes(outcomes)
    availability = graph(
        "Availability vs provider availability",
        "Per interval: ok share (solid) and provider-attributable availability (dashed). Where "
        "the dashed line stays high and the solid one drops, the failures are ours (auth, quota, "
        "bad request) or rate limits.",
        "percentunit", [query(Q.ok_ratio("$__rate_interval"), f"{LEGEND} availability", ref="A"),
                        query(Q.provider_ratio("$__rate_interval"), f"{LEGEND} provider", ref="B")],
        span=12, calcs=("mean", "min"))
    availability = parts.dashed_query(
        availability.min(0).max(1).thresholds(thresholds("red", *AVAILABILITY_THRESHOLDS)), "B")
    board = board.with_row(dash.Row("Outcomes"))
    return board.with_panel(timeline).with_panel(outcomes).with_panel(availability)


def side_by_side_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 4: one column per selected kind, so realtime and REST of one model sit side by side."""
    per_kind = ProbeQueries(VARIABLES, by="target, model")
    legend = "{{target}} · {{model}}"
    ttft = graph(
        "TTFT p50 / p95 · $kind",
        "Repeated once per selected kind (rest, realtime, models, voice-chain, conversation), "
        "side by side: pick a Model to compare its realtime session's time to first token or "
        "audio with its REST stream's. "
        "p50 dashed, p95 solid. `models` checks have no TTFT.",
        "s", [query(per_kind.quantile(0.5, "ttft", "$__rate_interval"), f"{legend} p50", ref="A"),
              query(per_kind.quantile(0.95, "ttft", "$__rate_interval"), f"{legend} p95", ref="B")],
        span=24, calcs=("mean", "max"))
    ttft = parts.dashed_query(ttft.thresholds(thresholds("green", *TTFT_THRESHOLDS)), "A")
    availability = graph(
        "Availability · $kind",
        "Share of ok probes per interval for this kind, next to the other kinds of the same "
        "model: a realtime outage with healthy REST (or the reverse) is a protocol-specific "
        "incident.",
        "percentunit", [query(per_kind.ok_ratio("$__rate_interval"), legend)], span=24, calcs=("mean", "min"))
    availability = availability.min(0).max(1).thresholds(thresholds("red", *AVAILABILITY_THRESHOLDS))
    board = board.with_row(dash.Row("Realtime vs REST, side by side"))
    for panel in (ttft, availability):
        board = board.with_panel(panel.repeat("kind").repeat_direction("h").max_per_row(3))
    return board


def voice_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 5: voice agents: realtime audio beside the REST chain, its stages, turn bands, barge-in,
    WebRTC beside WebSocket and a WebRTC call's phases."""
    board = board.with_row(dash.Row("Voice agents"))
    for panel in (voice_panels.first_audio(Q), voice_panels.chain_stages(Q),
                  voice_panels.turn_bands(Q), voice_panels.barge_in(Q),
                  voice_panels.webrtc_vs_websocket(Q), voice_panels.webrtc_phases(Q)):
        board = board.with_panel(panel)
    return board


def cost_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 6: what one probe consumes."""
    tokens = graph(
        "Tokens per probe",
        "Average tokens the provider reported per completed probe, by direction (increase of "
        "modelwatch_probe_tokens_total over increase of modelwatch_probes_total). Output near the "
        "probe's cap is normal for reasoning models; far above it, the cap is ignored.",
        "short", [query(Q.per_probe("modelwatch_probe_tokens_total", "$__rate_interval", "direction"),
                        LEGEND + " {{direction}}")], span=12, calcs=("mean", "max"))
    cost = graph(
        "Cost per probe",
        "Average USD per completed probe, from the reported tokens and the target's `price` "
        "(0 without a price). Multiply by probes per day for the daily bill (`modelwatch probe "
        "--dry-run` estimates it up front).",
        "currencyUSD", [query(Q.per_probe("modelwatch_probe_cost_usd_total", "$__rate_interval"), LEGEND)],
        span=12, calcs=("mean", "max"))
    board = board.with_row(dash.Row("Tokens and cost per probe"))
    return board.with_panel(tokens).with_panel(cost.decimals(6))


def build() -> dash.Dashboard:
    """The target drill-down dashboard builder."""
    board = parts.new_dashboard(
        parts.DRILLDOWN_UID, "modelwatch / Target",
        "One target or model in depth: phases, outcome timeline, realtime vs REST side by side, "
        "voice agents, tokens and cost per probe.")
    board = board.with_variable(parts.datasource_variable())
    for i, name in enumerate(VARIABLES):
        board = board.with_variable(parts.label_variable(name, VARIABLES[:i]))
    for row in (now_row, phases_row, outcomes_row, side_by_side_row, voice_row, cost_row):
        board = row(board)
    return board
