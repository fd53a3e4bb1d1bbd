"""The Gemini Live probe against the real simulator: every stage, both modalities, every failure."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from conftest import sim_log, with_sim, ttft_reading_error
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe
from modelwatch.sim.scenario import Scenario

KEY = "AIzaSyLiveProbeKey00000000000000000000000"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
BAD_KEY = "sk-bad-LiveCanary0123456789abcdef"


def config(tmp_path, sim_url, models: dict[str, str], *, extra: str = "", key: str = KEY,
           version: str = "v1beta", timeout: str = "5s"):
    cfg = tmp_path / "c.yaml"
    lines = [f"defaults: {{timeout: {timeout}}}", "providers:",
             f"  g: {{type: gemini, base_url: '{sim_url}/{version}', api_key: '{key}'}}", "targets:"]
    lines += [f"  - {{name: {n}, provider: g, model: {m}, probes: [{{kind: realtime{extra}}}]}}"
              for n, m in models.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return load_config(cfg)


async def run_all(cfg) -> dict:
    async with new_http_session() as http:
        results = await asyncio.gather(*(run_probe(j, http, prober_for("gemini", "realtime")) for j in cfg.jobs))
    return {r.target: r for r in results}


def probe(tmp_path, sim_url, models: dict[str, str], **kwargs) -> dict:
    return asyncio.run(run_all(config(tmp_path, sim_url, models, **kwargs)))


@pytest.mark.parametrize("version", ["v1beta", "v1", "v1alpha"])
def test_text_session_records_every_stage(tmp_path, sim_url, version):
    r = probe(tmp_path, sim_url, {"t": "live-healthy"}, version=version)["t"]
    assert r.outcome == "ok", r
    assert r.kind == "realtime" and r.http_status == 101 and r.error_code is None
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    # setupComplete at 10 ms, text 40 ms after the turn (the simulator's uvloop timers are 1 ms coarse)
    assert r.ttfb_s >= 0.009 and r.ttft_s - r.ttfb_s >= 0.039
    assert r.duration_s - r.ttft_s >= 0.012  # three more parts, 5 ms apart
    assert r.input_tokens > 0 and r.output_tokens == 4 and r.output_audio_tokens == 0
    assert r.request_id.startswith("req_")  # setupComplete.sessionId


def test_audio_session_times_the_first_audio_chunk(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"a": "live-healthy"}, extra=", modality: audio")["a"]
    assert r.outcome == "ok", r
    assert r.ttft_s - r.ttfb_s >= 0.039 and r.duration_s >= r.ttft_s + 0.24  # 300 ms of audio, real time
    assert r.input_audio_tokens and r.input_audio_tokens > 30  # ~1.5 s of spoken prompt at 32 tokens/s
    assert r.output_audio_tokens and r.output_tokens == r.output_audio_tokens


def test_compact_text_frames_work_too(tmp_path, sim_url):
    assert probe(tmp_path, sim_url, {"t": "live-text-frames"})["t"].outcome == "ok"


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_live_ttft_and_duration_are_truthful(tmp_path, sim_url, modality):
    results = probe(tmp_path, sim_url, {f"f{i}": "live-fixed-ttft" for i in range(3)},
                    extra=f", modality: {modality}")
    log = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = log[r.request_id]
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
        assert 0 <= r.ttft_s - sim["injected_ttft_s"] < 0.015, (r.ttft_s, sim)
        assert 0 <= r.duration_s - (r.connect_s or 0.0) - sim["actual_duration_s"] < 0.005, (r.duration_s, sim)
        assert sim["status"] == 101 and not sim["client_disconnected"]


FAILURES = {
    # model: (outcome, error_code)
    "live-auth": ("auth_error", "close_1008"),
    "live-quota": ("quota_exhausted", "close_1011"),
    "live-rate": ("rate_limited", "close_1011"),
    "live-unavailable": ("overloaded", "close_1011"),
    "live-server": ("server_error", "close_1011"),
    "live-deadline": ("server_error", "deadline_expired"),
    "live-bad-gateway": ("protocol_error", "abnormal_close"),
    "live-bad-request": ("bad_request", "close_1007"),
    "live-retired": ("model_unavailable", "close_1008"),
    "live-no-such-model": ("model_unavailable", "close_1008"),
    "live-blocked": ("content_blocked", "prohibited_input_content"),
    "live-rejected": ("content_blocked", "response_rejected"),
    "live-close-1000": ("protocol_error", "closed_early"),
    "live-close-leaked": ("auth_error", "close_1008"),
    "live-drop": ("protocol_error", "abnormal_close"),
    "live-expired": ("server_error", "deadline_expired"),
    "live-goaway-close": ("protocol_error", "go_away"),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {m: m for m in FAILURES})
    for model, (outcome, code) in FAILURES.items():
        r = results[model]
        assert (r.outcome, r.error_code) == (outcome, code), (model, r)
        assert r.http_status == 101 and r.duration_s is not None and r.duration_s < 2, (model, r)


def test_a_go_away_that_leaves_time_to_finish_is_no_failure(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"g": "live-goaway-ok"})["g"]
    assert r.outcome == "ok", r


def test_a_refused_handshake_is_classified_from_googles_body(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"h": "live-healthy"}, key=BAD_KEY)["h"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "api_key_invalid", 400)
    assert BAD_KEY not in json.dumps(r.as_row())


def test_the_key_travels_only_in_the_header(tmp_path):
    """A loopback server records the upgrade request and refuses it the way Google refuses a key."""
    seen = []

    async def refuse(request):
        seen.append((request.path_qs, dict(request.headers)))
        body = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                          "status": "INVALID_ARGUMENT"}}
        return web.json_response(body, status=400)

    async def main():
        app = web.Application()
        app.router.add_get(PATH, refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            return await run_all(config(tmp_path, url, {"k": "gemini-live-2.5-flash"}))
        finally:
            await runner.cleanup()

    r = asyncio.run(main())["k"]
    (path_qs, headers), = seen
    assert path_qs == PATH and headers["x-goog-api-key"] == KEY
    assert KEY not in json.dumps(headers | {"x-goog-api-key": ""})
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", "api_key_invalid", 400)


@pytest.mark.parametrize("style,code", [("close_only", "close_1008"), ("error_then_close", "api_key_invalid")])
def test_a_refused_key_after_the_upgrade(tmp_path, style, code):
    scenario = Scenario.model_validate({"default": {"auth_failure_style": style}})

    async def body(session, url):
        return await run_all(config(tmp_path, url, {"k": "any-model"}, key=BAD_KEY))

    r = with_sim(scenario, body)["k"]
    assert (r.outcome, r.error_code, r.http_status) == ("auth_error", code, 101)
    assert BAD_KEY not in json.dumps(r.as_row())


def test_a_session_that_never_starts_times_out_naming_the_stage(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"n": "live-never-starts"}, extra=", ttft_timeout: 400ms")["n"]
    assert (r.outcome, r.error_code) == ("timeout", "session")
    assert r.connect_s is not None and r.ttfb_s is None and 0.4 <= r.duration_s < 1.0


def test_a_slow_answer_times_out_naming_the_stage(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"s": "live-fixed-ttft"}, extra=", ttft_timeout: 150ms")["s"]
    assert (r.outcome, r.error_code) == ("timeout", "ttft")
    assert r.ttfb_s is not None and r.ttft_s is None


def test_thinking_level_reaches_the_live_setup(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"t": "live-healthy"}, extra=", thinking_level: minimal")["t"]
    assert r.outcome == "ok", r
    setup = sim_log(sim_url)[r.request_id]["options"]
    assert setup["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "MINIMAL"}
    assert "systemInstruction" not in setup
