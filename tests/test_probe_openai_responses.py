"""The Responses API probe (``api: responses``) against the real simulator: every outcome and phase."""

from __future__ import annotations

import json

import pytest

from conftest import TEST_KEY, run_jobs, sim_log, write_config, ttft_reading_error
from modelwatch.config import load_config

RESPONSES = ", api: responses"


def probe_models(tmp_path, sim_url, models: dict[str, str], extra_probe: str = "", **kw) -> dict:
    cfg = load_config(write_config(tmp_path / "c.yaml", sim_url, models, extra_probe=RESPONSES + extra_probe, **kw))
    return run_jobs(cfg.jobs)


def test_healthy_probe_records_every_phase_in_order(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"t": "resp-healthy"})["t"]
    assert r.outcome == "ok", r
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.ttft_s >= 0.020  # the simulator waited 20 ms before the first delta
    assert r.http_status == 200 and r.request_id.startswith("req_")
    assert r.input_tokens > 0 and r.output_tokens == 4
    assert r.error is None and r.error_code is None
    entry = sim_log(sim_url)[r.request_id]
    assert entry["path"] == "/v1/responses" and entry["outcome"] == "ok"


def test_chat_stays_the_default_api(tmp_path, sim_url):
    cfg = load_config(write_config(tmp_path / "c.yaml", sim_url, {"c": "healthy"}))
    r = run_jobs(cfg.jobs)["c"]
    assert r.outcome == "ok"
    assert sim_log(sim_url)[r.request_id]["path"] == "/v1/chat/completions"


FAILURES = {
    # model: (outcome, error_code, http_status)
    "resp-rate": ("rate_limited", "rate_limit_exceeded", 429),
    "resp-quota": ("quota_exhausted", "insufficient_quota", 429),
    "resp-overloaded": ("overloaded", "slow_down", 503),
    "resp-server": ("server_error", "server_error", 500),
    "resp-gateway": ("server_error", "http_502", 502),
    "resp-bad-request": ("bad_request", "unsupported_parameter", 400),
    "resp-no-such-model": ("model_unavailable", "model_not_found", 404),
    "resp-content-filter": ("content_blocked", "content_filter", 200),
    "resp-filter-after-text": ("content_blocked", "content_filter", 200),
    "resp-failed-server": ("server_error", "server_error", 200),
    "resp-failed-rate": ("rate_limited", "rate_limit_exceeded", 200),
    "resp-failed-prompt": ("bad_request", "invalid_prompt", 200),
    "resp-error-event": ("server_error", "server_error", 200),
    "resp-midstream": ("server_error", "server_error", 200),
    "resp-disconnect": ("protocol_error", "disconnected", 200),
    "resp-malformed": ("protocol_error", "malformed_chunk", 200),
    "resp-length-empty": ("protocol_error", "no_content", 200),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert (r.outcome, r.error_code, r.http_status) == (outcome, code, status), (model, r)
        assert r.duration_s is not None and r.duration_s < 3


def test_failed_responses_keep_their_usage(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"f": "resp-failed-rate"})["f"]
    assert r.outcome == "rate_limited" and r.input_tokens > 0 and r.output_tokens == 0


def test_midstream_failures_keep_the_first_token_time(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {"m": "resp-midstream", "d": "resp-disconnect"})
    for r in results.values():
        assert r.ttft_s is not None and r.ttft_s < r.duration_s, r


def test_the_output_cap_is_clamped_and_reaching_it_is_ok(tmp_path, sim_url):
    # max_tokens 4 would be a 400 from the API (minimum 16); the probe asks for 16 and stops there.
    r = probe_models(tmp_path, sim_url, {"c": "resp-capped"}, extra_probe=", max_tokens: 4")["c"]
    assert r.outcome == "ok", r
    assert r.output_tokens == 16 and r.error_code is None


def test_reasoning_effort_reaches_the_server(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"r": "resp-healthy"}, extra_probe=", reasoning_effort: low")["r"]
    assert r.outcome == "ok", r
    options = sim_log(sim_url)[r.request_id]["options"]
    assert options["reasoning"] == {"effort": "low"} and options["max_output_tokens"] == 16


def test_ttft_is_the_first_text_after_the_reasoning_item(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {f"r{i}": "reasoner-fixed" for i in range(2)},
                           extra_probe=", reasoning_effort: medium, max_tokens: 64")
    seen = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = seen[r.request_id]
        assert sim["injected_ttft_s"] == pytest.approx(0.250)  # ttft_ms 50 + reasoning_ms 200
        # The first text, not the reasoning item 200 ms earlier (10 ms: the reasoning events add writes).
        assert 0 <= ttft_reading_error(r, sim) < 0.010, (r.ttft_s, sim)
        assert r.output_tokens == 3 + 6


def test_minimal_effort_removes_the_reasoning_delay(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"r": "reasoner-fixed"}, extra_probe=", reasoning_effort: minimal")["r"]
    assert r.outcome == "ok", r
    assert sim_log(sim_url)[r.request_id]["injected_ttft_s"] == pytest.approx(0.050)
    assert r.ttft_s < 0.2 and r.output_tokens == 3


def test_keepalive_comments_are_not_tokens(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"k": "resp-keepalive"})["k"]
    assert r.outcome == "ok" and r.ttft_s >= 0.2


def test_missing_usage_leaves_tokens_empty(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"u": "resp-no-usage"})["u"]
    assert r.outcome == "ok" and (r.input_tokens, r.output_tokens) == (None, None)


@pytest.mark.slow
def test_phase_timeouts_name_the_phase(tmp_path, sim_url):
    ttft = probe_models(tmp_path, sim_url, {"f": "resp-slow-ttft"}, timeout="5s",
                        extra_probe=", ttft_timeout: 400ms")["f"]
    assert (ttft.outcome, ttft.error_code) == ("timeout", "ttft")
    assert ttft.ttfb_s is not None and ttft.ttft_s is None and 0.4 <= ttft.duration_s < 1.0
    stall = probe_models(tmp_path, sim_url, {"s": "resp-stall"}, timeout="500ms")["s"]
    assert (stall.outcome, stall.error_code) == ("timeout", "total")
    assert stall.ttft_s is not None


def test_bad_key_is_auth_error_and_the_echo_is_redacted(tmp_path, sim_url):
    key = "sk-bad-Canary000111222333444555"
    r = probe_models(tmp_path, sim_url, {"a": "resp-healthy"}, key=key)["a"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "invalid_api_key", 401)
    row = json.dumps(r.as_row())
    assert key not in row and key[:8] not in row and key[-4:] not in row


def test_response_size_is_capped(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"b": "resp-healthy"}, extra_probe=", max_response_bytes: 1024")["b"]
    assert (r.outcome, r.error_code) == ("protocol_error", "response_too_large")


def test_azure_v1_form_uses_the_api_key_header(tmp_path, sim_url):
    cfg = load_config(write_config(tmp_path / "c.yaml", sim_url + "/openai", {"z": "resp-healthy"},
                                   extra_probe=RESPONSES, ptype="azure-openai"))
    r = run_jobs(cfg.jobs)["z"]
    assert r.outcome == "ok", r
    assert sim_log(sim_url)[r.request_id]["path"] == "/openai/v1/responses"


def test_azure_dated_form_sends_the_api_version(tmp_path, sim_url):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"storage: {{path: {tmp_path / 'm.db'}}}\n"
        "providers:\n"
        f"  az: {{type: azure-openai, base_url: '{sim_url}/openai', api_key: '{TEST_KEY}',"
        " api_version: 2025-04-01-preview}\n"
        "targets:\n"
        "  - {name: z, provider: az, model: resp-healthy, probes: [{kind: rest, api: responses, timeout: 3s}]}\n")
    r = run_jobs(load_config(path).jobs)["z"]
    assert r.outcome == "ok", r
    assert sim_log(sim_url)[r.request_id]["path"] == "/openai/responses"


def test_measured_ttft_matches_what_the_simulator_did(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {f"t{i}": "resp-fixed-ttft" for i in range(3)})
    seen = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = seen[r.request_id]
        assert sim["injected_ttft_s"] == 0.250
        # The simulator times from its handler's entry; the probe also counts connect and send.
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert 0.250 <= r.ttft_s < 0.265
