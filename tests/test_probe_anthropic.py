"""The Anthropic Messages probe against the real simulator: every outcome, phase and auth style."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from conftest import TEST_KEY, run_jobs, sim_log, ttft_reading_error
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe


def write_anthropic_config(path: Path, sim_url: str, targets: dict[str, str], *, key: str = TEST_KEY,
                           provider_extra: str = "", timeout: str = "3s", extra_probe: str = "") -> Path:
    """A config with one anthropic rest probe per ``{target: model}`` against the simulator."""
    lines = [f"storage: {{path: {path.parent / 'modelwatch.db'}}}",
             f"defaults: {{interval: 1s, timeout: {timeout}}}",
             "providers:",
             f"  sim: {{type: anthropic, base_url: '{sim_url}/v1', api_key: '{key}'{provider_extra}}}",
             "targets:"]
    lines += [f"  - {{name: {name}, provider: sim, model: {model}, probes: [{{kind: rest{extra_probe}}}]}}"
              for name, model in targets.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def probe(tmp_path, sim_url, models: dict[str, str], **kw) -> dict:
    return run_jobs(load_config(write_anthropic_config(tmp_path / "c.yaml", sim_url, models, **kw)).jobs)


def test_healthy_probe_records_every_phase_in_order(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"t": "anth-healthy"})["t"]
    assert r.outcome == "ok", r
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.ttft_s >= 0.020  # the simulator waited 20 ms before the first text delta
    assert r.http_status == 200 and re.fullmatch(r"req_011C[0-9A-Za-z]{20}", r.request_id)
    assert (r.input_tokens, r.output_tokens) == (9, 4)  # message_start input, message_delta output
    assert r.kind == "rest" and r.error is None and r.error_code is None


@pytest.mark.parametrize("provider_extra", ["", ", auth_style: bearer",
                                            ", auth_style: x-api-key, api_version: '2023-06-01'"])
def test_both_auth_styles_are_accepted(tmp_path, sim_url, provider_extra):
    r = probe(tmp_path, sim_url, {"a": "anth-healthy"}, provider_extra=provider_extra)["a"]
    assert r.outcome == "ok", r


FAILURES = {
    # model: (outcome, error_code, http_status)
    "anth-err-quota": ("quota_exhausted", "enforced_spend_limit_reached", 429),
    "anth-err-rate": ("rate_limited", "rate_limit_error", 429),
    "anth-err-ramp": ("rate_limited", "ramp_limit_exceeded", 429),
    "anth-err-overloaded": ("overloaded", "overloaded_error", 529),
    "anth-err-server": ("server_error", "api_error", 500),
    "anth-err-gateway": ("server_error", "http_502", 502),
    "anth-no-such-model": ("model_unavailable", "not_found_error", 404),
    "anth-err-bad-request": ("bad_request", "invalid_request_error", 400),
    "anth-midstream": ("overloaded", "overloaded_error", 200),
    "anth-disconnect": ("protocol_error", "disconnected", 200),
    "anth-malformed": ("protocol_error", "malformed_chunk", 200),
    "anth-refusal": ("content_blocked", "refusal", 200),
    "anth-no-text": ("protocol_error", "no_content", 200),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert (r.outcome, r.error_code, r.http_status) == (outcome, code, status), (model, r)
        assert r.error, (model, "a failure always says what happened")
        assert r.duration_s is not None and r.duration_s < 3
    # The API's own errors carry request-id; a CDN's HTML page has none.
    assert results["anth-err-overloaded"].request_id.startswith("req_011C")
    assert results["anth-err-gateway"].request_id is None


@pytest.mark.parametrize("provider_extra", ["", ", auth_style: x-api-key"])
def test_bad_key_is_auth_error_and_never_recorded(tmp_path, sim_url, provider_extra):
    key = "sk-bad-Canary000111222333444555"
    r = probe(tmp_path, sim_url, {"a": "anth-healthy"}, key=key, provider_extra=provider_extra)["a"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "authentication_error", 401)
    assert r.error == "invalid x-api-key"
    row = json.dumps(r.as_row())
    assert key not in row and key[:10] not in row and key[-6:] not in row


def test_midstream_failures_keep_the_first_token_time(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {"m": "anth-midstream", "d": "anth-disconnect"})
    for r in results.values():
        assert r.ttft_s is not None and r.ttft_s < r.duration_s, r
        assert r.input_tokens == 9  # message_start arrived before the failure


def test_thinking_deltas_are_not_the_first_token(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"t": "anth-thinking"})["t"]
    assert r.outcome == "ok", r
    assert r.ttft_s >= 0.120  # four thinking deltas arrived from 5 ms on; text only at 120 ms
    assert r.output_tokens == 4 + 3  # thinking is billed as output


def test_pings_are_not_tokens(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"k": "anth-keepalive"})["k"]
    assert r.outcome == "ok"
    assert r.ttft_s >= 0.2  # pings arrived every 20 ms before it


def test_output_cap_is_sent_and_max_tokens_stop_is_ok(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"b": "anth-busy"}, extra_probe=", max_tokens: 5")["b"]
    assert r.outcome == "ok" and r.output_tokens == 5  # the simulator stopped at max_tokens


def test_response_size_is_capped(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"b": "anth-busy"}, extra_probe=", max_tokens: 64, max_response_bytes: 2048")["b"]
    assert (r.outcome, r.error_code) == ("protocol_error", "response_too_large")


@pytest.mark.slow
def test_phase_timeouts_name_the_phase(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {"h": "anth-slow-headers", "f": "anth-slow-ttft"}, timeout="5s",
                    extra_probe=", ttft_timeout: 400ms")
    assert (results["h"].outcome, results["h"].error_code) == ("timeout", "ttfb")
    assert 0.4 <= results["h"].duration_s < 1.0
    assert (results["f"].outcome, results["f"].error_code) == ("timeout", "ttft")
    assert results["f"].ttfb_s is not None and results["f"].ttft_s is None
    stall = probe(tmp_path, sim_url, {"s": "anth-stall"}, timeout="500ms")["s"]
    assert (stall.outcome, stall.error_code) == ("timeout", "total")
    assert stall.ttft_s is not None


def test_measured_ttft_matches_what_the_simulator_did(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {f"t{i}": "anth-fixed-ttft" for i in range(3)})
    seen = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = seen[r.request_id]
        assert sim["injected_ttft_s"] == 0.250
        # The simulator times from its handler's entry; the probe also counts connect and send.
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert 0.250 <= r.ttft_s < 0.265
        assert sim["actual_duration_s"] <= r.duration_s


def test_a_broken_server_gets_classified_outcomes(tmp_path):
    """Answers the simulator never gives: a bare 503 without the header, a whole JSON Message
    instead of a stream, an error object with status 200, and an endless line of bytes."""
    from aiohttp import web

    async def messages(request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        if model == "no-header":
            return web.json_response({"type": "error", "error": {"type": "api_error", "message": "busy"},
                                      "request_id": "req_011Cbody"}, status=503)
        if model == "not-a-stream":
            return web.json_response({"type": "message", "content": [{"type": "text", "text": "OK"}]})
        if model == "error-200":
            return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 1024)  # one endless line: no event ever completes
        return response

    async def go():
        app = web.Application()
        app.router.add_post("/v1/messages", messages)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            cfg = load_config(write_anthropic_config(tmp_path / "c.yaml", url, {
                m: m for m in ("no-header", "not-a-stream", "error-200", "endless")},
                extra_probe=", max_response_bytes: 16384"))
            async with new_http_session() as http:
                results = await asyncio.gather(*(run_probe(j, http, prober_for("anthropic", "rest"))
                                                 for j in cfg.jobs))
            return {r.target: r for r in results}
        finally:
            await runner.cleanup()

    results = asyncio.run(go())
    assert (results["no-header"].outcome, results["no-header"].error_code) == ("overloaded", "api_error")
    assert results["no-header"].request_id == "req_011Cbody"
    assert (results["not-a-stream"].outcome, results["not-a-stream"].error_code) == (
        "protocol_error", "not_event_stream")
    assert (results["error-200"].outcome, results["error-200"].error_code) == ("overloaded", "overloaded_error")
    assert (results["endless"].outcome, results["endless"].error_code) == ("protocol_error", "response_too_large")
