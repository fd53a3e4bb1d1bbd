"""Realtime over WebRTC against the real simulator (in its own process): every phase, both
signalling forms, and each phase's failure.

The simulator answers on loopback candidates only; so does the probe, for a provider on this
machine. Time to first audio is the first audible RTP packet, held against the delay the
simulator injected (within 10 ms at idle, the issue's bound).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TEST_KEY, run_jobs, sim_requests
from modelwatch.config import ConfigError, load_config

AUDIO_TOLERANCE_S = 0.010
CLOCK_S = 0.0015  # the simulator's timers keep to the millisecond (uvloop)


def call(tmp_path: Path, url: str, model: str, extra: str = "", timeout: str = "5s", ptype: str = "openai",
         key: str = TEST_KEY):
    cfg = tmp_path / "rtc.yaml"
    cfg.write_text(f"""
defaults: {{timeout: {timeout}}}
providers:
  p: {{type: {ptype}, base_url: '{url}{"/openai/v1" if ptype == "azure-openai" else "/v1"}', api_key: '{key}'}}
targets:
  - {{name: w, provider: p, model: {model}, probes: [{{kind: realtime, transport: webrtc{extra}}}]}}
""")
    before = len(sim_requests(url))
    return run_jobs(load_config(cfg).jobs)["w"], sim_requests(url)[before:]


def the_call(requests: list[dict]) -> dict:
    [record] = [q for q in requests if q["path"].endswith("/realtime/calls")]
    return record


@pytest.mark.parametrize("signalling", ["", ", signalling: multipart"])
def test_a_text_call_times_every_phase(tmp_path, voice_sim, signalling):
    r, requests = call(tmp_path, voice_sim, "rtc", signalling)
    assert r.outcome == "ok", r
    assert r.http_status in (200, 201)
    phases = [r.connect_s, r.signal_s, r.ice_s, r.dtls_s, r.channel_s, r.ttfb_s, r.ttft_s, r.duration_s]
    assert all(p is not None for p in phases), r
    assert phases == sorted(phases), phases
    assert r.output_tokens and r.request_id
    paths = [q["path"] for q in requests]
    assert ("/v1/realtime/client_secrets" in paths) is (signalling == "")


def test_an_audio_call_times_the_first_audible_packet(tmp_path, voice_sim):
    r, requests = call(tmp_path, voice_sim, "rtc", ", modality: audio")
    assert r.outcome == "ok", r
    sim = the_call(requests)
    # The simulator injects its delay from response.create; the probe sends that right after
    # session.updated, one data-channel round trip after session.created (ttfb_s). So from ttfb_s
    # to the first audible packet is that round trip, the injected delay and the RTP trip: within
    # 10 ms of the injected delay on loopback, and never before it.
    assert sim["actual_ttft_s"] >= sim["injected_ttft_s"] - CLOCK_S, sim
    assert 0 <= (r.ttft_s - r.ttfb_s) - sim["injected_ttft_s"] <= AUDIO_TOLERANCE_S, (r, sim)
    assert r.duration_s > r.ttft_s


def test_the_first_audible_packet_is_not_the_first_packet(tmp_path, voice_sim):
    # The simulator sends silence (3-byte Opus payloads) from the start of the call and sound from
    # the injected delay on: were silence counted, the ttft would come right after the channel opened.
    r, requests = call(tmp_path, voice_sim, "rtc", ", modality: audio")
    assert r.outcome == "ok", r
    assert r.ttft_s - r.ttfb_s >= the_call(requests)["injected_ttft_s"] - CLOCK_S


@pytest.mark.parametrize("model, extra, outcome, code", [
    ("rtc-limited", "", "rate_limited", "rate_limit_exceeded"),
    ("missing-model", "", "model_unavailable", "model_not_found"),
    ("rtc-nocand", "", "connect_error", "ice_no_candidates"),
    ("rtc-dtls", "", "connect_error", "dtls"),
    ("rtc-nochan", ", timeout: 1500ms", "timeout", "channel"),
    ("rtc-nomedia", ", modality: audio", "protocol_error", "no_audio"),
    ("rtc-silent", ", modality: audio", "protocol_error", "no_audio"),
    ("rtc-stops", ", modality: audio", "protocol_error", "media_stopped"),
    ("rtc-kill", ", modality: audio, timeout: 1500ms", "timeout", None),
])
def test_each_phase_fails_as_itself(tmp_path, voice_sim, model, extra, outcome, code):
    r, _ = call(tmp_path, voice_sim, model, extra, timeout="3s")
    assert r.outcome == outcome, r
    if code is not None:
        assert r.error_code == code, r
    else:  # a dead peer: noticed within the probe's own timeout, not ICE consent's 30 s
        assert r.duration_s < 2.0 and r.error_code in ("ttft", "total", "session", "configure"), r


def test_a_bad_key_is_refused_at_signalling(tmp_path, voice_sim):
    r, _ = call(tmp_path, voice_sim, "rtc", key="sk-bad-key-00000000")
    assert r.outcome == "auth_error" and r.signal_s is None, r
    assert "sk-bad-key" not in (r.error or "")


@pytest.mark.parametrize("probe, problem", [
    ("{kind: rest, transport: webrtc}", "transport: webrtc applies to realtime probes of openai and azure-openai"),
    ("{kind: realtime, signalling: multipart}", "signalling applies to probes with transport: webrtc"),
    ("{kind: realtime, transport: webrtc, ice_servers: ['http://x']}", "is not a STUN or TURN URL"),
])
def test_webrtc_settings_are_refused_where_they_cannot_apply(tmp_path, probe, problem):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
providers: {{p: {{type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}}}}
targets: [{{name: c, provider: p, model: m, probes: [{probe}]}}]
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert problem in str(info.value)


def test_gemini_has_no_webrtc(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
providers: {g: {type: gemini, base_url: 'http://127.0.0.1:9/v1beta', api_key: k}}
targets: [{name: c, provider: g, model: m, probes: [{kind: realtime, transport: webrtc}]}]
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "transport: webrtc applies to realtime probes of openai and azure-openai" in str(info.value)


def test_azure_v1_calls_go_to_its_routes_with_its_key_header(tmp_path, voice_sim):
    r, requests = call(tmp_path, voice_sim, "rtc", ptype="azure-openai")
    assert r.outcome == "ok", r
    paths = [q["path"] for q in requests]
    assert paths[:2] == ["/openai/v1/realtime/client_secrets", "/openai/v1/realtime/calls"]
    assert paths[2].startswith("/openai/v1/realtime/calls/") and paths[2].endswith("/hangup")


def test_the_call_is_hung_up_after_the_probe(tmp_path, voice_sim):
    r, requests = call(tmp_path, voice_sim, "rtc")
    assert r.outcome == "ok"
    # a successful call is hung up before the probe returns (off the clock: duration_s is stamped)
    [hangup] = [q for q in requests if q["path"].endswith("/hangup")]
    assert hangup["status"] == 200 and hangup["path"].startswith("/v1/realtime/calls/")
