"""Anthropic Messages stream decoding and error classification: pure code over golden captures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import feed_capture, split_in
from modelwatch.config import ProbeJob, ProbeConfig, ProviderConfig
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.anthropic import MessageStream, build_request, classify_anthropic_error
from modelwatch.secrets import Secret

CAPTURES = Path(__file__).parent / "data" / "captures"


def run_capture(raw: bytes, pieces: int = 1) -> tuple[MessageStream, int, ProbeFailure | None]:
    """Feed a capture in ``pieces`` equal parts; return the stream, the first-text event index and
    the failure it amounts to (None for a success)."""
    stream = MessageStream()
    return (stream, *feed_capture(stream, split_in(raw, pieces)))


CASES = {
    # capture: (outcome, error_code, index of the first-text event, input, output tokens)
    "anthropic_ok": ("ok", None, 3, 12, 3),
    # pings before message_start and between everything; an empty text delta is not a token
    "anthropic_ping_anywhere": ("ok", None, 8, 10, 2),
    # thinking_delta and signature_delta come first and are not the first token
    "anthropic_thinking_first": ("ok", None, 8, 40, 31),
    "anthropic_thinking_max_tokens": ("protocol_error", "no_content", -1, 40, 16),
    "anthropic_max_tokens": ("ok", None, 3, 12, 16),
    "anthropic_midstream_overloaded": ("overloaded", "overloaded_error", 3, 12, 1),
    "anthropic_no_message_stop": ("protocol_error", "no_terminator", 3, 12, 2),
    "anthropic_refusal": ("content_blocked", "refusal", 3, 12, 4),
    "anthropic_refusal_no_text": ("content_blocked", "refusal", -1, 12, 0),
    "anthropic_malformed": ("protocol_error", "malformed_chunk", -1, 12, 1),
    # message_delta without output_tokens: message_start's count stands
    "anthropic_usage_fallback": ("ok", None, 2, 9, 1),
    # LiteLLM's Messages bridge: input_tokens 0 at the start, the real count in message_delta
    "litellm_anthropic_usage_in_delta": ("ok", None, 2, 12, 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_capture_decodes_to_expected_outcome(name):
    outcome, code, first, tin, tout = CASES[name]
    stream, got_first, failure = run_capture((CAPTURES / f"{name}.sse").read_bytes())
    got = (failure.outcome.value, failure.error_code) if failure else ("ok", None)
    assert got == (outcome, code)
    assert got_first == first
    assert stream.tokens() == (tin, tout)


@pytest.mark.parametrize("name", ["anthropic_ok", "anthropic_thinking_first", "anthropic_ping_anywhere"])
@pytest.mark.parametrize("pieces", [2, 7, 50])
def test_chunking_does_not_change_the_result(name, pieces):
    whole = run_capture((CAPTURES / f"{name}.sse").read_bytes())
    split = run_capture((CAPTURES / f"{name}.sse").read_bytes(), pieces)
    assert (split[1], split[0].tokens(), split[2]) == (whole[1], whole[0].tokens(), whole[2])


def test_events_before_message_start_are_out_of_order():
    stream = MessageStream()
    assert stream.feed('{"type":"ping"}', "ping") is False  # a ping is fine anywhere
    with pytest.raises(ProbeFailure) as failure:
        stream.feed('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"OK"}}',
                    "content_block_delta")
    assert (failure.value.outcome, failure.value.error_code) == (Outcome.PROTOCOL_ERROR, "out_of_order")


def test_unknown_events_and_delta_types_are_ignored():
    stream = MessageStream()
    stream.feed('{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":1}}}')
    assert stream.feed('{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta"}}') is False
    assert stream.feed('{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
                       '"partial_json":"{"}}') is False
    assert stream.feed('{"type":"some_future_event","x":1}', "some_future_event") is False
    assert stream.feed("", "message_stop") is False  # empty data is skipped, as the SDK does
    assert not stream.done


def test_error_event_with_a_text_payload_is_classified():
    with pytest.raises(ProbeFailure) as failure:
        MessageStream().feed("upstream overloaded", "error")
    assert (failure.value.outcome, failure.value.error_code) == (Outcome.SERVER_ERROR, "stream_error")


ERRORS = json.loads((CAPTURES / "anthropic_errors.json").read_text())


@pytest.mark.parametrize("case", ERRORS, ids=[c["name"] for c in ERRORS])
def test_error_classification(case):
    outcome, code, message = classify_anthropic_error(case["status"], case["body"])
    assert (outcome.value, code) == (case["outcome"], case["code"])
    assert message  # every shape yields a human message


def test_every_anthropic_outcome_class_is_covered_by_the_table():
    reached = {c["outcome"] for c in ERRORS} | {v[0] for v in CASES.values()}
    assert reached >= {o.value for o in Outcome} - {"connect_error", "timeout"}


def _job(**provider: str) -> ProbeJob:
    config = ProviderConfig(type="anthropic", base_url="https://api.anthropic.com/v1", **provider)
    return ProbeJob(target="t", provider_name="anthropic", provider=config, api_key=Secret("sk-ant-test-1234"),
                    model="claude-haiku-4-5", probe=ProbeConfig(kind="rest"), location=None)


@pytest.mark.parametrize("provider, auth, version", [
    ({}, ("Authorization", "Bearer sk-ant-test-1234"), "2026-10-21"),
    ({"auth_style": "bearer"}, ("Authorization", "Bearer sk-ant-test-1234"), "2026-10-21"),
    ({"auth_style": "x-api-key", "api_version": "2023-06-01"}, ("x-api-key", "sk-ant-test-1234"), "2023-06-01"),
])
def test_request_carries_the_chosen_auth_style_and_version(provider, auth, version):
    url, headers, body = build_request(_job(**provider))
    assert url == "https://api.anthropic.com/v1/messages"
    assert headers[auth[0]] == auth[1] and headers["anthropic-version"] == version
    other = "x-api-key" if auth[0] == "Authorization" else "Authorization"
    assert other not in headers  # one credential header, never both
    sent = json.loads(body)
    assert sent == {"model": "claude-haiku-4-5", "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": "Say OK"}]}  # no thinking, ever


def test_message_stop_without_a_stop_reason_is_a_cut_answer_unless_optional():
    raw = (CAPTURES / "anthropic_ok.sse").read_bytes()
    cut = b"".join(e for e in re.split(rb"(?<=\n\n)", raw) if b"message_delta" not in e)
    assert b"stop_reason\":\"" not in cut and b"message_stop" in cut
    _, failure = feed_capture(MessageStream(), [cut])
    assert (failure.outcome, failure.error_code) == (Outcome.PROTOCOL_ERROR, "no_finish_reason")
    assert feed_capture(MessageStream(require_stop=False), [cut]) == (3, None)
