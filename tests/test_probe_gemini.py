"""The Gemini REST probe against the real simulator: phases, tokens, every outcome, timing truth."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp
import pytest

from conftest import write_config, ttft_reading_error
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, probe_trace, run_probe

KEY = "AIzaSyFixtureKey0123456789abcdefghijk"


def probe_models(tmp_path, sim_url, models: dict[str, str], *, version: str = "v1", http=None, **kw) -> dict:
    """Probe each ``{target: model}`` once with a gemini rest probe; results by target."""
    path = write_config(tmp_path / "c.yaml", sim_url, models, ptype="gemini", key=kw.pop("key", KEY), **kw)
    if version != "v1":
        path.write_text(path.read_text().replace(f"{sim_url}/v1'", f"{sim_url}/{version}'"))
    cfg = load_config(path)

    async def go():
        session = http() if http else new_http_session()
        async with session:
            results = await asyncio.gather(*(run_probe(j, session, prober_for("gemini", j.probe.kind))
                                             for j in cfg.jobs))
        return {r.target: r for r in results}
    return asyncio.run(go())


def sim_requests(sim_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        return json.load(resp)


def test_healthy_probe_records_every_phase_in_order(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"t": "gem-healthy"})["t"]
    assert r.outcome == "ok", r
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.ttft_s >= 0.020 and r.ttfb_s >= 0.005
    assert r.http_status == 200 and r.error is None and r.error_code is None
    assert r.input_tokens > 0 and r.output_tokens == 4
    # No request-id header at Google: the id is the chunks' responseId, which the sim logs.
    assert r.request_id in {rec["request_id"] for rec in sim_requests(sim_url)}


def test_v1beta_base_url_works_too(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"b": "gem-healthy"}, version="v1beta")["b"]
    assert r.outcome == "ok", r
    [rec] = [rec for rec in sim_requests(sim_url) if rec["request_id"] == r.request_id]
    assert rec["path"] == "/v1beta/models/gem-healthy:streamGenerateContent"


def test_thought_parts_do_not_count_as_the_first_token(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"t": "gem-thinking"})["t"]
    assert r.outcome == "ok", r
    assert r.ttft_s >= 0.060  # thoughts streamed from ~17 ms on; text only at 60 ms
    assert r.output_tokens == 3 + 4  # text plus the billed thinking tokens


def test_thinking_budget_zero_is_sent(tmp_path, sim_url):
    # 20 thinking tokens exhaust the 16-token cap before any text, unless thinking is off.
    thinking = probe_models(tmp_path, sim_url, {"t": "gem-thinks-long"})["t"]
    assert (thinking.outcome, thinking.error_code) == ("protocol_error", "no_content")
    assert thinking.output_tokens == 16
    off = probe_models(tmp_path, sim_url, {"t": "gem-thinks-long"}, extra_probe=", thinking_budget: 0")["t"]
    assert off.outcome == "ok" and off.output_tokens == 3


def test_thinking_level_is_sent_as_the_sdk_sends_it(tmp_path, sim_url):
    """Gemini 3 models take a level: minimal turns the thinking off, low leaves it on."""
    minimal = probe_models(tmp_path, sim_url, {"t": "gem-thinking"}, extra_probe=", thinking_level: minimal")["t"]
    low = probe_models(tmp_path, sim_url, {"t": "gem-thinking"}, extra_probe=", thinking_level: low")["t"]
    assert minimal.outcome == low.outcome == "ok"
    assert (minimal.output_tokens, low.output_tokens) == (3, 3 + 4)
    options = {e["request_id"]: e["options"] for e in sim_requests(sim_url)}
    assert options[minimal.request_id]["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "MINIMAL"}
    assert options[low.request_id]["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "LOW"}


def test_max_tokens_finish_with_text_is_ok(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"c": "gem-capped"}, extra_probe=", max_tokens: 5")["c"]
    assert r.outcome == "ok" and r.output_tokens == 5


FAILURES = {
    # model: (outcome, error_code, http_status)
    "gem-err-quota": ("quota_exhausted", "generate_requests_per_day_per_project_per_model_free_tier", 429),
    "gem-err-rate": ("rate_limited", "generate_requests_per_minute_per_project_per_model_free_tier", 429),
    "gem-err-capacity": ("rate_limited", "generate_content_input_tokens_per_model_per_minute_free_tier", 429),
    "gem-err-overloaded": ("overloaded", "unavailable", 503),
    "gem-err-server": ("server_error", "internal", 500),
    "gem-err-gateway": ("server_error", "http_502", 502),
    "gem-err-gateway-timeout": ("server_error", "http_504", 504),
    "gem-err-bad-request": ("bad_request", "invalid_argument", 400),
    "gem-err-model": ("model_unavailable", "not_found", 404),
    "gem-no-such-model": ("model_unavailable", "not_found", 404),
    "gem-err-array": ("overloaded", "unavailable", 503),
    "gem-blocked": ("content_blocked", "safety", 200),
    "gem-safety": ("content_blocked", "safety", 200),
    "gem-midstream": ("server_error", "internal", 200),
    "gem-raw-error": ("server_error", "internal", 200),
    "gem-disconnect": ("protocol_error", "disconnected", 200),
    "gem-malformed": ("protocol_error", "malformed_chunk", 200),
    "gem-no-text": ("protocol_error", "no_content", 200),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert (r.outcome, r.error_code, r.http_status) == (outcome, code, status), (model, r)
        assert r.error, (model, "a failure says why")
        assert r.duration_s is not None and r.duration_s < 3


def test_midstream_failures_keep_the_first_token_time(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {"m": "gem-midstream", "r": "gem-raw-error", "d": "gem-disconnect"})
    for r in results.values():
        assert r.ttft_s is not None and r.ttft_s < r.duration_s, r
    assert results["r"].request_id is not None  # from the chunk before the error


@pytest.mark.slow
def test_phase_timeouts_name_the_phase(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {"h": "gem-slow-headers", "f": "gem-slow-ttft"}, timeout="5s",
                           extra_probe=", ttft_timeout: 400ms")
    assert (results["h"].outcome, results["h"].error_code) == ("timeout", "ttfb")
    assert (results["f"].outcome, results["f"].error_code) == ("timeout", "ttft")
    assert results["f"].ttfb_s is not None and results["f"].ttft_s is None
    stall = probe_models(tmp_path, sim_url, {"s": "gem-stall"}, timeout="500ms")["s"]
    assert (stall.outcome, stall.error_code) == ("timeout", "total")
    assert stall.ttft_s is not None


def test_bad_key_is_auth_error_and_never_recorded(tmp_path, sim_url):
    key = "sk-bad-Canary000111222333444555"
    r = probe_models(tmp_path, sim_url, {"a": "gem-healthy"}, key=key)["a"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "api_key_invalid", 400)
    assert "API key not valid" in r.error
    assert key not in json.dumps(r.as_row())


def test_the_key_is_never_in_the_request_url(tmp_path, sim_url):
    urls: list[str] = []

    async def started(session, ctx, params):  # noqa: ANN001 - aiohttp's signature
        urls.append(str(params.url))

    def session() -> aiohttp.ClientSession:
        capture = aiohttp.TraceConfig()
        capture.on_request_start.append(started)
        return aiohttp.ClientSession(trace_configs=[probe_trace(), capture], auto_decompress=False)

    r = probe_models(tmp_path, sim_url, {"k": "gem-healthy"}, http=session)["k"]
    assert r.outcome == "ok"
    [url] = urls
    query = aiohttp.client.URL(url).query
    assert KEY not in url and "key" not in query and dict(query) == {"alt": "sse"}
    [rec] = [rec for rec in sim_requests(sim_url) if rec["request_id"] == r.request_id]
    assert KEY not in rec["path"]


def test_response_size_is_capped(tmp_path, sim_url):
    r = probe_models(tmp_path, sim_url, {"b": "gem-capped"}, extra_probe=", max_response_bytes: 1024")["b"]
    assert (r.outcome, r.error_code) == ("protocol_error", "response_too_large")


def test_measured_ttft_matches_what_the_simulator_did(tmp_path, sim_url):
    results = probe_models(tmp_path, sim_url, {f"t{i}": "gem-fixed-ttft" for i in range(3)})
    seen = {rec["request_id"]: rec for rec in sim_requests(sim_url)}
    for r in results.values():
        assert r.outcome == "ok", r
        sim = seen[r.request_id]
        assert sim["injected_ttft_s"] == 0.250
        # The simulator times from its handler's entry; the probe also counts connect and send.
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert 0 <= r.duration_s - sim["actual_duration_s"] < 0.010, (r.duration_s, sim)
        assert abs(r.ttft_s - 0.250) < 0.010
