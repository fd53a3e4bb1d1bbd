"""Responses API stream decoding, error classification and the request: pure code over captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import feed_capture
from modelwatch.config import ProbeConfig, ProbeJob, ProviderConfig
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes import spec_for
from modelwatch.probes.openai_chat import probe_openai_chat
from modelwatch.probes.openai_responses import (
    MIN_OUTPUT_TOKENS, ResponsesStream, build_request, classify_response_error, probe_openai_responses)
from modelwatch.secrets import Secret
from modelwatch.sse import SSEDecoder

CAPTURES = Path(__file__).parent / "data" / "captures"


def run_capture(raw: bytes, split: int | None = None) -> tuple[ResponsesStream, int, ProbeFailure | None]:
    """Feed a capture (optionally in two pieces) as the probe does; return the stream, the index of
    the event that carried the first text, and the failure the stream amounts to."""
    stream = ResponsesStream()
    return (stream, *feed_capture(stream, [raw] if split is None else [raw[:split], raw[split:]]))


CASES = {
    # capture: (outcome, error_code, index of the first-text event, input, output tokens)
    "ok": ("ok", None, 4, 9, 3),
    "queued_first": ("ok", None, 5, 9, 3),
    "compat_data_only_done": ("ok", None, 4, 9, 3),  # no ``event:`` lines, CRLF, [DONE] after the end
    "reasoning_summary": ("ok", None, 12, 8, 84),  # summary deltas and an empty delta come first
    "failed_server_error": ("server_error", "server_error", 4, 9, 1),
    "failed_rate_limit": ("rate_limited", "rate_limit_exceeded", -1, 9, 0),
    "failed_invalid_prompt": ("bad_request", "invalid_prompt", -1, 9, 0),
    "incomplete_max_tokens_text": ("ok", None, 4, 9, 16),  # the cap is the probe's own choice
    "incomplete_max_tokens_empty": ("protocol_error", "no_content", -1, 8, 16),
    "content_filter": ("content_blocked", "content_filter", -1, 9, 0),
    "error_event": ("server_error", "server_error", -1, None, None),
    "error_event_nested": ("bad_request", "context_length_exceeded", -1, None, None),
    "no_terminator": ("protocol_error", "no_terminator", 4, None, None),
    "refusal": ("content_blocked", "refusal", -1, 9, 10),
    "malformed": ("protocol_error", "malformed_chunk", 4, None, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_capture_decodes_to_expected_outcome(name):
    outcome, code, first, tin, tout = CASES[name]
    raw = (CAPTURES / f"responses_{name}.sse").read_bytes()
    stream, got_first, failure = run_capture(raw)
    got = (failure.outcome.value, failure.error_code) if failure else ("ok", None)
    assert got == (outcome, code)
    assert got_first == first
    assert stream.tokens() == (tin, tout)


def test_every_capture_has_a_case():
    names = {p.name.removeprefix("responses_").removesuffix(".sse") for p in CAPTURES.glob("responses_*.sse")}
    assert names == set(CASES)


def test_captures_carry_increasing_sequence_numbers():
    for path in CAPTURES.glob("responses_*.sse"):
        seqs = []
        for event in SSEDecoder().feed(path.read_bytes()):
            try:
                seqs.append(json.loads(event.data).get("sequence_number"))
            except ValueError:
                continue
        seqs = [s for s in seqs if s is not None]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), path.name


@pytest.mark.parametrize("name", ["ok", "compat_data_only_done", "reasoning_summary"])
def test_any_split_point_gives_the_same_verdict(name):
    raw = (CAPTURES / f"responses_{name}.sse").read_bytes()
    expected = run_capture(raw)
    for cut in range(1, len(raw), 7):
        stream, first, failure = run_capture(raw, cut)
        assert (first, failure, stream.tokens()) == (expected[1], None, expected[0].tokens()), cut


def test_incomplete_for_the_cap_is_remembered():
    stream, _, failure = run_capture((CAPTURES / "responses_incomplete_max_tokens_text.sse").read_bytes())
    assert failure is None and stream.incomplete_reason == "max_output_tokens" and stream.status == "incomplete"


def test_completed_reasoning_summary_does_not_count_as_text():
    stream = ResponsesStream()
    assert stream.feed('{"type":"response.reasoning_summary_text.delta","delta":"thinking"}') is False
    assert stream.feed('{"type":"response.reasoning_text.delta","delta":"thinking"}') is False
    assert stream.feed('{"type":"response.output_text.delta","delta":""}') is False
    assert stream.feed('{"type":"response.output_text.delta","delta":"OK"}') is True


def test_event_name_stands_in_for_a_missing_type():
    stream = ResponsesStream()
    assert stream.feed('{"delta":"OK"}', "response.output_text.delta") is True
    stream.feed('{"response":{"status":"completed","usage":{"input_tokens":1,"output_tokens":1}}}',
                "response.completed")
    assert stream.done and stream.verdict() is None and stream.tokens() == (1, 1)


def test_unknown_events_and_anything_after_the_end_are_ignored():
    stream = ResponsesStream()
    assert stream.feed('{"type":"response.some_future_event","sequence_number":1}') is False
    assert stream.feed('{"type":"response.output_text.delta","delta":"OK"}') is True
    stream.feed('{"type":"response.completed","response":{"status":"completed"}}')
    assert stream.feed("not json at all") is False  # after the terminal event nothing is read
    assert stream.verdict() is None and stream.tokens() == (None, None)


def test_done_before_a_terminal_event_is_no_terminator():
    stream = ResponsesStream()
    stream.feed('{"type":"response.output_text.delta","delta":"OK"}')
    stream.feed("[DONE]")
    failure = stream.verdict()
    assert stream.closed and (failure.outcome, failure.error_code) == (Outcome.PROTOCOL_ERROR, "no_terminator")
    assert "[DONE]" in failure.message


@pytest.mark.parametrize("payload,outcome,code", [
    ('{"error":{"message":"boom","type":"server_error","code":null}}', Outcome.SERVER_ERROR, "server_error"),
    ('[{"error":{"code":503,"message":"x","status":"UNAVAILABLE"}}]', Outcome.OVERLOADED, "unavailable"),
    ('{"type":"response.failed","response":{"status":"failed"}}', Outcome.SERVER_ERROR, "response_failed"),
    ('{"type":"response.completed"}', Outcome.PROTOCOL_ERROR, "malformed_event"),
    ('"just a string"', Outcome.PROTOCOL_ERROR, "malformed_chunk"),
])
def test_odd_payloads_are_classified(payload, outcome, code):
    with pytest.raises(ProbeFailure) as exc:
        ResponsesStream().feed(payload)
    assert (exc.value.outcome, exc.value.error_code) == (outcome, code)


@pytest.mark.parametrize("error,outcome", [
    ({"code": "server_error", "message": "x"}, Outcome.SERVER_ERROR),
    ({"code": "rate_limit_exceeded", "message": "x"}, Outcome.RATE_LIMITED),
    ({"code": "invalid_prompt", "message": "x"}, Outcome.BAD_REQUEST),
    ({"code": "invalid_image_url", "message": "x"}, Outcome.BAD_REQUEST),
    ({"code": "data_residency_mismatch", "message": "x"}, Outcome.BAD_REQUEST),
    ({"code": "bio_policy", "message": "x"}, Outcome.CONTENT_BLOCKED),
    ({"code": "image_content_policy_violation", "message": "x"}, Outcome.CONTENT_BLOCKED),
    ({"code": "insufficient_quota", "message": "x"}, Outcome.QUOTA_EXHAUSTED),
    ({"code": "model_not_found", "message": "x"}, Outcome.MODEL_UNAVAILABLE),
    ({"code": "vector_store_timeout", "message": "x"}, Outcome.SERVER_ERROR),
    ({"code": None, "message": "x", "type": "invalid_request_error"}, Outcome.BAD_REQUEST),
    ({"message": "x"}, Outcome.SERVER_ERROR),
])
def test_response_error_codes(error, outcome):
    got, code, message = classify_response_error(error)
    assert got is outcome and message == "x" and code


def job(ptype="openai", api_version=None, max_tokens=16, reasoning_effort=None, api="responses") -> ProbeJob:
    provider = ProviderConfig(type=ptype, base_url="https://example.test/openai/v1", api_version=api_version)
    probe = ProbeConfig(kind="rest", api=api, max_tokens=max_tokens, reasoning_effort=reasoning_effort)
    return ProbeJob(target="t", provider_name="p", provider=provider, api_key=Secret("sk-test-Key0000"),
                    model="gpt-4o-mini", probe=probe, location=None)


def test_request_body_is_small_unstored_and_streamed():
    url, headers, body = build_request(job())
    assert url == "https://example.test/openai/v1/responses"
    assert headers["Authorization"] == "Bearer sk-test-Key0000" and "api-key" not in headers
    assert json.loads(body) == {"model": "gpt-4o-mini", "input": "Say OK", "stream": True,
                                "max_output_tokens": 16, "store": False}


def test_output_cap_never_goes_below_the_api_minimum():
    assert json.loads(build_request(job(max_tokens=4))[2])["max_output_tokens"] == MIN_OUTPUT_TOKENS
    assert json.loads(build_request(job(max_tokens=64))[2])["max_output_tokens"] == 64


def test_reasoning_effort_is_sent_nested():
    body = json.loads(build_request(job(reasoning_effort="minimal"))[2])
    assert body["reasoning"] == {"effort": "minimal"} and "reasoning_effort" not in body


@pytest.mark.parametrize("api_version,url", [
    (None, "https://example.test/openai/v1/responses"),
    ("2025-04-01-preview", "https://example.test/openai/v1/responses?api-version=2025-04-01-preview"),
])
def test_azure_uses_the_api_key_header(api_version, url):
    got_url, headers, body = build_request(job("azure-openai", api_version))
    assert got_url == url
    assert headers["api-key"] == "sk-test-Key0000" and "Authorization" not in headers
    assert "sk-test" not in got_url and json.loads(body)["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("ptype", ["openai", "openai-compatible", "azure-openai"])
def test_the_registry_dispatches_rest_by_api(ptype):
    assert spec_for(ptype, "rest", "responses").prober is probe_openai_responses
    assert spec_for(ptype, "rest").prober is probe_openai_chat
