"""Gemini Live decoding, request shapes and close classification: pure code over captures.

A capture (``tests/data/captures/gemini_live_*.jsonl``) holds one server frame a line:
a JSON object is a frame's compact text, a JSON string is a frame's exact text (the
pretty-printed binary frames). Frames are replayed as bytes, the way binary frames arrive.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from modelwatch.config import load_config
from modelwatch.outcomes import ProbeFailure
from modelwatch.probes.gemini_live import (LiveSession, classify_error_frame, classify_live_close, decode_frame,
                                           live_endpoint, setup_message, user_turn)
from modelwatch.probes.audio import prompt_audio

CAPTURES = Path(__file__).parent / "data" / "captures"
KEY = "AIzaSyTestLiveKey0000000000000000000000"


def replay(name: str, modality: str = "text") -> tuple[list[str], LiveSession, ProbeFailure | None]:
    session = LiveSession(modality)
    stages = []
    for line in (CAPTURES / f"gemini_live_{name}.jsonl").read_text().splitlines():
        frame = json.loads(line)
        raw = (frame if isinstance(frame, str) else line).encode()
        try:
            stage = session.feed(decode_frame(raw))
        except ProbeFailure as exc:
            return stages, session, exc
        if stage:
            stages.append(stage)
    return stages, session, None


ALL = ["session", "ttft", "total"]
CASES = {
    # capture, modality: stages reached, (outcome, error_code) or None, (in, out, in audio, out audio), session id
    ("text", "text"): (ALL, None, (9, 2, 0, 0), None),
    ("audio", "audio"): (ALL, None, (61, 24, 47, 24), "7c1f4b3e-5d1a-4e0b-9d7a-2b8c6f0e1a23"),
    ("binary_pretty", "audio"): (ALL, None, (5, 3, None, None), "sess-pretty-01"),
    ("snake_case", "text"): (ALL, None, (7, 1, None, None), "sess-snake-01"),
    ("usage_before_turn_complete", "text"): (ALL, None, (8, 1, None, None), None),
    ("go_away", "text"): (ALL, None, (9, 2, None, None), None),
    ("rejected", "text"): (["session"], ("content_blocked", "prohibited_input_content"), (12, None, None, None), None),
    ("unknown_key_error", "text"): (["session"], ("model_unavailable", None), (None, None, None, None), None),
    ("close_code_frame", "text"): ([], ("quota_exhausted", "close_1011"), (None, None, None, None), None),
    # audio asked for, but only text came: a turn without the asked output
    ("text", "audio"): (["session"], ("protocol_error", "no_content"), (9, 2, 0, 0), None),
    # text asked for: audio parts and transcripts are not text
    ("audio", "text"): (["session"], ("protocol_error", "no_content"), (61, 24, 47, 24), None),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
def test_capture_replays_to_expected_stages_and_outcome(case):
    name, modality = case
    stages, expected, tokens, session_id = CASES[case]
    got_stages, session, failure = replay(name, modality)
    assert got_stages == stages
    got = None if failure is None else (failure.outcome.value, failure.error_code)
    if expected is not None and expected[1] is None:
        got = got and (got[0], None)
    assert got == expected, failure
    assert session.tokens() == tokens
    if session_id is not None:
        assert session.session_id == session_id


def test_go_away_before_turn_complete_is_noted_but_not_a_failure():
    _, session, failure = replay("go_away")
    assert failure is None and session.go_away and session.finished


def test_thought_and_empty_parts_are_not_the_first_token():
    session = LiveSession("text")
    assert session.feed({"setupComplete": {}}) == "session"
    assert session.feed({"serverContent": {"modelTurn": {"parts": [{"text": "plan", "thought": True}]}}}) is None
    signature_only = [{"text": ""}, {"thoughtSignature": "c2ln"}]
    assert session.feed({"serverContent": {"modelTurn": {"parts": signature_only}}}) is None
    assert session.feed({"serverContent": {"modelTurn": {"parts": [{"text": "OK"}]}}}) == "ttft"
    assert session.feed({"serverContent": {"modelTurn": {"parts": [{"text": "!"}]}}}) is None


def test_first_audio_not_transcript_is_the_audio_ttft():
    session = LiveSession("audio")
    session.feed({"setupComplete": {}})
    assert session.feed({"serverContent": {"outputTranscription": {"text": "OK"}}}) is None
    assert session.feed({"serverContent": {"modelTurn": {"parts": [{"text": "OK"}]}}}) is None
    video = {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}
    assert session.feed({"serverContent": {"modelTurn": {"parts": [video]}}}) is None
    audio = {"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": "AAAA"}}
    assert session.feed({"server_content": {"model_turn": {"parts": [audio]}}}) == "ttft"


def test_a_one_message_answer_reaches_the_last_stage():
    session = LiveSession("text")
    session.feed({"setupComplete": {}})
    message = {"serverContent": {"modelTurn": {"parts": [{"text": "OK"}]}, "turnComplete": True}}
    assert session.feed(message) == "total" and session.output and session.finished


@pytest.mark.parametrize("reason,outcome,code", [
    ("RESPONSE_REJECTED", "content_blocked", "response_rejected"),
    ("GENERATED_CONTENT_SAFETY", "content_blocked", "generated_content_safety"),
    ("INPUT_IMAGE_CELEBRITY", "content_blocked", "input_image_celebrity"),
    ("BLOCKLIST", "content_blocked", "blocklist"),
    ("NEED_MORE_INPUT", "protocol_error", "need_more_input"),
])
def test_turn_complete_reasons(reason, outcome, code):
    session = LiveSession("text")
    with pytest.raises(ProbeFailure) as info:
        session.feed({"serverContent": {"turnComplete": True, "turnCompleteReason": reason}})
    assert (info.value.outcome.value, info.value.error_code) == (outcome, code)


def test_a_blocked_turn_is_blocked_even_after_some_output():
    session = LiveSession("text")
    session.feed({"serverContent": {"modelTurn": {"parts": [{"text": "O"}]}}})
    with pytest.raises(ProbeFailure) as info:
        session.feed({"serverContent": {"turnComplete": True, "turnCompleteReason": "RESPONSE_REJECTED"}})
    assert info.value.outcome.value == "content_blocked"


@pytest.mark.parametrize("frame", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_frames_are_protocol_errors(frame):
    with pytest.raises(ProbeFailure) as info:
        LiveSession("text").feed(decode_frame(frame))
    assert (info.value.outcome.value, info.value.error_code) == ("protocol_error", "malformed_event")


@pytest.mark.parametrize("body,outcome", [
    ({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                           "reason": "API_KEY_INVALID"}]}}, "auth_error"),
    ([{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}], "overloaded"),
    ({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}, "server_error"),
    ({"code": 1008, "message": "Requested entity was not found."}, "model_unavailable"),
    ({"code": 1007, "message": "Request contains an invalid argument."}, "bad_request"),
    ({"error": "backend went away"}, "server_error"),
])
def test_error_frames_are_classified(body, outcome):
    failure = classify_error_frame(body)
    assert failure is not None and failure.outcome.value == outcome, failure
    with pytest.raises(ProbeFailure):
        LiveSession("text").feed(body)


@pytest.mark.parametrize("body", [{}, {"somethingNew": {"a": 1}}, {"sessionResumptionUpdate": {"resumable": False}}])
def test_news_is_ignored(body):
    assert classify_error_frame(body) is None or "sessionResumptionUpdate" in body
    assert LiveSession("text").feed(body) is None


@pytest.mark.parametrize("code,reason,outcome,error_code", [
    (1007, "Request contains an invalid argument.", "bad_request", "close_1007"),
    (1007, "Invalid JSON payload received. Unknown name \"x\" at 'setup': Cannot find field.", "bad_request",
     "close_1007"),
    (1008, "API key not valid. Please pass a valid API key.", "auth_error", "close_1008"),
    (1008, "Your API key was reported as leaked. Please use another API key.", "auth_error", "close_1008"),
    (1008, "The caller does not have permission", "auth_error", "close_1008"),
    (1008, "Requested entity was not found.", "model_unavailable", "close_1008"),
    (1008, "models/gemini-pro is not found for API version v1beta, or is not supported for bidiGenerateContent.",
     "model_unavailable", "close_1008"),
    (1008, "policy violation", "auth_error", "close_1008"),
    (1011, "You exceeded your current quota, please check your plan and billing details.", "quota_exhausted",
     "close_1011"),
    (1011, "Resource has been exhausted (e.g. check quota).", "rate_limited", "close_1011"),
    (1011, "The service is currently unavailable.", "overloaded", "close_1011"),
    (1011, "The model is overloaded. Please try again later.", "overloaded", "close_1011"),
    (1011, "Deadline expired before operation could complete.", "server_error", "deadline_expired"),
    (1011, "Internal error occurred.", "server_error", "close_1011"),
    (1000, "", "protocol_error", "closed_early"),
    (1006, "", "protocol_error", "abnormal_close"),
    (None, "", "protocol_error", "abnormal_close"),
    (1013, "", "overloaded", "close_1013"),
    (1001, "", "server_error", "close_1001"),
    (4000, "custom", "protocol_error", "close_4000"),
])
def test_close_codes(code, reason, outcome, error_code):
    failure = classify_live_close(code, reason)
    assert (failure.outcome.value, failure.error_code) == (outcome, error_code)


@pytest.mark.parametrize("code,reason,error_code", [
    (1000, "", "go_away"), (None, "", "go_away"),
    (1011, "Deadline expired before operation could complete.", "go_away"),
    (1011, "Internal error occurred.", "close_1011"),  # a real error stays what it is
    (1008, "API key not valid. Please pass a valid API key.", "close_1008"),
])
def test_a_close_after_go_away(code, reason, error_code):
    assert classify_live_close(code, reason, after_go_away=True).error_code == error_code


def live_job(tmp_path, base_url="https://generativelanguage.googleapis.com/v1beta", extra=""):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers:\n  g: {{type: gemini, base_url: '{base_url}', api_key: {KEY}}}\n"
                   f"targets:\n  - {{name: t, provider: g, model: gemini-live-2.5-flash, "
                   f"probes: [{{kind: realtime{extra}}}]}}\n")
    return load_config(cfg).jobs[0]


@pytest.mark.parametrize("base_url,url", [
    ("https://generativelanguage.googleapis.com/v1beta",
     "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService"
     ".BidiGenerateContent"),
    ("https://generativelanguage.googleapis.com/v1",
     "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1.GenerativeService"
     ".BidiGenerateContent"),
    ("http://127.0.0.1:8080/v1alpha",
     "ws://127.0.0.1:8080/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent"),
    ("https://generativelanguage.googleapis.com",
     "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService"
     ".BidiGenerateContent"),
    ("https://gateway.example.test/google/v1beta",
     "wss://gateway.example.test/google/ws/google.ai.generativelanguage.v1beta.GenerativeService"
     ".BidiGenerateContent"),
])
def test_endpoint_version_from_base_url_and_key_only_in_a_header(tmp_path, base_url, url):
    got, headers = live_endpoint(live_job(tmp_path, base_url))
    assert got == url
    assert headers["x-goog-api-key"] == KEY
    assert KEY not in got and "key=" not in got and "Authorization" not in headers


def test_setup_for_text(tmp_path):
    setup = setup_message(live_job(tmp_path))["setup"]
    assert setup["model"] == "models/gemini-live-2.5-flash"
    assert setup["generationConfig"] == {"responseModalities": ["TEXT"], "maxOutputTokens": 16}
    assert setup["systemInstruction"] == {"parts": [{"text": "Reply with one word."}], "role": "user"}
    assert "outputAudioTranscription" not in setup and "realtimeInputConfig" not in setup


def test_setup_for_audio_turns_activity_detection_off_and_sends_only_a_chosen_voice(tmp_path):
    setup = setup_message(live_job(tmp_path, extra=", modality: audio"))["setup"]
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert "speechConfig" not in setup["generationConfig"]  # "alloy" is OpenAI's default, not a Gemini voice
    assert setup["outputAudioTranscription"] == {}
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    voiced = setup_message(live_job(tmp_path, extra=", modality: audio, voice: Kore, thinking_budget: 0"))["setup"]
    generation = voiced["generationConfig"]
    assert generation["speechConfig"] == {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}
    assert generation["thinkingConfig"] == {"thinkingBudget": 0}


def test_user_turn_text_and_audio(tmp_path):
    text = user_turn(live_job(tmp_path))
    assert text == [{"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Say OK"}]}],
                                       "turnComplete": True}}]
    audio = user_turn(live_job(tmp_path, extra=", modality: audio"))
    assert audio[0] == {"realtimeInput": {"activityStart": {}}}
    assert audio[-1] == {"realtimeInput": {"activityEnd": {}}}
    chunks = [m["realtimeInput"]["audio"] for m in audio[1:-1]]
    assert len(chunks) > 1 and {c["mimeType"] for c in chunks} == {"audio/pcm;rate=24000"}
    assert b"".join(base64.b64decode(c["data"]) for c in chunks) == prompt_audio()
