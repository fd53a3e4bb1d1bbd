"""Secrets never print, and redaction scrubs keys and the fragments providers echo."""

from __future__ import annotations

import pytest

from modelwatch.secrets import REDACTED, Secret, redact, short_error

KEY = "sk-proj-Canary7QzX9bLmN2pR4sT6vW8yA1cE3gH5jK7"


def test_secret_prints_as_placeholder():
    s = Secret(KEY)
    for text in (str(s), repr(s), f"{s}", f"{s!r}", "%s" % s, str([s]), str({"k": s})):
        assert KEY not in text and "Canary" not in text
    assert s.reveal() == KEY


def test_secret_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


def test_empty_secret_is_rejected():
    with pytest.raises(ValueError):
        Secret("   ")


@pytest.mark.parametrize("template", [
    "Incorrect API key provided: {k}. You can find your API key at https://platform.openai.com",
    "Incorrect API key provided: {head}****************{tail}. You can find your API key",
    "key {head}...{tail} rejected",
    "Authorization: Bearer {k}",
    "GET https://generativelanguage.googleapis.com/v1/models?key={k}&alt=sse",
    "prefix only {head12} here",
    "suffix only {tail8} here",
    "id {head}_{tail8}",
])
def test_redact_removes_key_and_echoed_fragments(template):
    Secret(KEY)  # known to the process, as every configured key is
    text = template.format(k=KEY, head=KEY[:8], tail=KEY[-4:], head12=KEY[:12], tail8=KEY[-8:])
    out = redact(text)
    assert KEY not in out
    assert KEY[:8] not in out and KEY[-8:] not in out
    assert REDACTED in out


def test_redact_removes_unknown_key_shapes():
    assert "sk-live" not in redact("sent sk-live-abcdefghijklmnop to a server")
    assert "AIzaSy" not in redact("key AIzaSyA1234567890abcdefgh was invalid")


def test_a_known_key_does_not_break_other_redactions():
    Secret("sk-test-unrelated-123456789")
    assert "AIzaSy" not in redact("key AIzaSyA123456789abcdefgh was invalid")


def test_redact_leaves_ordinary_text_alone():
    text = "Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000. Try again in 1.2s."
    assert redact(text) == text


def test_short_error_is_one_bounded_line():
    out = short_error("line one\nline two " + "x" * 500, limit=80)
    assert "\n" not in out and len(out) <= 80


def test_error_codes_from_server_text_are_short_safe_tokens():
    from modelwatch.probes.base import MAX_CODE_LEN, clean_code

    assert clean_code("RESPONSE_REJECTED") == "response_rejected"
    assert clean_code("close_4000") == "close_4000"
    hostile = clean_code("incomplete_sk-live-Canary0123456789abcdef <script>" + "x" * 500)
    assert "canary" not in hostile and "<" not in hostile and " " not in hostile
    assert len(hostile) <= MAX_CODE_LEN
    assert clean_code("") is None and clean_code(None) is None
