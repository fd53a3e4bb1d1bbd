"""Gemini REST stream decoding and Google error classification: pure code over golden captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelwatch.config import ProbeConfig, ProviderConfig, ProbeJob
from modelwatch.outcomes import ProbeFailure
from modelwatch.probes.gemini import GeminiStream, build_request, classify_google_error
from modelwatch.secrets import Secret

CAPTURES = Path(__file__).parent / "data" / "captures"


def run_capture(raw: bytes, pieces: int = 1) -> tuple[GeminiStream, int, ProbeFailure | None]:
    """Feed a capture in ``pieces`` equal slices, then EOF; return the stream, the index of
    the slice whose bytes carried the first text (-1: none) and the failure it amounts to."""
    stream, first = GeminiStream(), -1
    size = -(-len(raw) // pieces)
    slices = [raw[i:i + size] for i in range(0, len(raw), size)] + [b""]
    try:
        for n, piece in enumerate(slices):
            if stream.feed(piece, final=not piece) and first < 0:
                first = n
    except ProbeFailure as exc:
        return stream, first, exc
    return stream, first, stream.verdict()


CASES = {
    # capture: (outcome, error_code, input tokens, output tokens, response id)
    "gemini_ok": ("ok", None, 4, 2, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_thoughts_first": ("ok", None, 4, 38, "Rk9xaGt0Z2VtaW5pMDAx"),  # 1 text + 37 thinking
    "gemini_usage_last_only": ("ok", None, 5, 2, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_array_no_sse": ("ok", None, 4, 2, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_safety_finish": ("content_blocked", "safety", 4, 1, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_prompt_blocked": ("content_blocked", "prohibited_content", 4, None, "QmxvY2tlZDAwMDAwMDAx"),
    "gemini_error_event": ("overloaded", "unavailable", 4, None, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_raw_error": ("server_error", "internal", 4, None, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_no_finish": ("protocol_error", "no_terminator", 4, None, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_thoughts_only_max_tokens": ("protocol_error", "no_content", 4, 16, "Rk9xaGt0Z2VtaW5pMDAx"),
    "gemini_other_finish": ("server_error", "other", 4, 1, "Rk9xaGt0Z2VtaW5pMDAx"),
}


@pytest.mark.parametrize("pieces", [1, 7, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_capture_outcomes(name, pieces):
    outcome, code, tokens_in, tokens_out, response_id = CASES[name]
    raw = (CAPTURES / f"{name}.sse").read_bytes()
    stream, _first, failure = run_capture(raw, pieces)
    got = ("ok", None) if failure is None else (failure.outcome.value, failure.error_code)
    assert got == (outcome, code), (name, pieces, failure and failure.message)
    assert stream.tokens() == (tokens_in, tokens_out)
    assert stream.response_id == response_id


def test_captures_use_crlf_framing():
    assert b"\r\n\r\ndata: " in (CAPTURES / "gemini_ok.sse").read_bytes()


def test_thought_parts_are_not_the_first_token():
    raw = (CAPTURES / "gemini_thoughts_first.sse").read_bytes()
    events = raw.split(b"\r\n\r\n")
    stream = GeminiStream()
    assert stream.feed(events[0] + b"\r\n\r\n") is False  # thought: true
    assert stream.thought_parts == 1
    assert stream.feed(events[1] + b"\r\n\r\n") is True  # "OK"
    # The finish chunk's only part is an empty text with a thoughtSignature: no text there.
    assert stream.feed(b"\r\n\r\n".join(events[2:])) is False
    assert stream.finish_reason == "STOP" and stream.text_parts == 1


def test_usage_comes_from_the_last_chunk_with_counts():
    stream, first, failure = run_capture((CAPTURES / "gemini_usage_last_only.sse").read_bytes(), 64)
    assert failure is None and first >= 0
    # Early chunks carry only trafficType; they never replace the counts.
    assert stream.usage["candidatesTokenCount"] == 2


def test_raw_error_is_reassembled_across_reads():
    raw = (CAPTURES / "gemini_raw_error.sse").read_bytes()
    stream = GeminiStream()
    with pytest.raises(ProbeFailure) as caught:
        for i in range(len(raw)):  # one byte at a time, CRs split from their LFs
            stream.feed(raw[i:i + 1])
    assert (caught.value.outcome.value, caught.value.error_code) == ("server_error", "internal")
    assert caught.value.message == "Internal error encountered."


def test_unframed_json_with_braces_inside_strings():
    body = b'{\n  "error": {\n    "code": 400,\n    "message": "bad template {name"\n  }\n}\n'
    with pytest.raises(ProbeFailure) as caught:
        GeminiStream().feed(body)
    assert caught.value.outcome.value == "bad_request" and caught.value.message == "bad template {name"


def test_unframed_error_without_final_newline_is_found_at_eof():
    stream = GeminiStream()
    assert stream.feed(b'{"error": {"code": 503, "status": "UNAVAILABLE", "message": "x"}}') is False
    with pytest.raises(ProbeFailure) as caught:
        stream.feed(b"", final=True)
    assert caught.value.outcome.value == "overloaded"


def test_unframed_junk_is_ignored_and_named():
    stream = GeminiStream()
    stream.feed(b"<html>oops</html>\r\n", final=False)
    stream.feed(b"", final=True)
    failure = stream.verdict()
    assert failure.error_code == "no_terminator" and "1 unrecognised lines" in failure.message


def test_malformed_data_event_is_a_protocol_error():
    with pytest.raises(ProbeFailure) as caught:
        GeminiStream().feed(b"data: {not json\r\n\r\n")
    assert (caught.value.outcome.value, caught.value.error_code) == ("protocol_error", "malformed_chunk")


ERRORS = json.loads((CAPTURES / "gemini_errors.json").read_text())


@pytest.mark.parametrize("case", ERRORS, ids=[c["name"] for c in ERRORS])
def test_error_table(case):
    outcome, code, message = classify_google_error(case["status"], case["body"])
    assert (outcome.value, code) == (case["outcome"], case["code"])
    assert message  # every error says something


def test_error_message_of_html_is_its_title():
    page = next(c for c in ERRORS if c["name"] == "502 GFE HTML")
    assert classify_google_error(502, page["body"])[2] == "HTML body: Error 502 (Server Error)!!1"


def _job(**probe) -> ProbeJob:
    provider = ProviderConfig(type="gemini", base_url="https://generativelanguage.googleapis.com/v1beta")
    return ProbeJob(target="t", provider_name="g", provider=provider, api_key=Secret("AIzaFixtureKey0000000000000"),
                    model="gemini-2.5-flash", probe=ProbeConfig(kind="rest", **probe), location=None)


def test_request_puts_the_key_in_a_header_only():
    url, headers, body = build_request(_job(thinking_budget=0, max_tokens=16, prompt="Say OK"))
    assert url == ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
                   ":streamGenerateContent?alt=sse")
    assert "AIza" not in url and "key=" not in url
    assert headers["x-goog-api-key"] == "AIzaFixtureKey0000000000000"
    assert json.loads(body) == {"contents": [{"role": "user", "parts": [{"text": "Say OK"}]}],
                                "generationConfig": {"maxOutputTokens": 16, "thinkingConfig": {"thinkingBudget": 0}}}


def test_request_leaves_thinking_to_the_model_by_default():
    _url, _headers, body = build_request(_job())
    assert "thinkingConfig" not in json.loads(body)["generationConfig"]


def test_a_missing_finish_reason_is_accepted_only_where_optional():
    raw = (CAPTURES / "gemini_no_finish.sse").read_bytes()
    for require, expected in ((True, "no_terminator"), (False, None)):
        stream = GeminiStream(require_finish=require)
        stream.feed(raw)
        stream.feed(b"", final=True)
        failure = stream.verdict()
        assert (failure.error_code if failure else None) == expected
