"""Building blocks shared by modelwatch's dashboards: variables, label matchers, queries, panels.

Everything here wraps Grafana's own ``grafana-foundation-sdk`` builders so that the two
dashboards (``overview_dashboard.py``, ``target_dashboard.py``) read as a list of panels and
their PromQL, not as JSON plumbing. Every panel goes through :func:`place`, which is where the
rules the tests check are enforced: a description, a unit, the ``$datasource`` variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from modelwatch import outcomes
from modelwatch.outcomes import ATTRIBUTION, Outcome

# Every panel and query names the datasource through the variable, so one JSON file works
# against whichever Prometheus the user picks (or provisions under this uid).
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
DEFAULT_DATASOURCE_UID = "modelwatch-prometheus"
DRILLDOWN_UID = "modelwatch-target"
OVERVIEW_UID = "modelwatch-overview"

# Outcomes a provider is answerable for, and those that leave it untested (our configuration,
# our rate limits): the sets `modelwatch report` and the alert rules use for provider
# availability (modelwatch.outcomes), in a fixed order so the generated JSON is stable.
PROVIDER_OUTCOMES = tuple(o.value for o in Outcome if o.value in outcomes.PROVIDER_OUTCOMES)
PROVIDER_OUTCOME_REGEX = "|".join(PROVIDER_OUTCOMES)
NOT_PROVIDER_JUDGED_REGEX = "|".join(o.value for o in Outcome if o.value in outcomes.NOT_PROVIDER_JUDGED)

# Colour says who is to blame: reds for the provider, purples for our configuration, orange
# for capacity (rate limits), blue for content filters, green for success.
_BLAME_COLOURS = {
    "none": "blue",
    "provider": ["red", "dark-red", "semi-dark-red", "light-red", "super-light-red"],
    "configuration": ["purple", "dark-purple", "semi-dark-purple", "light-purple"],
    "capacity": "orange",
}

P = TypeVar("P")


def outcome_colour(outcome: Outcome) -> str:
    """The fixed colour of an outcome's series: its attribution's hue, one shade per outcome."""
    if outcome is Outcome.OK:
        return "green"
    who = ATTRIBUTION[outcome]
    shades = _BLAME_COLOURS[who]
    if isinstance(shades, str):
        return shades
    same_blame = [o for o in Outcome if ATTRIBUTION[o] == who]
    return shades[same_blame.index(outcome) % len(shades)]


def matchers(variables: Sequence[str], *extra: str) -> str:
    """A label-matcher block selecting the dashboard's template variables, plus ``extra``.

    ``matchers(["target", "kind"], 'outcome="ok"')`` gives
    ``{target=~"$target", kind=~"$kind", outcome="ok"}``. Regex matchers throughout, because
    every variable is multi-select with ``.*`` for All (which also matches a missing label:
    ``location`` exists only when the config sets one).
    """
    parts = [f'{name}=~"${name}"' for name in variables] + list(extra)
    return "{" + ", ".join(parts) + "}"


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False,
          fmt: prometheus_model.PromQueryFormat | None = None) -> prometheus.Dataquery:
    """One PromQL query against the ``$datasource`` variable."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if legend:
        q = q.legend_format(legend)
    if fmt is not None:
        q = q.format(fmt)
    return q


def table_query(expr: str, ref: str) -> prometheus.Dataquery:
    """An instant query shaped as a table, for panels that list one row per series."""
    return query(expr, ref=ref, instant=True, fmt=prometheus_model.PromQueryFormat.TABLE)


def thresholds(base: str, *steps: tuple[float, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds: ``base`` colour from minus infinity, then each (value, colour)."""
    return (dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color=base)]
                   + [model.Threshold(value=v, color=c) for v, c in steps]))


# Availability: below 95 % is an incident, below 99 % worth a look.
AVAILABILITY_THRESHOLDS = ((0.95, "orange"), (0.99, "green"))
# TTFT: LLM first tokens usually arrive within a second or two; 5 s is a user-visible stall.
TTFT_THRESHOLDS = ((2.0, "yellow"), (5.0, "red"))
# Whole (short) answers: the probe's output cap keeps healthy ones well under 5 s.
DURATION_THRESHOLDS = ((5.0, "yellow"), (13.0, "red"))
# Time to first audio: past about a second a caller notices the pause; past two it feels broken.
FIRST_AUDIO_THRESHOLDS = ((1.0, "yellow"), (2.0, "red"))
# Barge-in: the answer should stop within a few hundred ms of the caller talking over it.
INTERRUPT_THRESHOLDS = ((0.3, "yellow"), (1.0, "red"))


def place(panel: P, title: str, description: str, unit: str,
          queries: Sequence[prometheus.Dataquery], *, span: int, height: int) -> P:
    """Apply what every panel must have: title, description, unit, datasource, queries, size."""
    if not description.strip():
        raise ValueError(f"panel {title!r} needs a description")
    panel = (panel.title(title).description(description).unit(unit)  # type: ignore[attr-defined]
             .datasource(DATASOURCE).span(span).height(height))
    for q in queries:
        panel = panel.with_target(q)
    if hasattr(panel, "reduce_options"):
        # Single-value panels (stat, bar gauge) show the latest value, never a sum or mean over
        # the range that would blur "is it broken now?".
        panel = panel.reduce_options(common_builders.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
    return panel


def status_mappings(one: str, zero: str, *, one_colour: str = "green",
                    zero_colour: str = "red") -> list[model.ValueMap]:
    """Show a 1/0 gauge as words: 1 is ``one`` (green), 0 is ``zero`` (red) unless told otherwise."""
    return [model.ValueMap(options={
        "1": model.ValueMappingResult(text=one, color=one_colour, index=0),
        "0": model.ValueMappingResult(text=zero, color=zero_colour, index=1),
    })]


def colour_outcomes(panel: P) -> P:
    """Give every outcome series (legend ``{{outcome}}``) its blame colour."""
    for outcome in Outcome:
        fixed = {"mode": "fixed", "fixedColor": outcome_colour(outcome)}
        panel = panel.override_by_name(  # type: ignore[attr-defined]
            outcome.value, [model.DynamicConfigValue(id_val="color", value=fixed)])
    return panel


def legend(calcs: Sequence[str] = ()) -> common_builders.VizLegendOptions:
    """A bottom legend; a table with ``calcs`` (e.g. mean, max) when given."""
    mode = common.LegendDisplayMode.TABLE if calcs else common.LegendDisplayMode.LIST
    return (common_builders.VizLegendOptions().display_mode(mode)
            .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(list(calcs)))


def graph(title: str, description: str, unit: str, queries: Sequence[prometheus.Dataquery], *,
          span: int, height: int = 8, bars: bool = False, stacked: bool = False,
          calcs: Sequence[str] = ("mean", "max")) -> timeseries.Panel:
    """A time-series panel over probe data.

    The minimum interval is 2m: probes run every 30-60 s, so a shorter ``$__rate_interval``
    would hold zero or one probe and draw gaps or 0/1 steps instead of a rate.
    """
    panel = place(timeseries.Panel(), title, description, unit, queries, span=span, height=height)
    # A plain base colour; panels with a meaningful limit (latency, availability) set their own.
    panel = (panel.interval("2m").legend(legend(calcs)).thresholds(thresholds("green"))
             .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).line_width(1)
    else:
        panel = panel.fill_opacity(10).line_width(1).show_points(common.VisibilityMode.NEVER)
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def dashed_query(panel: P, ref: str) -> P:
    """Draw one query's series dashed (e.g. p50 beside a solid p95 of the same colour family)."""
    dash_style = {"fill": "dash", "dash": [10, 10]}
    return panel.override_by_query(  # type: ignore[attr-defined]
        ref, [model.DynamicConfigValue(id_val="custom.lineStyle", value=dash_style)])


def drilldown_url(target: str) -> str:
    """A link into the target drill-down for one target, keeping range, datasource and location.

    ``target`` is a Grafana data-link expression such as ``${__value.raw}``. Kind stays All, so
    the drill-down shows every kind of the target and its side-by-side row works at once.
    """
    return (f"/d/{DRILLDOWN_UID}/modelwatch-target?var-target={target}"
            "&${datasource:queryparam}&${location:queryparam}&${__url_time_range}")


def drilldown_link(target: str) -> dash.DashboardLink:
    """A data link to the drill-down (see :func:`drilldown_url`)."""
    return dash.DashboardLink("Drill down: " + target).url(drilldown_url(target))


def datasource_variable() -> dash.DatasourceVariable:
    """``$datasource``: any Prometheus datasource, the provisioned one by default."""
    return (dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .description("The Prometheus that scrapes modelwatch.")
            .current(model.VariableOption(text=DEFAULT_DATASOURCE_UID, value=DEFAULT_DATASOURCE_UID)))


# (label, description) of each probe-label variable, in the order the dashboards chain them.
VARIABLE_TEXT = {
    "location": ("Location", "Where the probes ran (the config's `location`). All also matches "
                             "daemons that set no location."),
    "provider": ("Provider", "The provider name from the config (`providers:` key)."),
    "model": ("Model", "The model the provider is asked for; several targets may share one, "
                       "e.g. a REST and a realtime probe of the same model."),
    "target": ("Target", "The target name from the config."),
    "kind": ("Kind", "The probe kind: rest, realtime, models, voice-chain or conversation."),
}


def label_variable(name: str, parents: Sequence[str]) -> dash.QueryVariable:
    """A multi-select variable of one probe label, narrowed by the variables ``parents``.

    All is ``.*`` rather than Grafana's list of every value: it keeps URLs and queries short and
    matches series without the label (``location`` is absent unless the config sets one).
    """
    label, description = VARIABLE_TEXT[name]
    source = "modelwatch_probes_total" + (matchers(parents) if parents else "")
    return (dash.QueryVariable(name).label(label).description(description)
            .query(f"label_values({source}, {name})").datasource(DATASOURCE)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(model.VariableOption(text="All", value="$__all")))


def dashboard_links() -> list[dash.DashboardLink]:
    """Links between the modelwatch dashboards, keeping the time range and variables."""
    return [dash.DashboardLink("modelwatch").type(model.DashboardLinkType.DASHBOARDS)
            .tags(["modelwatch"]).as_dropdown(False).include_vars(True).keep_time(True)]


def reload_annotation() -> dash.AnnotationQuery:
    """Mark config reloads (and quick restarts) on every graph: "what changed?" comes first at 3 a.m."""
    return (dash.AnnotationQuery().name("Config reloaded").datasource(DATASOURCE).enable(True)
            .icon_color("purple")
            .expr("changes(modelwatch_config_last_reload_success_timestamp_seconds[2m]) > 0"))


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    """A dashboard with modelwatch's common settings (tags, time, refresh, links, annotation)."""
    return (dash.Dashboard(title).uid(uid).description(description).tags(["modelwatch"])
            .editable().time("now-6h", "now").refresh("1m")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .timepicker(dash.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
            .links(dashboard_links()).annotation(reload_annotation()))


def number_panels(board: model.Dashboard) -> model.Dashboard:
    """Give every panel (rows and nested panels included) a stable id in layout order."""
    next_id = 1
    for panel in board.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return board
