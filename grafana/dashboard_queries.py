"""Read the PromQL out of a dashboard's JSON and fill in its template variables.

For tests that check every query a dashboard sends: tests/test_dashboards.py parses each with
promtool; an integration test can run each against a real Prometheus::

    import importlib.util
    spec = importlib.util.spec_from_file_location("dashboard_queries", "grafana/dashboard_queries.py")
    dq = importlib.util.module_from_spec(spec); spec.loader.exec_module(dq)
    board = json.loads(Path("grafana/dashboards/modelwatch-overview.json").read_text())
    for title, expr in dq.panel_queries(board):
        promql = dq.substitute(expr, dq.EXAMPLE_VALUES)

This module needs only the standard library (not the Grafana SDK), and ``grafana/`` is not a
package, hence the import by path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

# Values that turn every query of the modelwatch dashboards into plain PromQL selecting
# everything: the label variables' "All" value (`.*`, which also matches a missing
# `location`), and Grafana's interval variables as fixed durations.
EXAMPLE_VALUES: dict[str, str] = {
    "location": ".*",
    "provider": ".*",
    "model": ".*",
    "target": ".*",
    "kind": ".*",
    "__rate_interval": "5m",
    "__range": "1h",
    "__interval": "1m",
}

# $name, ${name}, ${name:format} and the deprecated [[name]] / [[name:format]].
_REFERENCE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def panels(dashboard: Mapping) -> Iterator[dict]:
    """Every panel of a dashboard that can hold queries, rows' nested panels included, in order."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])  # only collapsed rows nest their panels
        else:
            yield panel


def panel_queries(dashboard: Mapping) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every query of every panel, in layout order.

    ``dashboard`` is the parsed JSON of a dashboard. Template variables are left in place (see
    :func:`substitute`). A repeated panel appears once, with its title as written (e.g.
    ``TTFT p50 / p95 · $kind``).
    """
    return [(panel.get("title", ""), target["expr"])
            for panel in panels(dashboard)
            for target in panel.get("targets", [])
            if target.get("expr")]


def annotation_queries(dashboard: Mapping) -> list[tuple[str, str]]:
    """(annotation name, PromQL expr) for the dashboard's Prometheus annotations."""
    return [(a.get("name", ""), a["expr"])
            for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]


def variable_queries(dashboard: Mapping) -> list[tuple[str, str]]:
    """(variable name, query) for the dashboard's query variables (``label_values(...)``)."""
    return [(v["name"], v["query"] if isinstance(v["query"], str) else v["query"].get("query", ""))
            for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every Grafana variable reference replaced by ``values[name]``.

    Recognises ``$name``, ``${name}``, ``${name:format}`` and ``[[name]]``. Values are used
    verbatim (any ``:format`` is ignored), so pass what PromQL should see: a regex such as
    ``.*`` for a label variable (the dashboards use it in ``=~`` matchers) and a duration such
    as ``5m`` for ``$__rate_interval``. A reference without a value raises ``KeyError`` naming
    it, so a new variable cannot slip through a test unnoticed.
    """
    def replace(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in: {expr}")
        return values[name]

    return _REFERENCE.sub(replace, expr)
