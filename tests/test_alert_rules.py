"""The shipped Prometheus rules and config are valid, every alert is unit-tested, inhibition works.

promtool (Debian's ``prometheus`` package) checks the rules and the example
scrape config and runs the unit tests in ``prometheus/tests/``; the YAML of
both is read to prove every alert has a case where it must fire and one where
it must not. Inhibition happens in Alertmanager, which promtool cannot run:
a real Alertmanager (``prometheus-alertmanager``) loads the example and says
which alerts it suppresses.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from daemon_helpers import http_get, wait_for
from modelwatch import outcomes

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

ROOT = Path(__file__).parent.parent
PROM = ROOT / "prometheus"
RULES = PROM / "rules" / "modelwatch.rules.yml"
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
INHIBIT = PROM / "alertmanager-inhibit.example.yml"
ALERTS_DOC = (ROOT / "docs" / "alerts.md").read_text()


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alert_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[str]:
    return sorted({rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule})


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_promtool_checks_the_rules(promtool):
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in result.stdout


def test_promtool_checks_the_example_config_and_finds_the_rules_next_to_it(promtool, tmp_path):
    # From another directory: rule_files must resolve against the config file, not the cwd.
    result = run(promtool, "check", "config", str(PROM / "prometheus.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "modelwatch.rules.yml" in result.stdout


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool, path):
    result = run(promtool, "test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def load_generator():
    """prometheus/rules.py, imported by path (prometheus/ is not a package)."""
    spec = importlib.util.spec_from_file_location("modelwatch_rules_generator", PROM / "rules.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


generator = load_generator()
OUTCOME_MATCHER = re.compile(r'outcome(=~|!~|!=|=)"([^"]*)"')


def test_committed_rules_are_what_the_generator_writes():
    assert RULES.read_text() == generator.render(), (
        "prometheus/rules/modelwatch.rules.yml is stale: run .venv/bin/python prometheus/rules.py")


def test_the_generated_sets_are_the_ones_outcomes_py_defines():
    sets = generator.outcome_sets(generator.DEFAULT_ATTRIBUTION)
    assert set(sets.provider) == outcomes.PROVIDER_OUTCOMES
    assert set(sets.not_judged) == outcomes.NOT_PROVIDER_JUDGED
    for who in ("configuration", "capacity"):
        assert set(sets.by_attribution[who]) == {o.value for o, w in outcomes.ATTRIBUTION.items() if w == who}
    assert set(sets.unreachable) <= outcomes.PROVIDER_OUTCOMES


def outcome_selections(text: str) -> set[tuple[str, frozenset[str]]]:
    """Every ``outcome`` matcher in rules text, as (operator, the values it names)."""
    return {(op, frozenset(values.split("|")))
            for op, values in OUTCOME_MATCHER.findall(text)}


def test_every_outcome_matcher_in_the_rules_is_a_derived_set():
    """No set is restated by hand: each matcher is one of the generator's sets, each set is used."""
    sets = generator.outcome_sets(generator.DEFAULT_ATTRIBUTION)
    derived = {("=~", frozenset(sets.provider)), ("!~", frozenset(sets.not_judged)),
               ("=~", frozenset(sets.by_attribution["configuration"])),
               ("=", frozenset(sets.by_attribution["capacity"])), ("=~", frozenset(sets.unreachable))}
    assert outcome_selections(RULES.read_text()) == derived


def rules_with(attribution_changes: dict[str, str]) -> dict[str, dict]:
    """The generated rules, by record or alert name (first of each), after changing the table."""
    table = {**generator.DEFAULT_ATTRIBUTION, **attribution_changes}
    groups = yaml.safe_load(generator.render(table))["groups"]
    found: dict[str, dict] = {}
    for rule in (r for g in groups for r in g["rules"]):
        found.setdefault(rule.get("record") or rule["alert"], rule)
    return found


def test_a_new_provider_outcome_reaches_every_failure_ratio_and_count():
    """DESIGN's `wrong_answer` (content checks, attributed to the provider), added to the table."""
    rules = rules_with({"wrong_answer": "provider"})
    failure_rules = [name for name in rules if name.startswith("modelwatch:probe_provider_errors:")]
    assert len(failure_rules) == 12
    for name in failure_rules:
        numerator = OUTCOME_MATCHER.search(rules[name]["expr"])
        assert numerator.group(1) == "=~" and "wrong_answer" in numerator.group(2).split("|"), name
    assert "wrong_answer" not in rules["modelwatch:probe_valid:increase15m"]["expr"]   # it is judged
    assert "server_error, protocol_error or wrong_answer." in rules["ModelwatchProviderFailing"]["annotations"]["description"]
    assert generator.render({**generator.DEFAULT_ATTRIBUTION, "wrong_answer": "provider"}) != RULES.read_text()


def test_a_new_configuration_outcome_is_a_configuration_problem_and_leaves_the_provider_unjudged():
    rules = rules_with({"region_unavailable": "configuration"})
    assert 'bad_request|region_unavailable"}[30m]' in rules["ModelwatchConfigurationProblem"]["expr"]
    judged = OUTCOME_MATCHER.search(rules["modelwatch:probe_valid:increase15m"]["expr"])
    assert judged.group(1) == "!~" and "region_unavailable" in judged.group(2).split("|")
    assert "region_unavailable" not in rules["modelwatch:probe_provider_errors:ratio_rate5m"]["expr"].split("/")[0]


def test_a_second_capacity_outcome_turns_the_rate_limit_matcher_into_a_regex():
    rules = rules_with({"concurrency_limited": "capacity"})
    assert 'outcome=~"rate_limited|concurrency_limited"' in rules["modelwatch:probe_rate_limited:ratio_rate30m"]["expr"]


@pytest.mark.parametrize("change, message", [
    ({"dns_error": "local"}, "attribution local is unknown"),
    ({"connect_error": "configuration"}, "connect_error must be provider failures"),
])
def test_the_generator_refuses_what_the_rules_cannot_count(change, message):
    with pytest.raises(ValueError, match=message):
        generator.render({**generator.DEFAULT_ATTRIBUTION, **change})


def test_the_docs_table_of_what_counts_lists_the_derived_sets():
    """docs/alerts.md's "What counts as a provider failure" must follow a new outcome too."""
    section = ALERTS_DOC.split("## What counts as a provider failure", 1)[1].split("\n## ", 1)[0]
    rows = {row.split("|")[2].strip(): set(re.findall(r"`(\w+)`", row.split("|")[1]))
            for row in section.splitlines() if row.startswith("| `")}
    assert rows.pop("provider failures") == outcomes.PROVIDER_OUTCOMES
    assert next(v for k, v in rows.items() if k.startswith("served")) == {
        o.value for o, who in outcomes.ATTRIBUTION.items() if who == "none"}
    assert set().union(*(v for k, v in rows.items() if k.startswith("left out"))) == outcomes.NOT_PROVIDER_JUDGED


def test_the_docs_formula_from_report_counts_uses_the_derived_sets():
    """The SLO section's "from the report's counts" formula names the same outcomes."""
    formula = re.search(r"`1 - \(([\w +]+)\) /\s+\(probes - ([\w\s-]+)\)`", ALERTS_DOC)
    assert formula, "docs/alerts.md lost the availability formula"
    assert set(formula.group(1).split(" + ")) == outcomes.PROVIDER_OUTCOMES
    assert set(re.split(r"\s+-\s+", formula.group(2).strip())) == outcomes.NOT_PROVIDER_JUDGED


DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """A Prometheus duration (``1h30m``, ``3d``) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration!r}"
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def unit_test_cases() -> list[tuple[str, int, str, float, bool]]:
    """(file, test group, alertname, eval time in s, whether it must fire) for every promtool alert case."""
    cases = []
    for path in UNIT_TESTS:
        for index, group in enumerate(yaml.safe_load(path.read_text())["tests"]):
            for case in group.get("alert_rule_test", []):
                cases.append((path.name, index, case["alertname"], seconds(case["eval_time"]),
                              bool(case.get("exp_alerts"))))
    return cases


def resolves_in_some_group(name: str) -> bool:
    """Whether some test group expects ``name`` to fire and, at a later eval time, to be silent again."""
    groups: dict[tuple[str, int], list[tuple[float, bool]]] = {}
    for path, index, alertname, at, fires in unit_test_cases():
        if alertname == name:
            groups.setdefault((path, index), []).append((at, fires))
    for cases in groups.values():
        firing = [at for at, fires in cases if fires]
        if firing and any(at > max(firing) for at, fires in cases if not fires):
            return True
    return False


@pytest.mark.parametrize("name", sorted({r["alert"] for r in alert_rules()}))
def test_every_alert_fires_stays_silent_on_a_blip_and_resolves(name):
    """The issue's three cases: firing on sustained trouble, silent on a blip, resolving after recovery."""
    cases = [fires for _, _, alertname, _, fires in unit_test_cases() if alertname == name]
    assert True in cases, f"no promtool case expects {name} to fire"
    assert False in cases, f"no promtool case expects {name} to stay silent"
    assert resolves_in_some_group(name), f"no promtool test group expects {name} to resolve after it fired"


def test_the_resolve_check_reads_eval_times_as_durations():
    """1h50m is later than 50m and 9h: order by duration, not by text."""
    assert seconds("50m") < seconds("1h50m") < seconds("9h") < seconds("3d20m")
    assert seconds("1h30m") == 5400


def test_unit_tests_only_name_real_alerts():
    names = {r["alert"] for r in alert_rules()}
    unknown = {(path, alertname) for path, _, alertname, _, _ in unit_test_cases() if alertname not in names}
    assert not unknown


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_unit_tests_load_the_shipped_rules_in_a_fixed_order(path):
    """Groups evaluate in file order, as recording rules feed alerts; promtool's default order is random."""
    test = yaml.safe_load(path.read_text())
    assert "../rules/modelwatch.rules.yml" in test["rule_files"]
    order = test.get("group_eval_order", [])
    shipped = [g["name"] for g in rule_groups()]
    assert [name for name in order if name in shipped] == shipped


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('long_window', '')}")
def test_every_alert_is_labelled_and_annotated_for_3am(rule):
    assert rule["labels"]["severity"] in {"page", "ticket", "info"}
    assert rule["labels"]["attribution"] in {"provider", "capacity", "configuration", "local", "modelwatch"}
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = annotations["runbook"].removeprefix("docs/alerts.md#")
    assert anchor == rule["alert"].lower()
    assert re.search(rf"^#+ {rule['alert']}$", ALERTS_DOC, re.MULTILINE), f"docs/alerts.md has no section {anchor}"


def test_no_alert_pages_on_a_single_probe_by_construction():
    """Every paging provider alert guards on a minimum count (promtool checks each guard works)."""
    for rule in alert_rules():
        if rule["labels"]["severity"] == "page" and rule["labels"]["attribution"] in {"provider", "local"}:
            assert re.search(r">= [2-9]\b", rule["expr"]), rule["alert"]


@pytest.mark.parametrize("name", recording_rules())
def test_every_recording_rule_is_documented(name):
    assert f"`{name}`" in ALERTS_DOC


def inhibit_rules() -> list[dict]:
    return yaml.safe_load(INHIBIT.read_text())["inhibit_rules"]


def matched_alerts(matchers: list[str]) -> set[str]:
    """Alert names whose static labels satisfy every ``name="value"`` or ``name=~"regex"`` matcher."""
    wanted = [re.fullmatch(r'(\w+)(=~?)"([^"]*)"', m).groups() for m in matchers]

    def matches(labels: dict, name: str, op: str, value: str) -> bool:
        if op == "=~":
            return re.fullmatch(value, labels.get(name, "")) is not None
        return labels.get(name) == value

    return {r["alert"] for r in alert_rules()
            if all(matches({"alertname": r["alert"], **r["labels"]}, *m) for m in wanted)}


@pytest.mark.parametrize("rule", inhibit_rules(), ids=lambda r: r["source_matchers"][0])
def test_inhibitions_name_real_alerts(rule):
    sources, targets = matched_alerts(rule["source_matchers"]), matched_alerts(rule["target_matchers"])
    assert sources and targets
    assert not sources & targets, "an alert would inhibit itself"


def test_amtool_accepts_the_inhibition_example():
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: apt-get install -y prometheus-alertmanager"
    result = run(amtool, "check-config", str(INHIBIT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(inhibit_rules())} inhibit rules" in result.stdout


@pytest.fixture
def alertmanager(tmp_path):
    """A real Alertmanager loaded with the example; yields its base URL."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is missing: apt-get install -y prometheus-alertmanager"
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={INHIBIT}", f"--storage.path={tmp_path}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(base + "/-/ready") is not None or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read()
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def post_alerts(base: str, alerts: list[dict]) -> None:
    now = datetime.now(UTC).isoformat()
    body = json.dumps([{"labels": labels, "startsAt": now} for labels in alerts]).encode()
    request = urllib.request.Request(base + "/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200


def alert_states(base: str) -> dict[tuple[str, str, str], str]:
    """(alertname, instance, target) -> active / suppressed, as Alertmanager sees them now."""
    alerts = json.loads(http_get(base + "/api/v2/alerts") or "[]")
    return {(a["labels"]["alertname"], a["labels"].get("instance", ""), a["labels"].get("target", "")):
            a["status"]["state"] for a in alerts}


def test_local_network_down_inhibits_only_its_own_daemons_provider_alerts(alertmanager):
    probe = {"job": "modelwatch", "provider": "openai", "model": "gpt-4o-mini", "kind": "rest",
             "location": "lab"}
    post_alerts(alertmanager, [
        {"alertname": "ModelwatchLocalNetworkDown", "severity": "page", "attribution": "local",
         "job": "modelwatch", "instance": "mw:9477", "location": "lab"},
        {"alertname": "ModelwatchProviderFailing", "severity": "page", "attribution": "provider",
         "instance": "mw:9477", "target": "gpt", **probe},
        {"alertname": "ModelwatchErrorBudgetBurnFast", "severity": "page", "attribution": "provider",
         "long_window": "1h", "short_window": "5m", "instance": "mw:9477", "target": "gpt", **probe},
        {"alertname": "ModelwatchProviderFailing", "severity": "page", "attribution": "provider",
         "instance": "other:9477", "target": "gpt", **probe},
        {"alertname": "ModelwatchConfigurationProblem", "severity": "ticket",
         "attribution": "configuration", "instance": "mw:9477", "target": "claude", **probe},
    ])
    key = ("ModelwatchProviderFailing", "mw:9477", "gpt")
    wait_for(lambda: alert_states(alertmanager).get(key) == "suppressed", 15)
    states = alert_states(alertmanager)
    assert states == {
        ("ModelwatchLocalNetworkDown", "mw:9477", ""): "active",
        ("ModelwatchProviderFailing", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchProviderFailing", "other:9477", "gpt"): "active",   # another daemon's view
        ("ModelwatchConfigurationProblem", "mw:9477", "claude"): "active",   # not the network
    }


PROBE = {"job": "modelwatch", "provider": "openai", "model": "gpt-4o-mini", "kind": "rest", "location": "lab"}


def provider_alert(name: str, instance: str, target: str, severity: str = "page", **extra: str) -> dict:
    return {"alertname": name, "severity": severity, "attribution": "provider", "instance": instance,
            "target": target, **PROBE, **extra}


def daemon_alert(name: str, instance: str, severity: str, attribution: str) -> dict:
    return {"alertname": name, "severity": severity, "attribution": attribution, "job": "modelwatch",
            "instance": instance, "location": "lab"}


def states_once_suppressed(base: str, alerts: list[dict], key: tuple[str, str, str]) -> dict:
    """Post ``alerts``, wait until ``key`` is suppressed (the inhibitor caught up), return every state."""
    post_alerts(base, alerts)
    wait_for(lambda: alert_states(base).get(key) == "suppressed", 15)
    return alert_states(base)


def test_local_network_was_down_inhibits_only_its_own_daemons_slow_burn_tickets(alertmanager):
    burn_slow = {"long_window": "1d", "short_window": "2h"}
    states = states_once_suppressed(alertmanager, [
        daemon_alert("ModelwatchLocalNetworkWasDown", "mw:9477", "info", "local"),
        provider_alert("ModelwatchErrorBudgetBurnSlow", "mw:9477", "gpt", "ticket", **burn_slow),
        provider_alert("ModelwatchErrorBudgetBurnSlow", "other:9477", "gpt", "ticket", **burn_slow),
        provider_alert("ModelwatchProviderFailing", "mw:9477", "claude"),
    ], ("ModelwatchErrorBudgetBurnSlow", "mw:9477", "gpt"))
    assert states == {
        ("ModelwatchLocalNetworkWasDown", "mw:9477", ""): "active",
        ("ModelwatchErrorBudgetBurnSlow", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchErrorBudgetBurnSlow", "other:9477", "gpt"): "active",   # another daemon's view
        ("ModelwatchProviderFailing", "mw:9477", "claude"): "active",   # a new outage still pages
    }


def test_event_loop_lag_inhibits_its_own_daemons_provider_alerts(alertmanager):
    states = states_once_suppressed(alertmanager, [
        daemon_alert("ModelwatchEventLoopLagHigh", "mw:9477", "ticket", "modelwatch"),
        provider_alert("ModelwatchProviderFailing", "mw:9477", "gpt"),
        provider_alert("ModelwatchTTFTAboveBaseline", "mw:9477", "claude", "ticket"),
        provider_alert("ModelwatchProviderFailing", "other:9477", "gpt"),
        {**provider_alert("ModelwatchRateLimited", "mw:9477", "mini", "ticket"), "attribution": "capacity"},
        daemon_alert("ModelwatchLocalNetworkDown", "mw:9477", "page", "local"),
    ], ("ModelwatchProviderFailing", "mw:9477", "gpt"))
    assert states == {
        ("ModelwatchEventLoopLagHigh", "mw:9477", ""): "active",
        ("ModelwatchProviderFailing", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchTTFTAboveBaseline", "mw:9477", "claude"): "suppressed",
        ("ModelwatchProviderFailing", "other:9477", "gpt"): "active",   # another daemon's view
        ("ModelwatchRateLimited", "mw:9477", "mini"): "active",   # a 429 is not our lateness
        ("ModelwatchLocalNetworkDown", "mw:9477", ""): "active",
    }


def test_provider_failing_inhibits_the_fast_burn_page_of_the_same_probe_only(alertmanager):
    burn_fast = {"long_window": "1h", "short_window": "5m"}
    states = states_once_suppressed(alertmanager, [
        provider_alert("ModelwatchProviderFailing", "mw:9477", "gpt"),
        provider_alert("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt", **burn_fast),
        provider_alert("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt-4o", **burn_fast),
        provider_alert("ModelwatchErrorBudgetBurnFast", "other:9477", "gpt", **burn_fast),
    ], ("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt"))
    assert states == {
        ("ModelwatchProviderFailing", "mw:9477", "gpt"): "active",
        ("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchErrorBudgetBurnFast", "mw:9477", "gpt-4o"): "active",   # another target
        ("ModelwatchErrorBudgetBurnFast", "other:9477", "gpt"): "active",   # another daemon
    }


def test_local_faults_inhibit_only_their_own_daemons_overdue_alerts(alertmanager):
    overdue = {"alertname": "ModelwatchProbesOverdue", "severity": "ticket", "attribution": "modelwatch",
               **PROBE}
    states = states_once_suppressed(alertmanager, [
        {**daemon_alert("ModelwatchLocalFaults", "mw:9477", "page", "modelwatch"), "reason": "open_files"},
        {**overdue, "instance": "mw:9477", "target": "gpt"},
        daemon_alert("ModelwatchAllProbesOverdue", "mw:9477", "page", "modelwatch"),
        {**overdue, "instance": "other:9477", "target": "gpt"},
        provider_alert("ModelwatchProviderFailing", "mw:9477", "claude"),
    ], ("ModelwatchProbesOverdue", "mw:9477", "gpt"))
    assert states == {
        ("ModelwatchLocalFaults", "mw:9477", ""): "active",
        ("ModelwatchProbesOverdue", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchAllProbesOverdue", "mw:9477", ""): "suppressed",
        ("ModelwatchProbesOverdue", "other:9477", "gpt"): "active",   # another daemon
        ("ModelwatchProviderFailing", "mw:9477", "claude"): "active",   # not a local fault's doing
    }


def test_schedule_slipping_inhibits_the_overdue_tickets_of_its_provider_only(alertmanager):
    overdue = {"alertname": "ModelwatchProbesOverdue", "severity": "ticket", "attribution": "modelwatch",
               **PROBE}
    states = states_once_suppressed(alertmanager, [
        {**daemon_alert("ModelwatchScheduleSlipping", "mw:9477", "ticket", "modelwatch"),
         "provider": "openai", "signal": "concurrency"},
        {**overdue, "instance": "mw:9477", "target": "gpt"},
        {**overdue, "instance": "mw:9477", "target": "claude", "provider": "anthropic"},
        {**overdue, "instance": "other:9477", "target": "gpt"},
        provider_alert("ModelwatchTTFTAboveBaseline", "mw:9477", "gpt-4o", "ticket"),
    ], ("ModelwatchProbesOverdue", "mw:9477", "gpt"))
    assert states == {
        ("ModelwatchScheduleSlipping", "mw:9477", ""): "active",
        ("ModelwatchProbesOverdue", "mw:9477", "gpt"): "suppressed",
        ("ModelwatchProbesOverdue", "mw:9477", "claude"): "active",   # another provider
        ("ModelwatchProbesOverdue", "other:9477", "gpt"): "active",   # another daemon
        ("ModelwatchTTFTAboveBaseline", "mw:9477", "gpt-4o"): "active",   # the wait is not in the timings
    }


@pytest.mark.parametrize("outcome", [o.value for o in outcomes.Outcome])
def test_the_status_page_and_report_count_each_outcome_as_the_rules_do(outcome):
    """One definition: figures.counts (report, status page, API) splits outcomes like the rules."""
    from modelwatch import figures

    sets = generator.outcome_sets(generator.DEFAULT_ATTRIBUTION)
    counted = figures.counts({outcome: 1})
    assert counted["provider_errors"] == (outcome in sets.provider)
    assert counted["our_errors"] == (outcome in sets.not_judged)
    assert counted["errors"] == (outcome != "ok")
    assert (counted["provider_availability"] is None) == (outcome in sets.not_judged)
