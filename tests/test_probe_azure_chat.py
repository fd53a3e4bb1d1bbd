"""The Chat Completions probe on ``type: azure-openai`` against the real simulator: both URL forms."""

from __future__ import annotations

import json

import pytest

from conftest import TEST_KEY, run_jobs, sim_log, write_config, ttft_reading_error
from modelwatch.config import load_config

API_VERSION = "2025-04-01-preview"


def probe_v1(tmp_path, sim_url, models: dict[str, str], **kw) -> dict:
    """The v1 form: ``{base_url}/chat/completions`` with ``base_url`` ``…/openai/v1``."""
    cfg = load_config(write_config(tmp_path / "c.yaml", sim_url + "/openai", models, ptype="azure-openai", **kw))
    return run_jobs(cfg.jobs)


def probe_dated(tmp_path, sim_url, models: dict[str, str], key: str = TEST_KEY) -> dict:
    """The dated form: ``{base_url}/deployments/{model}/chat/completions?api-version=…``."""
    path = tmp_path / "dated.yaml"
    lines = [f"storage: {{path: {tmp_path / 'm.db'}}}", "providers:",
             f"  az: {{type: azure-openai, base_url: '{sim_url}/openai', api_key: '{key}', "
             f"api_version: '{API_VERSION}'}}", "targets:"]
    lines += [f"  - {{name: {name}, provider: az, model: {model}, probes: [{{kind: rest, timeout: 3s}}]}}"
              for name, model in models.items()]
    path.write_text("\n".join(lines) + "\n")
    return run_jobs(load_config(path).jobs)


FORMS = {"v1": probe_v1, "dated": probe_dated}


@pytest.mark.parametrize("form", FORMS)
def test_healthy_probe_on_each_url_form(tmp_path, sim_url, form):
    r = FORMS[form](tmp_path, sim_url, {"z": "az-healthy"})["z"]
    assert r.outcome == "ok", r
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.input_tokens > 0 and r.output_tokens == 4 and r.request_id.startswith("req_")
    entry = sim_log(sim_url)[r.request_id]
    path = {"v1": "/openai/v1/chat/completions", "dated": "/openai/deployments/az-healthy/chat/completions"}[form]
    assert (entry["path"], entry["model"], entry["outcome"]) == (path, "az-healthy", "ok")


FAILURES = {
    # model: (outcome, error_code, http_status)
    "az-rate": ("rate_limited", "http_429", 429),  # Azure's {"code": "429"}
    "az-quota": ("quota_exhausted", "insufficient_quota", 429),
    "az-overloaded": ("overloaded", "slow_down", 503),
    "az-server": ("server_error", "server_error", 500),
    "az-gateway": ("server_error", "http_502", 502),
    "az-content-filter": ("content_blocked", "content_filter", 200),
    "az-filter-after-text": ("content_blocked", "content_filter", 200),
    "no-such-deployment": ("model_unavailable", "deploymentnotfound", 404),
}


@pytest.mark.parametrize("form", FORMS)
def test_each_failure_is_classified(tmp_path, sim_url, form):
    results = FORMS[form](tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert (r.outcome, r.error_code, r.http_status) == (outcome, code, status), (form, model, r)
        assert r.duration_s is not None and r.duration_s < 3
    assert "deployment for this resource does not exist" in results["no-such-deployment"].error
    assert "exceeded token rate limit" in results["az-rate"].error


@pytest.mark.parametrize("form", FORMS)
def test_refused_key_is_auth_error_without_an_echo(tmp_path, sim_url, form):
    key = "sk-bad-AzureCanary0001112223334445"
    r = FORMS[form](tmp_path, sim_url, {"a": "az-healthy"}, key=key)["a"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "http_401", 401)
    assert "Access denied" in r.error
    row = json.dumps(r.as_row())
    assert key not in row and key[-4:] not in row


@pytest.mark.parametrize("form", FORMS)
def test_measured_ttft_matches_what_the_simulator_did(tmp_path, sim_url, form):
    results = FORMS[form](tmp_path, sim_url, {f"t{i}": "az-fixed-ttft" for i in range(3)})
    seen = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = seen[r.request_id]
        assert sim["injected_ttft_s"] == 0.250
        # The simulator times from its handler's entry; the probe also counts connect and send.
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert 0.250 <= r.ttft_s < 0.265
