"""Chat Completions stream decoding and error classification: pure code over golden captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import feed_capture
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.openai_chat import ChatStream, classify_openai_error, parse_body
from modelwatch.sse import SSEDecoder

CAPTURES = Path(__file__).parent / "data" / "captures"


def run_capture(raw: bytes, split: int | None = None, require_done: bool = False
                ) -> tuple[ChatStream, int, ProbeFailure | None]:
    """Feed a capture (optionally in two pieces) and return the stream, the index of the
    event that carried the first content, and the failure it amounts to."""
    stream = ChatStream(require_done)
    return (stream, *feed_capture(stream, [raw] if split is None else [raw[:split], raw[split:]]))


CASES = {
    # capture: (outcome, error_code, index of first-content event, input, output tokens)
    "openai_ok": ("ok", None, 1, 9, 2),
    "openai_ok_crlf": ("ok", None, 1, 9, 2),
    "openrouter_keepalive": ("ok", None, 1, 9, 2),
    "groq_x_groq_usage": ("ok", None, 1, 12, 1),
    "multiline_data": ("ok", None, 0, None, None),
    "compat_eof_after_finish": ("ok", None, 1, 9, 2),
    "openai_midstream_error": ("server_error", "server_error", 1, None, None),
    "vllm_midstream_error": ("server_error", "internalservererror", -1, None, None),
    "openrouter_midstream_error": ("server_error", "http_502", 0, None, None),
    "openai_no_terminator": ("protocol_error", "no_terminator", 1, None, None),
    "openai_malformed": ("protocol_error", "malformed_chunk", -1, None, None),
    "azure_content_filter": ("content_blocked", "content_filter", -1, 9, 2),
    "reasoning_empty_length": ("protocol_error", "no_content", -1, 9, 2),
    "openai_refusal": ("content_blocked", "stop", -1, None, None),
    # OpenAI-compatible deviations (PROTOCOLS.md section 7)
    "llamacpp_error_field": ("server_error", "server_error", -1, None, None),
    "deepseek_reasoner_keepalive": ("ok", None, 2, 10, 9),  # reasoning_content is not the answer
    "ollama_usage_copy": ("ok", None, 1, 11, 12),  # delta.reasoning is not the answer either
    "mistral_auto_usage": ("ok", None, 1, 7, 2),
    "together_text_field": ("ok", None, 0, 40, 2),
    # llama-cpp-python 0.3: no usage in streams; interrupted, it sends [DONE] without a finish_reason
    "llama_cpp_python_ok": ("ok", None, 1, None, None),
    "llama_cpp_python_interrupted": ("protocol_error", "no_finish_reason", 1, None, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_capture_decodes_to_expected_outcome(name):
    outcome, code, first, tin, tout = CASES[name]
    raw = (CAPTURES / f"{name}.sse").read_bytes()
    stream, got_first, failure = run_capture(raw)
    got_outcome = failure.outcome.value if failure else "ok"
    assert (got_outcome, failure.error_code if failure else None) == (outcome, code)
    assert got_first == first
    assert stream.tokens() == (tin, tout)


@pytest.mark.parametrize("name", ["openai_ok", "openai_ok_crlf", "openrouter_keepalive"])
def test_any_split_point_gives_the_same_events(name):
    raw = (CAPTURES / f"{name}.sse").read_bytes()
    whole = [e.data for e in SSEDecoder().feed(raw)]
    for cut in range(1, len(raw)):
        d = SSEDecoder()
        assert [e.data for e in d.feed(raw[:cut]) + d.feed(raw[cut:])] == whole, cut
    byte_by_byte = SSEDecoder()
    assert [e.data for i in range(len(raw)) for e in byte_by_byte.feed(raw[i:i + 1])] == whole


@pytest.mark.parametrize("piece", [1, 7, 64, 4096])
def test_an_endless_line_dripped_in_pieces_costs_linear_work(piece):
    """A hostile server dripping one unterminated data: line (issue 17): each byte is looked
    at a bounded number of times, not once per piece as re-joining the buffer did (quadratic:
    14 s of CPU per MiB in 64-byte pieces)."""
    d = SSEDecoder()
    size = 256 * 1024
    line = b"data: " + b"x" * size
    for i in range(0, len(line), piece):
        assert d.feed(line[i:i + piece]) == []
    assert d.pending_bytes() == len(line)
    events = d.feed(b"\r")  # a CR held back as a possible CRLF half ...
    assert events == [] and d.pending_bytes() == len(line) + 1
    events = d.feed(b"\n\n")  # ... its LF, then the event's blank line
    assert [len(e.data) for e in events] == [size]
    assert d.scanned <= 3 * (len(line) + 2)


def test_openai_proper_requires_done_even_after_finish_reason():
    raw = (CAPTURES / "compat_eof_after_finish.sse").read_bytes()
    _, _, failure = run_capture(raw, require_done=True)
    assert (failure.outcome, failure.error_code) == (Outcome.PROTOCOL_ERROR, "no_terminator")


def test_sse_comments_events_and_unfinished_event():
    d = SSEDecoder()
    events = d.feed(b": ping\n\nevent: message_start\ndata: {\"a\":1}\nid: 7\n\ndata:x\r\rdata: tail")
    # The last event id persists until changed (WHATWG), so the second event carries it too.
    assert [(e.event, e.data, e.id) for e in events] == [("message_start", '{"a":1}', "7"), ("", "x", "7")]
    assert d.comments == 1
    assert d.feed(b"") == []  # "data: tail" never got its blank line: not dispatched


def test_role_only_first_chunk_is_not_a_token():
    stream = ChatStream()
    assert stream.feed(json.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]})) is False
    assert stream.feed(json.dumps({"choices": [{"delta": {"content": None}}], "usage": None})) is False
    assert stream.feed(json.dumps({"choices": [{"delta": {"content": "O"}}]})) is True


ERRORS = json.loads((CAPTURES / "errors.json").read_text())


@pytest.mark.parametrize("case", ERRORS, ids=[c["name"] for c in ERRORS])
def test_error_classification(case):
    outcome, code, message = classify_openai_error(case["status"], case["body"])
    assert (outcome.value, code) == (case["outcome"], case["code"])
    assert message  # every shape yields a human message


def test_every_outcome_but_ok_and_connect_failures_is_reachable_from_errors():
    reached = {c["outcome"] for c in ERRORS} | {v[0] for v in CASES.values()}
    assert reached >= {o.value for o in Outcome} - {"connect_error"}


def test_a_missing_finish_reason_is_accepted_only_where_optional():
    raw = (CAPTURES / "llama_cpp_python_interrupted.sse").read_bytes()
    stream = ChatStream(require_done=False, require_finish=False)
    assert feed_capture(stream, [raw]) == (1, None)


def test_an_error_body_framed_as_sse_is_read_for_its_json():
    """Some gateways send an error status with the body as one SSE event."""
    raw = (b'data: {"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "tokens", '
           b'"param": null, "code": "rate_limit_exceeded"}}\n\n')
    body = parse_body(raw)
    assert body["error"]["code"] == "rate_limit_exceeded" and parse_body(b"\r\n" + raw) == body
    assert classify_openai_error(429, body)[:2] == (Outcome.RATE_LIMITED, "rate_limit_exceeded")
    assert parse_body(b"event: error\r\ndata: {not json\r\n\r\n") == "event: error\r\ndata: {not json\r\n\r\n"
