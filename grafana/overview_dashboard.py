"""The overview dashboard: every target at a glance, "is anything broken, and whose fault is it?".

Rows, top to bottom: what is broken now; each target over the selected range; failures over
time; latency; voice agents (collapsed); tokens and cost; the daemon's own health.
docs/dashboards.md describes each panel in words.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

import dashboard_parts as parts
import voice_panels
from dashboard_parts import (AVAILABILITY_THRESHOLDS, DURATION_THRESHOLDS, PROVIDER_OUTCOME_REGEX,
                             TTFT_THRESHOLDS, graph, place, query, table_query, thresholds)
from probe_promql import FAILED, PROBES, ProbeQueries

VARIABLES = ("location", "provider", "target", "kind")
Q = ProbeQueries(VARIABLES)
LEGEND = "{{target}} ({{kind}})"


def now_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 1: what is broken right now."""
    last = place(
        stat.Panel(), "Last probe",
        "The outcome of each target's last completed probe (the worst location's, if several): "
        "green OK, red FAILED. One failure turns a tile red; check availability below before "
        "waking anyone. Click a tile for the target drill-down.",
        "none", [query(Q.last_success(), LEGEND, instant=True)],
        span=12, height=7)
    last = (last.mappings(parts.status_mappings("OK", "FAILED"))
            .thresholds(thresholds("red", (1, "green")))
            .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .data_links([parts.drilldown_link("${__field.labels.target}")]))
    overdue = place(
        stat.Panel(), "Probes overdue",
        "How many probes have produced no result for more than three of their intervals "
        "(time() - modelwatch_probe_last_run_timestamp_seconds > 3 * modelwatch_probe_interval_seconds). "
        "Non-zero means a probe hangs, the scheduler is stuck or the daemon is down (see Daemon "
        "health). A probe whose series vanished stays counted for an hour.",
        "none", [query(Q.overdue_count(), "overdue",
                       instant=True)], span=4, height=7)
    overdue = (overdue.thresholds(thresholds("green", (1, "red")))
               .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE))
    age = place(
        bargauge.Panel(), "Time since last result",
        "Age of each probe's last result in multiples of its own interval: about 1 is healthy, "
        "past 3 the probe is overdue. A timeout longer than the interval pushes this up "
        "legitimately; skipped runs (Failures row) confirm that case.",
        "suffix: intervals",
        [query(Q.last_run_age(), LEGEND, instant=True)],
        span=8, height=7)
    age = (age.min(0).max(5).decimals(1).thresholds(thresholds("green", (2, "yellow"), (3, "red")))
           .display_mode(common.BarGaugeDisplayMode.BASIC).orientation(common.VizOrientation.HORIZONTAL))
    board = board.with_row(dash.Row("Now: is anything broken?"))
    return board.with_panel(last).with_panel(overdue).with_panel(age)


def summary_columns() -> list[tuple[str, str, str, dash.ThresholdsConfig | None]]:
    """The summary table's columns: (instant query, column name, unit, thresholds)."""
    availability = thresholds("red", *AVAILABILITY_THRESHOLDS)
    return [
        (Q.ok_ratio("$__range"), "Availability", "percentunit", availability),
        (Q.provider_ratio("$__range"), "Provider availability", "percentunit", availability),
        (f"round({Q.probes('$__range')})", "Probes", "none", None),
        (Q.quantile(0.5, "ttft", "$__range"), "TTFT p50", "s", thresholds("green", *TTFT_THRESHOLDS)),
        (Q.quantile(0.95, "ttft", "$__range"), "TTFT p95", "s", thresholds("green", *TTFT_THRESHOLDS)),
        (Q.quantile(0.95, "duration", "$__range"), "Duration p95", "s",
         thresholds("green", *DURATION_THRESHOLDS)),
        (Q.increase("modelwatch_probe_cost_usd_total", "$__range"), "Cost",
         "currencyUSD", None),
    ]


def summary_table() -> table.Panel:
    """One row per target and kind over the selected range: availability, latency, cost."""
    columns = summary_columns()
    refs = [chr(ord("A") + i) for i in range(len(columns))]
    provider_outcomes = PROVIDER_OUTCOME_REGEX.replace("|", ", ")
    panel = place(
        table.Panel(), "Per target over the selected range",
        "One row per target and probe kind over the dashboard's time range, worst availability "
        "first. Availability counts every outcome but ok as down. Provider availability counts "
        f"only the provider's failures ({provider_outcomes}), so our own auth, quota, bad-request "
        "and rate-limit problems do not read as provider downtime (the definition `modelwatch "
        "report` uses). TTFT and duration are histogram quantiles, as precise as the buckets; "
        "– where there is nothing to measure (`models` checks have no TTFT). "
        "Click a target for its drill-down.",
        "none", [table_query(expr, ref) for (expr, *_), ref in zip(columns, refs)], span=24, height=9)
    rename = {f"Value #{ref}": name for (_, name, *_), ref in zip(columns, refs)}
    panel = (panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
             .with_transformation(model.DataTransformerConfig(
                 id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": rename}))
             .sort_by([common_builders.TableSortByFieldState().display_name("Availability").desc(False)])
             .mappings([no_value_for_nan()]).thresholds(thresholds("green")))
    for _, name, unit, colours in columns:
        props = [model.DynamicConfigValue(id_val="unit", value=unit)]
        if colours is not None:
            props += [model.DynamicConfigValue(id_val="thresholds", value=colours.build()),
                      model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})]
        panel = panel.override_by_name(name, props)
    link = {"title": "Drill down: ${__value.raw}",
            "url": parts.drilldown_url("${__value.raw}")}
    return panel.override_by_name("target", [model.DynamicConfigValue(id_val="links", value=[link])])


def no_value_for_nan() -> model.SpecialValueMap:
    """Show NaN (a quantile of an empty histogram, e.g. TTFT of a `models` check) as a dash."""
    return model.SpecialValueMap(options=model.DashboardSpecialValueMapOptions(
        match=model.SpecialValueMatch.NA_N, result=model.ValueMappingResult(text="–", index=0)))


def range_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 2: each target over the selected range."""
    return board.with_row(dash.Row("Per target, selected range")).with_panel(summary_table())


def failures_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 3: availability and failures over time, and who they are attributed to."""
    over_time = graph(
        "Availability over time",
        "Share of ok probes per target in each interval (at least 2 minutes, so a window holds "
        "more than one probe). A dip that recovers by itself is a blip; a shelf is an outage.",
        "percentunit", [query(Q.ok_ratio("$__rate_interval"), LEGEND)], span=12, calcs=("mean", "min"))
    over_time = over_time.min(0).max(1).thresholds(thresholds("red", *AVAILABILITY_THRESHOLDS))
    by_outcome = graph(
        "Failed probes by outcome",
        "Failed probes per interval, stacked by outcome and coloured by who is usually to blame: "
        "reds are the provider (timeout, connect_error, overloaded, server_error, protocol_error), "
        "purples our configuration (auth_error, quota_exhausted, bad_request, model_unavailable), "
        "orange rate limits (usually self-inflicted), blue content filters. connect_error on every "
        "target at once points at our own network.",
        "short", [query(Q.increase(PROBES, "$__rate_interval", FAILED, by="outcome"),
                        "{{outcome}}")], span=12, bars=True, stacked=True, calcs=("sum",))
    by_outcome = parts.colour_outcomes(by_outcome)
    board = board.with_row(dash.Row("Availability and failures over time"))
    return board.with_panel(over_time).with_panel(by_outcome).with_panel(failure_table()).with_panel(skipped())


def failure_table() -> table.Panel:
    """Failed probes over the selected range, one row per target, kind and outcome."""
    expr = f"round({Q.increase(PROBES, '$__range', FAILED, by='target, kind, outcome')})"
    panel = place(
        table.Panel(), "Failures by target and outcome",
        "Every failed probe over the selected range, one row per target, kind and outcome, most "
        "first (zero rows hidden). The provider's own error codes and messages are not metric "
        "labels: find them in SQLite (`probe_results.error_code`, `error`) or `modelwatch report`.",
        "none", [table_query(expr, "A")], span=12, height=8)
    keep_failures = {"filters": [{"fieldName": "Value", "config": {"id": "greater", "options": {"value": 0}}}],
                     "type": "include", "match": "any"}
    return (panel.with_transformation(model.DataTransformerConfig(id_val="filterByValue", options=keep_failures))
            .with_transformation(model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {"Value": "Failed"}}))
            .sort_by([common_builders.TableSortByFieldState().display_name("Failed").desc(True)])
            .thresholds(thresholds("green")))


def skipped() -> timeseries.Panel:
    """Runs skipped because the previous run of the same probe was still going."""
    panel = graph(
        "Skipped runs",
        "Scheduled runs not started because the previous run of the same probe was still going "
        "(a probe never overlaps itself). Steady skips mean the timeout is longer than the "
        "interval and the provider is slow enough to use it: results arrive less often than "
        "configured.",
        "short", [query(Q.increase("modelwatch_skipped_runs_total", "$__rate_interval"),
                        LEGEND)], span=12, bars=True, calcs=("sum",))
    return panel.thresholds(thresholds("green", (1, "orange")))


def latency_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 4: TTFT and duration quantiles over time."""
    ttft = graph(
        "Time to first token, p50 and p95",
        "From probe start to the first content token (REST) or first text/audio delta (realtime), "
        "from the modelwatch_probe_ttft_seconds histogram; p50 dashed, p95 solid. Buckets stop at "
        "60 s, so quantiles are approximate.",
        "s", [query(Q.quantile(0.5, "ttft", "$__rate_interval"), LEGEND + " p50", ref="A"),
              query(Q.quantile(0.95, "ttft", "$__rate_interval"), LEGEND + " p95", ref="B")], span=12)
    ttft = parts.dashed_query(ttft.thresholds(thresholds("green", *TTFT_THRESHOLDS)), "A")
    duration = graph(
        "Duration p95",
        "From probe start to the stream's terminator, successful probes only "
        "(modelwatch_probe_duration_seconds). Failed probes' durations would mix timeouts into "
        "the latency picture; they show up in the failure panels instead.",
        "s", [query(Q.quantile(0.95, "duration", "$__rate_interval"), LEGEND + " p95")], span=12)
    duration = duration.thresholds(thresholds("green", *DURATION_THRESHOLDS))
    return board.with_row(dash.Row("Latency")).with_panel(ttft).with_panel(duration)


def voice_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 5: time to first audio and turn bands of voice probes; collapsed, as not every
    deployment has them (the target drill-down has the whole row, stages and barge-in too)."""
    row = (dash.Row("Voice agents").collapsed(True)
           .with_panel(voice_panels.first_audio(Q)).with_panel(voice_panels.turn_bands(Q)))
    return board.with_row(row)


def cost_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 6: what probing costs, and the daily budget."""
    tokens = graph(
        "Tokens per hour",
        "Tokens the providers reported for our probes, per target and direction, as an hourly "
        "rate. A jump in output tokens means a model ignores the probe's output cap.",
        "short", [query(Q.rate("modelwatch_probe_tokens_total", "$__rate_interval", by="target, direction")
                        + " * 3600", "{{target}} {{direction}}")], span=6)
    spend = graph(
        "Spend rate",
        "What probing costs per target at the current pace, in USD per day, from the reported "
        "tokens and each target's `price` (0 for targets without a price).",
        "currencyUSD", [query(Q.rate("modelwatch_probe_cost_usd_total", "$__rate_interval", by="target")
                              + " * 86400", "{{target}}")], span=6)
    budget = graph(
        "Spent today vs budget",
        "USD spent by probes since the last UTC midnight beside the configured budget.daily_usd "
        "(0: no budget), per daemon. These are daemon-wide metrics with no target or location "
        "label, so the variables do not filter them.",
        "currencyUSD", [query("max by (instance) (modelwatch_budget_spent_usd)", "spent {{instance}}", ref="A"),
                        query("max by (instance) (modelwatch_budget_daily_usd)", "budget {{instance}}", ref="B")],
        span=6, calcs=("last",))
    budget = parts.dashed_query(budget, "B")
    return (board.with_row(dash.Row("Tokens and cost")).with_panel(tokens).with_panel(spend)
            .with_panel(budget).with_panel(budget_paused()).with_panel(budget_skipped()))


def budget_paused() -> stat.Panel:
    """Whether paid probes are paused because today's budget is used up."""
    panel = place(
        stat.Panel(), "Budget pause",
        "PAUSED while today's (UTC) budget is used up: paid probes do not run, so their targets "
        "go overdue until midnight UTC; free `models` checks go on.",
        "none", [query("max by (instance) (modelwatch_budget_paused)", "{{instance}}", instant=True)],
        span=3, height=8)
    return (panel.mappings(parts.status_mappings("PAUSED", "running", one_colour="red", zero_colour="green"))
            .thresholds(thresholds("green", (1, "red")))
            .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE))


def budget_skipped() -> stat.Panel:
    """Paid runs the budget prevented over the selected range."""
    panel = place(
        stat.Panel(), "Runs skipped by budget",
        "Paid probe runs not started over the selected range because the day's budget was used up.",
        "none", [query("round(sum by (instance) (increase(modelwatch_budget_skipped_runs_total[$__range])))",
                       "{{instance}}", instant=True)], span=3, height=8)
    return panel.thresholds(thresholds("green", (1, "orange"))).graph_mode(common.BigValueGraphMode.NONE)


def daemon_row(board: dash.Dashboard) -> dash.Dashboard:
    """Row 7: the daemon's own health, to rule out "it is us"."""
    note = (" Daemon-wide metrics have no location label; one series per scraped instance, "
            "not filtered by the variables.")
    up = place(
        stat.Panel(), "Daemon scrape",
        "Whether Prometheus can scrape each modelwatch daemon seen in the last hour (the `up` "
        "series of its scrape job). DOWN: every probe of that daemon goes overdue and its "
        "metrics freeze; nothing about the providers can be concluded." + note,
        "none", [query("up and on (job, instance) max_over_time(modelwatch_build_info[1h])",
                       "{{instance}}", instant=True)], span=4, height=7)
    up = (up.mappings(parts.status_mappings("UP", "DOWN")).thresholds(thresholds("red", (1, "green")))
          .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE))
    lag = graph(
        "Event loop lag p99",
        "How late the daemon's event loop woke a 100 ms timer. Above ~50 ms the daemon itself is "
        "slow and every TTFT it measured in that window is inflated: suspect us, not the "
        "provider." + note,
        "s", [query("histogram_quantile(0.99, sum by (instance, le) "
                    "(rate(modelwatch_event_loop_lag_seconds_bucket[$__rate_interval])))", "{{instance}}")],
        span=6, height=7)
    lag = lag.thresholds(thresholds("green", (0.05, "yellow"), (0.25, "red")))
    store = graph(
        "Store errors and backlog",
        "Failed SQLite write attempts per interval (bars) and results waiting to be written "
        "(line). Rows are kept and retried; a growing backlog means the disk or database is the "
        "problem, and history (`modelwatch report`) lags behind the metrics." + note,
        "short", [query("sum by (instance) (increase(modelwatch_store_errors_total[$__rate_interval]))",
                        "errors {{instance}}", ref="A"),
                  query("sum by (instance) (modelwatch_store_pending_rows)", "pending {{instance}}", ref="B")],
        span=6, height=7, calcs=("max",))
    store = store.thresholds(thresholds("green", (1, "orange"))).override_by_query(
        "A", [model.DynamicConfigValue(id_val="custom.drawStyle", value="bars")])
    reload = place(
        stat.Panel(), "Config reload",
        "FAILED: the last config load or reload was rejected and the daemon still runs the older "
        "config (check-config names the problem). Purple markers on the graphs show successful "
        "loads." + note,
        "none", [query("min by (instance) (modelwatch_config_last_reload_successful)", "{{instance}}",
                       instant=True)], span=4, height=7)
    reload = (reload.mappings(parts.status_mappings("OK", "FAILED")).thresholds(thresholds("red", (1, "green")))
              .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE))
    flight = graph(
        "Probes in flight",
        "Probes running at this moment. It should hover near (probes × typical duration / "
        "interval); a steady climb means probes hang until their timeout." + note,
        "short", [query("sum by (instance) (modelwatch_probes_in_flight)", "{{instance}}")],
        span=4, height=7, calcs=("max",))
    board = board.with_row(dash.Row("Daemon health: is it us?"))
    return (board.with_panel(up).with_panel(lag).with_panel(store).with_panel(reload)
            .with_panel(flight))


def build() -> dash.Dashboard:
    """The overview dashboard builder."""
    board = parts.new_dashboard(
        parts.OVERVIEW_UID, "modelwatch / Overview",
        "Every probed model at a glance: current status, availability, latency, failures by "
        "outcome, cost, and the daemon's own health.")
    board = board.with_variable(parts.datasource_variable())
    for i, name in enumerate(VARIABLES):
        board = board.with_variable(parts.label_variable(name, VARIABLES[:i]))
    for row in (now_row, range_row, failures_row, latency_row, voice_row, cost_row, daemon_row):
        board = row(board)
    return board
