"""Grafana dashboards as code: the committed JSON is what grafana/dashboards.py generates, every
panel is described and queries Prometheus through the datasource variable, and promtool's own
PromQL parser accepts every query."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelwatch.outcomes import Outcome

ROOT = Path(__file__).parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = ("modelwatch-overview.json", "modelwatch-target.json")
REQUIRED_VARIABLES = ("datasource", "location", "provider", "target", "kind")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def load_module(name: str):
    """Import grafana/<name>.py (grafana/ is a directory of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, GRAFANA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dq = load_module("dashboard_queries")


def committed(filename: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / filename).read_text())


BOARDS = {name: committed(name) for name in DASHBOARD_FILES}


PANELS = [(name, panel) for name, board in BOARDS.items() for panel in dq.panels(board)]
PANEL_IDS = [f"{name.removesuffix('.json')}: {panel.get('title')}" for name, panel in PANELS]


@pytest.fixture(scope="module")
def generated() -> dict[str, dict]:
    sys.path.insert(0, str(GRAFANA))
    try:
        return load_module("dashboards").build_all()
    finally:
        sys.path.remove(str(GRAFANA))


@pytest.mark.parametrize("filename", DASHBOARD_FILES)
def test_committed_json_is_what_the_generator_builds(filename, generated):
    assert BOARDS[filename] == generated[filename], (
        f"grafana/dashboards/{filename} is stale: run .venv/bin/python grafana/dashboards.py")


def test_the_generator_builds_exactly_the_committed_files(generated):
    assert sorted(generated) == sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json"))


def test_the_generator_module_offers_the_query_helpers_too(generated):
    sys.path.insert(0, str(GRAFANA))
    try:
        module = load_module("dashboards")
    finally:
        sys.path.remove(str(GRAFANA))
    board = generated["modelwatch-overview.json"]
    assert module.panel_queries(board) == dq.panel_queries(board)
    assert module.substitute('x{kind=~"$kind"}', module.EXAMPLE_VALUES) == 'x{kind=~".*"}'


@pytest.mark.parametrize("where,panel", PANELS, ids=PANEL_IDS)
def test_every_panel_is_described_has_a_unit_and_queries_prometheus(where, panel):
    assert panel.get("description", "").strip(), "no description"
    assert panel["fieldConfig"]["defaults"].get("unit"), "no unit"
    assert panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps"), "no thresholds"
    exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
    assert exprs and all(exprs), "a query without PromQL"


@pytest.mark.parametrize("where,panel", PANELS, ids=PANEL_IDS)
def test_every_panel_and_query_uses_the_datasource_variable(where, panel):
    assert panel["datasource"] == DATASOURCE
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE


def threshold_colour(steps: list[dict], value: float) -> str:
    colour = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return colour


@pytest.mark.parametrize("where,panel", PANELS, ids=PANEL_IDS)
def test_value_mappings_and_thresholds_agree_on_colours(where, panel):
    # A tile reading "PAUSED" in green (or "OK" in red) would mislead at a glance.
    defaults = panel["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        if mapping["type"] != "value":
            continue
        for value, result in mapping["options"].items():
            assert threshold_colour(defaults["thresholds"]["steps"], float(value)) == result["color"], \
                result["text"]


def promtool_check(promtool: str, tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess:
    """Run promtool's rule checker over a rules file recording each expression."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)


def every_expression() -> list[str]:
    """Every PromQL expression the dashboards send, variables substituted."""
    exprs = []
    for board in BOARDS.values():
        pairs = dq.panel_queries(board) + dq.annotation_queries(board)
        exprs += [dq.substitute(expr, dq.EXAMPLE_VALUES) for _, expr in pairs]
        for _, query in dq.variable_queries(board):
            # label_values(<selector>, <label>): the selector is PromQL too
            selector = query.removeprefix("label_values(").rsplit(",", 1)[0]
            exprs.append(dq.substitute(selector, dq.EXAMPLE_VALUES))
    return exprs


def test_every_query_parses_with_promtool(promtool, tmp_path):
    exprs = every_expression()
    assert len(exprs) > 40  # both dashboards, all panels: not an accidentally empty list
    check = promtool_check(promtool, tmp_path, exprs)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_promtool_check_catches_a_broken_query(promtool, tmp_path):
    # A "(" right after group_left is parsed as its label list: the mistake this check caught.
    broken = "sum by (a, b) (x) / on (a) group_left (sum by (a) (y))"
    check = promtool_check(promtool, tmp_path, ["up", broken])
    assert check.returncode != 0
    assert "dashboard:query_1" in check.stdout + check.stderr


@pytest.mark.parametrize("filename", DASHBOARD_FILES)
def test_template_variables(filename):
    variables = {v["name"]: v for v in BOARDS[filename]["templating"]["list"]}
    assert set(REQUIRED_VARIABLES) <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in REQUIRED_VARIABLES[1:]:
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        assert v["query"].startswith("label_values(") and v["query"].endswith(f", {name})")
        # All must be a regex that also matches a missing label (no `location` in the config)
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"


@pytest.mark.parametrize("filename", DASHBOARD_FILES)
def test_each_variable_is_narrowed_only_by_the_ones_before_it(filename):
    names = [v["name"] for v in BOARDS[filename]["templating"]["list"]]
    for name, query in dq.variable_queries(BOARDS[filename]):
        earlier = set(names[:names.index(name)])
        used = {n for n in names if f"${n}" in query}
        assert used <= earlier, f"{name} uses {used - earlier}, defined later"


@pytest.mark.parametrize("filename", DASHBOARD_FILES)
def test_every_variable_a_query_uses_exists(filename):
    board = BOARDS[filename]
    names = {v["name"] for v in board["templating"]["list"]}
    builtin = {"__rate_interval", "__range", "__interval"}
    for title, expr in dq.panel_queries(board):
        values = {n: "x" for n in names | builtin}
        assert "$" not in dq.substitute(expr, values), title  # KeyError if a variable is unknown


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize("filename", DASHBOARD_FILES)
def test_layout_has_unique_ids_and_no_overlaps(filename):
    panels = BOARDS[filename]["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for i, a in enumerate(panels):
        assert 0 <= a["gridPos"]["x"] and a["gridPos"]["x"] + a["gridPos"]["w"] <= 24, a["title"]
        for b in panels[i + 1:]:
            assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_expanded_rows_keep_their_panels_at_top_level():
    # Grafana drops panels nested in a row unless the row is collapsed.
    for board in BOARDS.values():
        for row in (p for p in board["panels"] if p["type"] == "row"):
            assert row["collapsed"] or not row.get("panels"), row["title"]


def test_drilldown_shows_realtime_and_rest_side_by_side():
    repeated = [p for p in dq.panels(BOARDS["modelwatch-target.json"]) if p.get("repeat")]
    assert repeated and all(p["repeat"] == "kind" and p["repeatDirection"] == "h" for p in repeated)


def test_every_outcome_has_its_blame_colour_in_the_outcome_breakdown():
    panel = next(p for p in dq.panels(BOARDS["modelwatch-overview.json"])
                 if p["title"] == "Failed probes by outcome")
    coloured = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
    assert coloured == {o.value for o in Outcome}


def test_provider_availability_counts_exactly_the_provider_outcomes():
    provider = {"timeout", "connect_error", "overloaded", "server_error", "protocol_error"}
    for board in BOARDS.values():
        exprs = [e for _, e in dq.panel_queries(board) if "outcome=~" in e]
        assert exprs
        for expr in exprs:
            (regex,) = set(re.findall(r'outcome=~"([^"]+)"', expr))
            assert set(regex.split("|")) == provider


def test_substitute_replaces_every_reference_form():
    values = {"target": "a|b", "__rate_interval": "5m"}
    expr = 'rate(x{target=~"$target", t2=~"${target}", t3=~"${target:regex}", t4=~"[[target]]"}[$__rate_interval])'
    assert dq.substitute(expr, values) == 'rate(x{target=~"a|b", t2=~"a|b", t3=~"a|b", t4=~"a|b"}[5m])'


def test_substitute_names_a_variable_without_a_value():
    with pytest.raises(KeyError, match=r"\$kind"):
        dq.substitute('x{kind=~"$kind"}', {"target": ".*"})


def test_panel_queries_reads_collapsed_rows_and_skips_empty_queries():
    board = {"panels": [
        {"type": "stat", "title": "top", "targets": [{"expr": "up"}, {"expr": ""}]},
        {"type": "row", "title": "r", "collapsed": True,
         "panels": [{"type": "timeseries", "title": "nested", "targets": [{"expr": "rate(x[5m])"}]}]},
    ]}
    assert dq.panel_queries(board) == [("top", "up"), ("nested", "rate(x[5m])")]


def test_provisioning_points_at_the_dashboards_datasource():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/modelwatch.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    for board in BOARDS.values():
        variable = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
        assert variable["current"]["value"] == source["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/modelwatch.yml").read_text())
    (files,) = provider["providers"]
    assert files["type"] == "file" and files["options"]["path"].startswith("/")


def test_docs_describe_every_row_and_panel():
    docs = (ROOT / "docs" / "dashboards.md").read_text()
    for board in BOARDS.values():
        for panel in board["panels"]:
            assert panel["title"] in docs, panel["title"]
