"""Realtime event decoding, request shapes and close classification: pure code over captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelwatch.config import load_config
from modelwatch.outcomes import ProbeFailure
from modelwatch.probes.audio import prompt_audio
from modelwatch.probes.openai_realtime import (RealtimeSession, classify_close, realtime_endpoint, session_update,
                                               user_turn)

CAPTURES = Path(__file__).parent / "data" / "captures"


def replay(name: str, modality: str = "text") -> tuple[list[str], RealtimeSession, ProbeFailure | None]:
    session = RealtimeSession(modality)
    stages = []
    for line in (CAPTURES / f"{name}.jsonl").read_text().splitlines():
        try:
            stage = session.feed(json.loads(line))
        except ProbeFailure as exc:
            return stages, session, exc
        if stage:
            stages.append(stage)
    return stages, session, None


CASES = {
    # capture, modality: stages reached, (outcome, error_code) or None, (in, out, in audio, out audio)
    ("realtime_ga_text", "text"): (["session", "configure", "ttft", "response"], None, (132, 121, 13, 91)),
    ("realtime_beta_text", "text"): (["session", "configure", "ttft", "response"], None, (18, 2, 0, 0)),
    ("realtime_ga_audio", "audio"): (["session", "configure", "ttft", "response"], None, (132, 121, 13, 91)),
    ("realtime_legacy_audio_names", "audio"): (["session", "configure", "ttft", "response"], None,
                                               (132, 121, 13, 91)),
    ("realtime_incomplete_max_tokens", "text"): (["session", "configure", "ttft", "response"], None,
                                                 (10, 16, None, None)),
    ("realtime_failed_model_not_found", "text"): (["session", "configure"],
                                                  ("model_unavailable", "model_not_found"), (0, 0, None, None)),
    ("realtime_failed_quota", "text"): (["session", "configure"], ("quota_exhausted", "insufficient_quota"),
                                        (None, None, None, None)),
    ("realtime_error_missing_type", "text"): (["session"], ("bad_request", "missing_required_parameter"),
                                              (None, None, None, None)),
    ("realtime_beta_retired", "text"): ([], ("protocol_error", "beta_api_shape_disabled"),
                                        (None, None, None, None)),
    ("realtime_error_invalid_key", "text"): ([], ("auth_error", "invalid_api_key"), (None, None, None, None)),
    ("realtime_content_filter", "text"): (["session", "configure"], ("content_blocked", "content_filter"),
                                          (None, None, None, None)),
    ("realtime_done_without_output", "text"): (["session", "configure"], ("protocol_error", "no_content"),
                                               (None, None, None, None)),
    # audio asked for, but the capture only has a transcript before audio: ttft is the audio
    ("realtime_ga_text", "audio"): (["session", "configure"], ("protocol_error", "no_content"),
                                    (132, 121, 13, 91)),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
def test_capture_replays_to_expected_stages_and_outcome(case):
    name, modality = case
    stages, failure_expected, tokens = CASES[case]
    got_stages, session, failure = replay(name, modality)
    assert got_stages == stages
    assert (None if failure is None else (failure.outcome.value, failure.error_code)) == failure_expected
    assert session.tokens() == tokens


def test_first_audio_not_transcript_is_the_audio_ttft():
    session = RealtimeSession("audio")
    session.feed({"type": "session.created", "session": {}})
    assert session.feed({"type": "response.output_audio_transcript.delta", "delta": "O"}) is None
    assert session.feed({"type": "response.output_audio.delta", "delta": ""}) is None  # empty chunk
    assert session.feed({"type": "response.output_audio.delta", "delta": "AAAA"}) == "ttft"
    assert session.feed({"type": "response.output_audio.delta", "delta": "AAAA"}) is None


def test_malformed_events_are_protocol_errors():
    with pytest.raises(ProbeFailure) as info:
        RealtimeSession("text").feed(["not", "an", "object"])
    assert info.value.error_code == "malformed_event"


@pytest.mark.parametrize("code,reason,outcome,error_code", [
    (4000, "invalid_request_error.beta_api_shape_disabled", "protocol_error", "beta_api_shape_disabled"),
    (1011, "Internal error", "server_error", "close_1011"),
    (1008, "policy violation", "protocol_error", "close_1008"),
    (1013, "try again later", "overloaded", "close_1013"),
    (1000, "", "protocol_error", "close_1000"),
    (1006, "", "protocol_error", "abnormal_close"),
    (None, "", "protocol_error", "abnormal_close"),
])
def test_close_codes(code, reason, outcome, error_code):
    failure = classify_close(code, reason)
    assert (failure.outcome.value, failure.error_code) == (outcome, error_code)


def realtime_job(tmp_path, ptype="openai", extra="", provider_extra=""):
    cfg = tmp_path / "c.yaml"
    key = "api_key: sk-test-rt-0000000000"
    cfg.write_text(
        f"providers:\n  p: {{type: {ptype}, base_url: 'https://example.test/openai/v1', {key}{provider_extra}}}\n"
        f"targets:\n  - {{name: t, provider: p, model: gpt-realtime-mini, probes: [{{kind: realtime{extra}}}]}}\n")
    return load_config(cfg).jobs[0]


def test_endpoint_for_openai_azure_and_beta(tmp_path):
    url, headers = realtime_endpoint(realtime_job(tmp_path))
    assert url == "wss://example.test/openai/v1/realtime?model=gpt-realtime-mini"
    assert headers["Authorization"] == "Bearer sk-test-rt-0000000000" and "OpenAI-Beta" not in headers
    url, headers = realtime_endpoint(realtime_job(tmp_path, extra=", interface: beta"))
    assert headers["OpenAI-Beta"] == "realtime=v1"
    url, headers = realtime_endpoint(realtime_job(tmp_path, "azure-openai"))
    assert url.endswith("/openai/v1/realtime?model=gpt-realtime-mini")
    assert headers["api-key"] == "sk-test-rt-0000000000" and "Authorization" not in headers
    url, _ = realtime_endpoint(realtime_job(tmp_path, "azure-openai", provider_extra=", api_version: 2025-04-01-preview"))
    assert url.endswith("/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime-mini")


def test_session_update_shapes(tmp_path):
    ga = session_update(realtime_job(tmp_path))["session"]
    assert ga["type"] == "realtime" and ga["output_modalities"] == ["text"] and ga["max_output_tokens"] == 16
    ga_audio = session_update(realtime_job(tmp_path, extra=", modality: audio"))["session"]
    assert ga_audio["output_modalities"] == ["audio"]
    assert ga_audio["audio"]["input"]["turn_detection"] is None  # the probe commits the turn itself
    assert ga_audio["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    beta = session_update(realtime_job(tmp_path, extra=", interface: beta, modality: audio"))["session"]
    assert "type" not in beta and beta["modalities"] == ["audio", "text"]
    assert beta["input_audio_format"] == "pcm16" and beta["turn_detection"] is None


def test_user_turn_text_and_audio(tmp_path):
    text = user_turn(realtime_job(tmp_path))
    assert [e["type"] for e in text] == ["conversation.item.create", "response.create"]
    assert text[0]["item"]["content"][0] == {"type": "input_text", "text": "Say OK"}
    audio = user_turn(realtime_job(tmp_path, extra=", modality: audio"))
    assert [e["type"] for e in audio] == ["input_audio_buffer.append", "input_audio_buffer.commit",
                                          "response.create"]


def test_bundled_prompt_is_pcm16_24k_mono_of_speech_length():
    pcm = prompt_audio()
    seconds = len(pcm) / 48000  # 24,000 samples/s x 2 bytes
    assert len(pcm) % 2 == 0 and 0.5 < seconds < 3
    import array
    samples = array.array("h", pcm)
    assert max(abs(s) for s in samples) > 2000  # not silence
