"""The voice chain against the real simulator (in its own process): transcription -> chat -> speech.

Each stage's timings are held against what the simulator injected for that
request, and each stage's failures against their classified outcome with the
stage in ``error_code``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import TEST_KEY, run_jobs, sim_requests
from modelwatch.config import load_config
from modelwatch.probes.voice_chain import prompt_wav

TOLERANCE_S = 0.005  # the bound at idle: each stage within 5 ms of what the simulator injected
# The simulator's loop (uvloop) keeps timers to the millisecond and stamps its own times a
# step apart from the frame it times: its figures carry that much slack either way.
CLOCK_S = 0.0015


log = sim_requests


def chain(tmp_path: Path, url: str, *, stt: str = "stt", llm: str = "llm", tts: str = "tts", extra: str = "",
          ptype: str = "openai", base: str = "/v1", provider_extra: str = "", price: str = "",
          timeout: str = "3s"):
    cfg = tmp_path / "voice.yaml"
    cfg.write_text(f"""
defaults: {{timeout: {timeout}}}
providers:
  p: {{type: {ptype}, base_url: '{url}{base}', api_key: '{TEST_KEY}'{provider_extra}}}
targets:
  - {{name: v, provider: p, model: {llm}{price},
      probes: [{{kind: voice-chain, stt_model: {stt}, tts_model: {tts}{extra}}}]}}
""")
    before = len(log(url))
    result = run_jobs(load_config(cfg).jobs)["v"]
    return result, log(url)[before:]


def test_prompt_wav_is_the_bundled_prompt_behind_a_canonical_header():
    wav = prompt_wav()
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
    channels, rate, _, _, bits = struct.unpack("<HIIHH", wav[22:36])
    assert (channels, rate, bits) == (1, 24000, 16)
    assert struct.unpack("<I", wav[40:44])[0] == len(wav) - 44


@pytest.mark.parametrize("extra", ["", ", tts_stream_format: sse", ", tts_format: wav", ", stt_stream: false"])
def test_the_chain_times_each_stage_as_the_simulator_served_it(tmp_path, voice_sim, extra):
    r, requests = chain(tmp_path, voice_sim, extra=extra)
    assert r.outcome == "ok", r
    assert [s.stage for s in r.stages] == ["stt", "llm", "tts"]
    served = {q["model"]: q for q in requests}
    assert set(served) == {"stt", "llm", "tts"} and all(q["status"] == 200 for q in requests)
    for stage in r.stages:
        sim = served[stage.stage]
        # each stage's first output, from its own start, is what the simulator did plus loopback
        # (within 5 ms), and the simulator kept to the delay it injected: at idle, within 5 ms of it
        assert sim["actual_ttft_s"] >= sim["injected_ttft_s"] - CLOCK_S, sim
        # the first stage holds the probe's first connect, which the simulator cannot see
        unseen = (r.connect_s or 0.0) if stage.stage == "stt" else 0.0
        assert 0 <= stage.ttft_s - unseen - sim["actual_ttft_s"] <= TOLERANCE_S, (stage, sim)
        assert stage.ttfb_s <= stage.ttft_s <= stage.duration_s
    stt, llm, tts = r.stages
    # the stages run one after another, and the chain's ttft is the first audio byte from the start
    assert stt.start_s + stt.duration_s <= llm.start_s and llm.start_s + llm.duration_s <= tts.start_s
    assert r.ttft_s == pytest.approx(tts.start_s + tts.ttft_s, abs=2e-6)
    assert r.ttfb_s == pytest.approx(stt.start_s + stt.ttfb_s, abs=2e-6)
    injected = sum(served[s]["injected_ttft_s"] for s in ("stt", "tts"))
    assert r.ttft_s > injected + llm.duration_s
    assert r.duration_s > r.ttft_s  # 300 ms of audio in 6 pieces every 5 ms after the first
    assert r.input_tokens and r.output_tokens and r.input_audio_tokens


def test_the_chain_sends_what_the_endpoints_expect(tmp_path, voice_sim):
    r, requests = chain(tmp_path, voice_sim, extra=", voice: coral")
    assert r.outcome == "ok", r
    served = {q["model"]: q["options"] for q in requests}
    assert served["stt"]["file"]["filename"] == "probe.wav" and served["stt"]["stream"] == "true"
    assert served["stt"]["file"]["bytes"] == len(prompt_wav())
    assert served["tts"] == {"model": "tts", "voice": "coral", "response_format": "pcm", "stream_format": "audio"}
    assert served["llm"]["stream"] is True


def test_a_transcription_model_that_ignores_stream_answers_whole(tmp_path, voice_sim):
    r, requests = chain(tmp_path, voice_sim, stt="whisper-1")
    assert r.outcome == "ok", r
    stt = r.stages[0]
    assert stt.ttft_s == stt.duration_s  # one JSON body: the transcript arrives whole
    assert 0 <= stt.ttft_s - (r.connect_s or 0.0) - requests[0]["actual_ttft_s"] <= TOLERANCE_S
    assert requests[0]["actual_ttft_s"] >= requests[0]["injected_ttft_s"] - CLOCK_S


@pytest.mark.parametrize("models, outcome, code, stages", [
    ({"stt": "stt-limited"}, "rate_limited", "stt:rate_limit_exceeded", ["stt"]),
    ({"stt": "stt-silent"}, "protocol_error", "stt:no_content", ["stt"]),
    ({"llm": "llm-broken"}, "server_error", "llm:server_error", ["stt", "llm"]),
    ({"tts": "tts-overloaded"}, "overloaded", "tts:", ["stt", "llm", "tts"]),
    ({"tts": "tts-cut"}, "protocol_error", "tts:disconnected", ["stt", "llm", "tts"]),
    ({"tts": "tts-blocked"}, "protocol_error", "tts:no_content", ["stt", "llm", "tts"]),
    ({"stt": "missing-model"}, "model_unavailable", "stt:model_not_found", ["stt"]),
])
def test_a_stage_failure_is_classified_with_its_stage(tmp_path, voice_sim, models, outcome, code, stages):
    r, _ = chain(tmp_path, voice_sim, **models)
    assert r.outcome == outcome, r
    assert r.error_code.startswith(code), r.error_code
    assert [s.stage for s in r.stages] == stages  # the stages reached are kept, the failing one included


def test_a_stalled_speech_stream_times_out_in_its_stage(tmp_path, voice_sim):
    r, _ = chain(tmp_path, voice_sim, tts="tts-stall", timeout="1s")
    assert r.outcome == "timeout" and r.error_code == "tts:total", r
    assert r.stages[-1].ttft_s is not None  # the first audio came: the rest of the budget ran out


def test_speech_that_never_starts_spends_the_first_audio_budget(tmp_path, voice_sim):
    r, _ = chain(tmp_path, voice_sim, tts="tts-quiet", extra=", ttft_timeout: 600ms", timeout="3s")
    assert r.outcome == "timeout" and r.error_code == "tts:ttft", r
    assert r.duration_s == pytest.approx(0.6, abs=0.05)


def test_a_bad_key_fails_the_first_stage_as_auth(tmp_path, voice_sim):
    cfg_key = TEST_KEY
    try:
        globals()["TEST_KEY"] = "sk-bad-key-0000"
        r, _ = chain(tmp_path, voice_sim)
    finally:
        globals()["TEST_KEY"] = cfg_key
    assert r.outcome == "auth_error" and r.error_code.startswith("stt:"), r
    assert "sk-bad-key-0000" not in (r.error or "")


def test_azure_dated_routes_name_each_stage_deployment(tmp_path, voice_sim):
    r, requests = chain(tmp_path, voice_sim, ptype="azure-openai", base="/openai",
                        provider_extra=", api_version: '2025-04-01-preview'")
    assert r.outcome == "ok", r
    assert [q["path"] for q in requests] == ["/openai/deployments/stt/audio/transcriptions",
                                             "/openai/deployments/llm/chat/completions",
                                             "/openai/deployments/tts/audio/speech"]


def test_each_stage_is_priced_at_its_own_model(tmp_path, voice_sim):
    price = (", price: {input: 1.0, output: 2.0, stt: {audio_input: 3.0, output: 5.0}, "
             "tts: {input: 0.6, audio_output: 12.0, per_minute: 0.015}}")
    raw, _ = chain(tmp_path, voice_sim, price=price)
    sse, _ = chain(tmp_path, voice_sim, price=price, extra=", tts_stream_format: sse")
    assert raw.outcome == sse.outcome == "ok"
    # raw pcm speech reports no usage: its 300 ms are priced per minute; SSE speech reports tokens
    audio_s = 0.3
    assert raw.cost_usd > 0.015 * audio_s / 60 and sse.output_audio_tokens
    assert raw.cost_usd != sse.cost_usd
