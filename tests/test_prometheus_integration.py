"""The whole monitoring path for real: simulator -> modelwatch run -> Prometheus -> rules and panels.

A real Prometheus server (Debian's ``prometheus`` package) scrapes a real
daemon probing the simulator every second, with the shipped alert rules
loaded. Then every query of every shipped dashboard panel, its template
variables substituted, runs through Prometheus's HTTP API and must return
data (the overdue count must count the stalled probe), every rule must evaluate
without error, and each failing target must raise its own alerts and no others.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from conftest import TEST_KEY, free_port
from daemon_helpers import http_get, running_daemon, wait_for

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

ROOT = Path(__file__).parent.parent
RULES = ROOT / "prometheus" / "rules" / "modelwatch.rules.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# Template variable values: every target, kind and provider; the location the daemon sets.
# Short windows: the run lasts about half a minute, scraped every second.
VALUES = {"datasource": "prometheus", "location": "lab", "provider": ".*", "target": ".*", "kind": ".*",
          "model": ".*", "__rate_interval": "30s", "__interval": "5s", "__range": "2m", "__range_s": "120"}


def load_dashboards_module():
    spec = importlib.util.spec_from_file_location("mw_dashboards", ROOT / "grafana" / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_daemon_config(tmp_path: Path, sim_url: str, port: int) -> Path:
    path = tmp_path / "modelwatch.yaml"
    path.write_text(f"""
storage: {{path: {tmp_path / 'mw.db'}}}
server: {{listen: '127.0.0.1:{port}'}}
location: lab
defaults: {{interval: 1s, timeout: 3s}}
budget: {{daily_usd: 100}}
providers:
  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: '{TEST_KEY}'}}
targets:
  - {{name: healthy, provider: sim, model: healthy, price: {{input: 0.15, output: 0.60}},
      probes: [{{kind: rest}}, {{kind: models}}]}}
  - {{name: limited, provider: sim, model: err-rate, probes: [{{kind: rest}}]}}
  - {{name: broken, provider: sim, model: err-server, probes: [{{kind: rest}}]}}
  - {{name: realtime, provider: sim, model: rt-healthy, price: {{input: 0.6, output: 2.4}},
      probes: [{{kind: realtime}}]}}
  # the same model over WebRTC, as a browser calls it (issue 14): beside the WebSocket probe above
  - {{name: realtime-webrtc, provider: sim, model: rt-healthy, price: {{input: 0.6, output: 2.4}},
      probes: [{{kind: realtime, transport: webrtc}}]}}
  # every run stalls into its 2 s timeout: results come 4 intervals apart, so it is overdue
  - {{name: stuck, provider: sim, model: stall, probes: [{{kind: rest, interval: 500ms, timeout: 2s}}]}}
  # voice agents, for the Voice agents panels: a realtime audio session beside a REST voice chain,
  # conversations over the Realtime WebSocket and over REST with history, and barge-in
  - {{name: voice-rt, provider: sim, model: rt-healthy,
      probes: [{{kind: realtime, modality: audio}}, {{kind: conversation, api: realtime, turns: 3}}]}}
  - {{name: voice-chain, provider: sim, model: vc-llm,
      probes: [{{kind: voice-chain, stt_model: vc-stt, tts_model: vc-tts}}, {{kind: conversation, turns: 3}}]}}
  - {{name: barge-in, provider: sim, model: rt-barge-in,
      probes: [{{kind: realtime, modality: audio, interrupt_after: 100ms}}]}}
""")
    return path


def write_prometheus_config(tmp_path: Path, daemon_port: int) -> Path:
    path = tmp_path / "prometheus.yml"
    path.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ['{RULES}']
scrape_configs:
  - job_name: modelwatch
    static_configs: [{{targets: ['127.0.0.1:{daemon_port}']}}]
""")
    return path


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(http_get(url) or "{}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, sim_url):
    """A daemon probing the simulator and a Prometheus scraping it, both for real; yields the API base."""
    binary = shutil.which("prometheus")
    assert binary, "the Prometheus server is missing: apt-get install -y prometheus"
    tmp = tmp_path_factory.mktemp("prom")
    daemon_port, prom_port = free_port(), free_port()
    config = write_daemon_config(tmp, sim_url, daemon_port)
    with running_daemon(config, daemon_port):
        proc = subprocess.Popen(
            [binary, f"--config.file={write_prometheus_config(tmp, daemon_port)}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{prom_port}"
        try:
            wait_for(lambda: http_get(base + "/-/ready") is not None or proc.poll() is not None, 30)
            assert proc.poll() is None, proc.stderr.read()
            # Enough scrapes for 30 s rate windows and histogram quantiles over every series.
            wait_for(lambda: len(query(base, 'count_over_time(up{job="modelwatch"}[1m])')
                                 .get("data", {}).get("result", [])) == 1
                     and float(query(base, 'count_over_time(up{job="modelwatch"}[1m])')
                               ["data"]["result"][0]["value"][1]) >= 25, 60, every=1)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_daemon_is_scraped_and_every_rule_evaluates(prometheus):
    assert query(prometheus, 'up{job="modelwatch"}')["data"]["result"][0]["value"][1] == "1"
    groups = json.loads(http_get(prometheus + "/api/v1/rules"))["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules, "no rules loaded"
    broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not broken, broken


def alerts_by_target(base: str) -> dict[str, dict[str, dict]]:
    """target -> alertname -> the alert, for every pending or firing alert Prometheus holds."""
    by_target: dict[str, dict[str, dict]] = {}
    for alert in json.loads(http_get(base + "/api/v1/alerts"))["data"]["alerts"]:
        by_target.setdefault(alert["labels"].get("target"), {})[alert["labels"]["alertname"]] = alert
    return by_target


def test_failing_targets_fire_their_alerts_and_healthy_ones_do_not(prometheus):
    """Each failure mode raises its own alerts (pending: every `for:` outlasts the run), nothing else.

    By the time the fixture yields, each target has had ~25 one-second probes: far past every
    minimum count, so which alerts are active is deterministic; none has waited out its `for:`.
    """
    by_target = alerts_by_target(prometheus)
    assert "healthy" not in by_target, sorted(by_target.get("healthy", {}))
    assert "realtime" not in by_target, sorted(by_target.get("realtime", {}))
    for voice in ("voice-rt", "voice-chain"):   # realtime audio, a voice chain, both conversations
        assert voice not in by_target, (voice, sorted(by_target.get(voice, {})))
    # 429s are reported apart from availability: no provider alert for a rate-limited target.
    assert set(by_target.get("limited", {})) == {"ModelwatchRateLimited"}
    # Every probe a 500: the failure ratio and both burn rates, but no rate limit or config ticket.
    assert set(by_target.get("broken", {})) == {"ModelwatchProviderFailing", "ModelwatchErrorBudgetBurnFast",
                                                "ModelwatchErrorBudgetBurnSlow"}
    # Every run stalls into its 2 s timeout at a 500 ms interval: overdue, and failing (timeouts).
    stuck = by_target.get("stuck", {})
    assert {"ModelwatchProbesOverdue", "ModelwatchProviderFailing"} <= set(stuck), sorted(stuck)
    assert float(stuck["ModelwatchProbesOverdue"]["value"]) > 3   # its age in intervals
    for target in ("limited", "broken", "stuck"):
        for name, alert in by_target[target].items():
            assert alert["state"] in {"pending", "firing"}, (name, alert["state"])
            assert alert["labels"]["location"] == "lab", alert["labels"]   # the daemon's label is kept
    # One provider behind every target: never our network.
    assert not any("ModelwatchLocalNetworkDown" in alerts for alerts in by_target.values())


def panel_cases() -> list[tuple[str, str, str]]:
    module = load_dashboards_module()
    cases = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for title, expr in module.panel_queries(dashboard):
            cases.append((path.stem, title, module.substitute(expr, VALUES)))
    return cases


@pytest.mark.parametrize("dashboard, panel, expr", panel_cases(),
                         ids=lambda v: v if len(v) < 40 else v[:40])
def test_every_dashboard_panel_query_returns_data(prometheus, dashboard, panel, expr):
    answer = query(prometheus, expr)
    assert answer.get("status") == "success", (panel, expr, answer)
    assert answer["data"]["result"], f"{dashboard} / {panel}: no data for {expr}"


def test_the_probes_overdue_panel_counts_the_stuck_probe(prometheus):
    """The panel's query ends in `or vector(0)`, so returning data proves nothing: it must count one."""
    exprs = [expr for _, panel, expr in panel_cases() if panel == "Probes overdue"]
    assert len(exprs) == 1, "the overview has one 'Probes overdue' panel"
    result = query(prometheus, exprs[0])["data"]["result"]
    assert len(result) == 1 and float(result[0]["value"][1]) >= 1, result
    stuck = query(prometheus, 'modelwatch:probe_last_result_age:intervals{target="stuck"} > 3')["data"]["result"]
    assert len(stuck) == 1, "the stalled probe is the one overdue"


def panel_results(base: str, title: str, dashboard: str = "modelwatch-target") -> list[list[dict]]:
    """What each query of one panel returns, in query order."""
    exprs = [expr for board, panel, expr in panel_cases() if board == dashboard and panel == title]
    assert exprs, f"{dashboard} has no panel {title!r}"
    return [query(base, expr)["data"]["result"] for expr in exprs]


def measured(result: list[dict], *labels: str) -> set[tuple[str, ...]]:
    """The label values of the series that hold a number (a quantile of an empty histogram is NaN)."""
    return {tuple(r["metric"].get(name, "") for name in labels) for r in result
            if not math.isnan(float(r["value"][1]))}


def test_the_voice_panels_show_what_they_say(prometheus):
    """Returning data is not enough for the voice panels: a quantile of an empty histogram is NaN."""
    # Time to first audio: the realtime audio session beside the voice chain; the joins keep the
    # text probes (target realtime, the text conversation of voice-rt) out.
    for dashboard in ("modelwatch-target", "modelwatch-overview"):
        for result in panel_results(prometheus, "Time to first audio: realtime vs chain", dashboard):
            assert {("voice-rt", "realtime"), ("voice-chain", "voice-chain")} <= measured(result, "target", "kind")
            shown = {(r["metric"]["target"], r["metric"]["kind"]) for r in result}
            assert not shown & {("realtime", "realtime"), ("voice-rt", "conversation")}, shown
        # TTFT by turn band: the Realtime and the REST conversation, the api from modelwatch_probe_info
        (result,) = panel_results(prometheus, "TTFT by turn band: realtime vs REST", dashboard)
        assert measured(result, "target", "api", "turn_band") == {("voice-rt", "realtime", "1-5"),
                                                                 ("voice-chain", "chat", "1-5")}
    # Voice chain stages: one query per stage, in the order the chain runs them
    stages = panel_results(prometheus, "Voice chain stages")
    assert [measured(result, "target", "stage") for result in stages] == [
        {("voice-chain", "stt")}, {("voice-chain", "llm")}, {("voice-chain", "tts")}]


def test_the_barge_in_probe_is_acknowledged(prometheus):
    """The barge-in probe succeeds (cancel acknowledged, the item truncated, no audio after) and its
    acknowledgement time reaches the Barge-in panel. Needs the simulator's barge-in support
    (conversation.item.truncate, cancel_ms)."""
    outcomes = query(prometheus, 'sum by (outcome) (increase(modelwatch_probes_total{target="barge-in"}[1m])) > 0')
    assert {r["metric"]["outcome"] for r in outcomes["data"]["result"]} == {"ok"}, outcomes["data"]["result"]
    for result in panel_results(prometheus, "Barge-in acknowledgement"):
        assert measured(result, "target", "kind") == {("barge-in", "realtime")}
