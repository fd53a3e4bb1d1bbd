"""The Chat Completions probe against the real simulator: every outcome and phase."""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_jobs, sim_log, write_config, ttft_reading_error
from modelwatch.config import load_config


def probe_models(tmp_path, sim_url, models: dict[str, str], **kw) -> dict:
    return run_jobs(load_config(write_config(tmp_path / "c.yaml", sim_url, models, **kw)).jobs)


def test_healthy_probe_records_every_phase_in_order(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"t": "healthy"})["t"]
    assert r.outcome == "ok", r
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.ttft_s >= 0.020  # the simulator waited 20 ms before the first token
    assert r.http_status == 200 and r.request_id.startswith("req_")
    assert r.input_tokens > 0 and r.output_tokens == 4
    assert r.error is None and r.error_code is None


FAILURES = {
    # model: (outcome, error_code, http_status)
    "err-rate": ("rate_limited", "rate_limit_exceeded", 429),
    "err-quota": ("quota_exhausted", "insufficient_quota", 429),
    "err-overloaded": ("overloaded", "slow_down", 503),
    "err-server": ("server_error", "server_error", 500),
    "err-gateway": ("server_error", "http_502", 502),
    "err-bad-request": ("bad_request", None, 400),
    "err-capacity": ("rate_limited", None, 498),
    "err-vllm": ("model_unavailable", None, 404),
    "err-gemini-array": ("overloaded", None, 503),
    "err-mistral": ("auth_error", "http_401", 401),
    "content-filter": ("content_blocked", "content_filter", 200),
    "midstream": ("server_error", None, 200),
    "disconnect": ("protocol_error", "disconnected", 200),
    "malformed": ("protocol_error", "malformed_chunk", 200),
    "no-done": ("protocol_error", "no_terminator", 200),
    "length-empty": ("protocol_error", "no_content", 200),
    "no-such-model": ("model_unavailable", "model_not_found", 404),
    # LiteLLM's router with every deployment in cooldown: the upstream is down, not our rate limit
    "litellm-cooldown": ("overloaded", "gateway_cooldown", 429),
    # llama-cpp-python interrupted by another request: content, [DONE], never a finish_reason
    "interrupted": ("protocol_error", "no_finish_reason", 200),
    # the body ends short of its chunked framing (FIN, not RST)
    "disconnect-close": ("protocol_error", "disconnected", 200),
    # an error body framed as one SSE event, status kept
    "err-rate-sse": ("rate_limited", "rate_limit_exceeded", 429),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert r.outcome == outcome, (model, r)
        if code is not None:
            assert r.error_code == code, (model, r)
        assert r.error_code, (model, "a failure always names its code")
        assert r.http_status == status, (model, r)
        assert r.duration_s is not None and r.duration_s < 3


def test_compatible_servers_may_close_after_finish_reason_without_done(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"n": "no-done"}, ptype="openai-compatible")["n"]
    assert r.outcome == "ok" and r.ttft_s is not None


def test_midstream_failures_keep_the_first_token_time(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {"m": "midstream", "d": "disconnect"})
    for r in results.values():
        assert r.ttft_s is not None and r.ttft_s < r.duration_s


def test_keepalive_comments_are_not_tokens(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"k": "keepalive"})["k"]
    assert r.outcome == "ok"
    assert r.ttft_s >= 0.2  # keep-alives arrived every 20 ms before it


@pytest.mark.parametrize("model,field", [("groq-usage", "x_groq"), ("no-usage", "none")])
def test_usage_placement(tmp_path, sim_url, model, field):
    r = probe_models(tmp_path, sim_url, {"u": model})["u"]
    assert r.outcome == "ok"
    if field == "none":
        assert r.input_tokens is None and r.output_tokens is None
    else:
        assert r.output_tokens == 4 and r.input_tokens > 0


@pytest.mark.slow
def test_phase_timeouts_name_the_phase(tmp_path, sim_url):
    ttfb = probe_models(tmp_path, sim_url, {"h": "slow-headers"}, timeout="5s",
                        extra_probe=", ttft_timeout: 400ms")["h"]
    assert (ttfb.outcome, ttfb.error_code) == ("timeout", "ttfb")
    assert 0.4 <= ttfb.duration_s < 1.0
    ttft = probe_models(tmp_path, sim_url, {"f": "slow-ttft"}, timeout="5s",
                        extra_probe=", ttft_timeout: 400ms")["f"]
    assert (ttft.outcome, ttft.error_code) == ("timeout", "ttft")
    assert ttft.ttfb_s is not None and ttft.ttft_s is None
    stall = probe_models(tmp_path, sim_url, {"s": "stall"}, timeout="500ms")["s"]
    assert (stall.outcome, stall.error_code) == ("timeout", "total")
    assert stall.ttft_s is not None


def test_connect_errors(tmp_path):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = probe_models(tmp_path, f"http://127.0.0.1:{port}", {"c": "healthy"})["c"]
    assert (r.outcome, r.error_code) == ("connect_error", "refused")
    assert r.connect_s is None and r.http_status is None


def test_bad_key_is_auth_error_and_the_echo_is_redacted(tmp_path, sim_url):
    key = "sk-bad-Canary000111222333444555"
    r = probe_models(tmp_path, sim_url, {"a": "healthy"}, key=key)["a"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "invalid_api_key", 401)
    assert "Incorrect API key" in r.error
    row = json.dumps(r.as_row())
    assert key not in row and key[:8] not in row and key[-4:] not in row


def test_response_size_is_capped(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"b": "busy"}, extra_probe=", max_response_bytes: 2048")["b"]
    assert (r.outcome, r.error_code) == ("protocol_error", "response_too_large")


def test_measured_ttft_matches_what_the_simulator_did(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {f"t{i}": "fixed-ttft" for i in range(3)})
    seen = sim_log(sim_url)
    for r in results.values():
        sim = seen[r.request_id]
        # The simulator times from its handler's entry; the probe also counts connect and send.
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert abs(r.ttft_s - 0.250) < 0.010


# ---------------------------------------------------------------- reasoning models


def test_reasoning_effort_reaches_the_server(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"r": "healthy"}, extra_probe=", reasoning_effort: low")["r"]
    assert r.outcome == "ok", r
    options = sim_log(sim_url)[r.request_id]["options"]
    assert options["reasoning_effort"] == "low"
    assert options["max_completion_tokens"] == 16 and "messages" not in options


def test_ttft_is_the_first_content_after_reasoning_and_usage_counts_it(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"r": "reasoner"}, extra_probe=", reasoning_effort: high")["r"]
    assert r.outcome == "ok", r
    sim = sim_log(sim_url)[r.request_id]
    assert sim["injected_ttft_s"] == pytest.approx(0.320)  # ttft_ms 20 + reasoning_ms 300
    assert 0 <= ttft_reading_error(r, sim) < 0.005 and r.ttft_s >= 0.320
    assert r.output_tokens == 3 + 6  # the reasoning tokens are billed as output


@pytest.mark.parametrize("effort", ["minimal", "none"])
def test_minimal_effort_removes_the_reasoning_delay(tmp_path, sim_url, effort):
    r = probe_models(tmp_path, sim_url, {"r": "reasoner"}, extra_probe=f", reasoning_effort: {effort}")["r"]
    assert r.outcome == "ok", r
    sim = sim_log(sim_url)[r.request_id]
    assert sim["injected_ttft_s"] == pytest.approx(0.020)
    assert r.ttft_s < 0.2 and r.output_tokens == 3


def test_reasoning_spends_a_small_cap_before_any_text(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"r": "reasoner"}, extra_probe=", max_tokens: 5")["r"]
    assert (r.outcome, r.error_code) == ("protocol_error", "no_content")
    assert r.output_tokens == 5


# ---------------------------------------------------------------- OpenAI-compatible servers (section 7)


COMPATIBLE = {
    # model: (outcome, error_code or None to skip, http_status, what it stands for)
    "keepalive": ("ok", None, 200, "DeepSeek/OpenRouter keep-alive comments before the first token"),
    "or-keepalive-no-done": ("ok", None, 200, "OpenRouter comments, usage on the last chunk, no [DONE]"),
    "deepseek-reasoner": ("ok", None, 200, "delta.reasoning_content before delta.content"),
    "ollama-thinker": ("ok", None, 200, "Ollama's delta.reasoning before delta.content, any key"),
    "no-done": ("ok", None, 200, "closes after finish_reason without [DONE]"),
    "compat-final-usage": ("ok", None, 200, "usage on the final chunk without include_usage"),
    "groq-usage": ("ok", None, 200, "usage inside x_groq"),
    "err-vllm": ("model_unavailable", "notfounderror", 404, "vLLM flat error, numeric code"),
    "vllm-bad-request": ("bad_request", "badrequesterror", 400, "vLLM flat error, numeric code"),
    "vllm-midstream": ("server_error", "internalservererror", 200, "vLLM error chunk inside the stream"),
    "err-gemini-array": ("overloaded", "unavailable", 503, "Gemini-compat error array"),
    "err-mistral": ("auth_error", "http_401", 401, "Mistral's detail body"),
    "err-capacity": ("rate_limited", "capacity_exceeded", 498, "Groq flex capacity"),
    "or-rate": ("rate_limited", "tokens", 429, "OpenRouter's numeric error code"),
    "or-quota": ("quota_exhausted", "insufficient_quota", 429, "OpenRouter's numeric error code"),
    "or-midstream": ("server_error", "server_error", 200, "numeric code inside the stream"),
    "ollama-busy": ("overloaded", "api_error", 503, "Ollama's api_error type"),
    "ollama-missing": ("model_unavailable", "not_found_error", 404, "Ollama's model not pulled"),
}


def test_compatible_server_deviations_under_openai_compatible(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {m: m for m in COMPATIBLE}, ptype="openai-compatible")
    for model, (outcome, code, status, why) in COMPATIBLE.items():
        r = results[model]
        assert (r.outcome, r.http_status) == (outcome, status), (model, why, r)
        if code is not None:
            assert r.error_code == code, (model, why, r)
        if outcome == "ok":
            assert r.ttft_s is not None, (model, why, r)
            assert (r.output_tokens is None) == (model == "no-done"), (model, why, r)  # no-done sends no usage
    assert results["keepalive"].ttft_s >= 0.2  # comments are not tokens
    assert results["ollama-thinker"].ttft_s >= 0.170  # reasoning deltas are not the first token
    assert results["deepseek-reasoner"].ttft_s >= 0.150
    assert results["ollama-thinker"].output_tokens == 3 + 4


def test_ollama_reads_max_tokens_only(tmp_path, sim_url):
    """Why openai-compatible probes send max_tokens: Ollama ignores max_completion_tokens."""
    plain = probe_models(tmp_path, sim_url, {"o": "ollama-capped"}, ptype="openai-compatible")["o"]
    assert plain.outcome == "ok" and plain.output_tokens == 16
    ignored = probe_models(tmp_path, sim_url, {"o": "ollama-capped"}, ptype="openai-compatible",
                           extra_probe=", max_tokens_field: max_completion_tokens")["o"]
    assert ignored.outcome == "ok" and ignored.output_tokens == 20


def test_missing_ollama_model_is_model_unavailable_with_ollamas_message(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"o": "ollama-missing"}, ptype="openai-compatible")["o"]
    assert (r.outcome, r.error_code, r.http_status) == ("model_unavailable", "not_found_error", 404)
    assert 'model "ollama-missing" not found, try pulling it first' in r.error


def test_extra_body_reaches_the_server_and_turns_reasoning_off(tmp_path, sim_url):
    on = probe_models(tmp_path, sim_url, {"r": "reasoner"}, ptype="openai-compatible")["r"]
    off = probe_models(tmp_path, sim_url, {"r": "reasoner"}, ptype="openai-compatible",
                       extra_probe=", extra_body: {reasoning: {enabled: false}}")["r"]
    assert on.outcome == off.outcome == "ok"
    options = sim_log(sim_url)[off.request_id]["options"]
    assert options["reasoning"] == {"enabled": False} and options["max_tokens"] == 16
    assert on.ttft_s >= 0.320 > off.ttft_s
    assert (on.output_tokens, off.output_tokens) == (3 + 6, 3)


def test_interrupted_stream_is_ok_only_where_finish_reasons_are_optional(tmp_path, sim_url):
    path = write_config(tmp_path / "c.yaml", sim_url, {"i": "interrupted"}, ptype="openai-compatible")
    strict = run_jobs(load_config(path).jobs)["i"]
    assert (strict.outcome, strict.error_code) == ("protocol_error", "no_finish_reason")
    assert strict.ttft_s is not None and "cut off" in strict.error
    path.write_text(path.read_text().replace("type: openai-compatible,",
                                             "type: openai-compatible, finish_reason: optional,"))
    lenient = run_jobs(load_config(path).jobs)["i"]
    assert (lenient.outcome, lenient.error_code) == ("ok", None)


def test_a_body_cut_short_does_not_read_like_an_http_400(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"d": "disconnect-close"})["d"]
    assert (r.outcome, r.error_code, r.http_status) == ("protocol_error", "disconnected", 200)
    assert r.error.startswith("connection closed mid-response after ") and "400" not in r.error, r.error


def test_litellm_call_id_is_the_request_id(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"l": "litellm-healthy"})["l"]
    assert r.outcome == "ok", r
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", r.request_id), r


def test_litellm_cooldown_says_so(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"c": "litellm-cooldown"})["c"]
    assert "No deployments available for selected model" in r.error
    assert r.request_id  # from x-litellm-call-id on the error too


def test_a_stall_before_any_header_is_ttfb_without_a_ttft_budget(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"h": "slow-headers"}, timeout="500ms")["h"]
    assert (r.outcome, r.error_code) == ("timeout", "ttfb"), r
    assert r.ttfb_s is None and 0.4 <= r.duration_s < 1.0


def test_a_missing_endpoint_names_its_path_and_not_the_query(tmp_path, sim_url):
    """The simulator answers unknown paths as OpenAI does (404 "Invalid URL"): a wrong base_url,
    not a missing model."""
    r = probe_models(tmp_path, sim_url + "/nothing", {"e": "healthy"})["e"]
    assert (r.outcome, r.error_code, r.http_status) == ("model_unavailable", "endpoint_not_found", 404)
    assert "POST /nothing/v1/chat/completions" in r.error
    cfg = tmp_path / "azure.yaml"
    cfg.write_text(f"providers:\n  az: {{type: azure-openai, base_url: '{sim_url}/nothing/openai', "
                   f"api_version: '2024-10-21', api_key: 'sk-test-Fixture0000111122223333'}}\n"
                   "targets:\n  - {name: a, provider: az, model: healthy, probes: [{kind: rest}]}\n")
    a = run_jobs(load_config(cfg).jobs)["a"]
    assert (a.outcome, a.error_code) == ("model_unavailable", "endpoint_not_found")
    assert "/nothing/openai/deployments/healthy/chat/completions" in a.error and "api-version" not in a.error


def test_every_probe_type_names_a_missing_endpoint(tmp_path, sim_url):
    """Realtime upgrades, Anthropic, Gemini and the models check read a 404 for the path the same way."""
    base, key = f"{sim_url}/nothing", "sk-test-Fixture0000111122223333"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "providers:\n"
        f"  o: {{type: openai, base_url: '{base}/v1', api_key: '{key}'}}\n"
        f"  a: {{type: anthropic, base_url: '{base}/v1', api_key: '{key}'}}\n"
        f"  g: {{type: gemini, base_url: '{base}/v1beta', api_key: '{key}'}}\n"
        "targets:\n"
        "  - {name: rt, provider: o, model: rt-healthy, probes: [{kind: realtime}]}\n"
        "  - {name: list, provider: o, model: healthy, probes: [{kind: models}]}\n"
        "  - {name: anth, provider: a, model: anth-healthy, probes: [{kind: rest}]}\n"
        "  - {name: gem, provider: g, model: gemini-healthy, probes: [{kind: rest}]}\n")
    results = run_jobs(load_config(cfg).jobs)
    paths = {"rt": "GET /nothing/v1/realtime", "list": "GET /nothing/v1/models",
             "anth": "POST /nothing/v1/messages", "gem": "POST /nothing/v1beta/models/gemini-healthy"}
    for target, path in paths.items():
        r = results[target]
        assert (r.outcome, r.error_code, r.http_status) == ("model_unavailable", "endpoint_not_found", 404), r
        assert f"no endpoint at {path}" in r.error and "?" not in r.error, r.error
