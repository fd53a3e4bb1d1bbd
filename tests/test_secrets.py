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


def key_pieces(key: str, size: int = 6) -> set[str]:
    """Every ``size``-character piece of ``key``, and its last 4 (the tail a masked echo shows)."""
    return {key[i:i + size] for i in range(len(key) - size + 1)} | {key[-4:]}


def assert_no_piece(out: str, key: str) -> None:
    lowered = out.lower()
    leaks = sorted(p for p in key_pieces(key) if p.lower() in lowered)
    assert not leaks, f"{out!r} keeps {leaks}"


@pytest.mark.parametrize("template", [
    "Incorrect API key provided: {k}. You can find your API key at https://platform.openai.com",
    "Incorrect API key provided: {head}****************{tail}. You can find your API key",
    "key {head}...{tail} rejected",
    "key {k6}...{tail} rejected",
    "key {k5}…{tail} rejected",
    "key {head}…{tail} rejected",
    "key {k6}***...{tail} rejected",
    'key "...{tail}" rejected',
    "key …{tail}.",
    "your key {upper} is invalid",
    "your key {lower} is invalid",
    "a piece {middle} from the middle",
    "Authorization: Bearer {k}",
    "GET https://generativelanguage.googleapis.com/v1/models?key={k}&alt=sse",
    "prefix only {head12} here",
    "suffix only {tail8} here",
    "id {head}_{tail8}",
])
def test_redact_removes_key_and_echoed_fragments(template):
    Secret(KEY)  # known to the process, as every configured key is
    text = template.format(k=KEY, head=KEY[:8], tail=KEY[-4:], head12=KEY[:12], tail8=KEY[-8:],
                           k6=KEY[:6], k5=KEY[:5], upper=KEY.upper(), lower=KEY.lower(),
                           middle=KEY[14:26])
    out = redact(text)
    assert REDACTED in out
    assert_no_piece(out, KEY)


# A key no provider prefix announces (Azure's are hex): only its known value gives its echo away.
PLAIN_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9QZXV"


@pytest.mark.parametrize("text", [
    f"key {PLAIN_KEY[:4]}...{PLAIN_KEY[-4:]} rejected",
    f"key {PLAIN_KEY[:6]}…{PLAIN_KEY[-4:]} rejected",
    f"key ****{PLAIN_KEY[-4:]} rejected",
    f"key ...{PLAIN_KEY[-4:].lower()} rejected",
    f"key {PLAIN_KEY[:8].upper()}... rejected",
])
def test_redact_removes_masked_echoes_of_a_key_without_a_prefix(text):
    Secret(PLAIN_KEY)
    out = redact(text)
    assert REDACTED in out and out.startswith("key ") and out.endswith(" rejected")
    assert_no_piece(out, PLAIN_KEY)


@pytest.mark.parametrize("text", [
    "sk-abc***...xyz", "sk-proj-...WXYZ", "sk-pr...WXYZ", "sk-proj…WXYZ", "sk-ant-api03-…AbCd",
    "AIzaSy...Q1w2",
])
def test_redact_removes_masked_echoes_of_unknown_keys(text):
    out = redact(f"Incorrect key {text}, see the docs")
    assert out == f"Incorrect key {REDACTED}, see the docs"


def test_redact_removes_unknown_key_shapes():
    assert "sk-live" not in redact("sent sk-live-abcdefghijklmnop to a server")
    assert "AIzaSy" not in redact("key AIzaSyA1234567890abcdefgh was invalid")


def test_a_known_key_does_not_break_other_redactions():
    Secret("sk-test-unrelated-123456789")
    assert "AIzaSy" not in redact("key AIzaSyA123456789abcdefgh was invalid")


@pytest.mark.parametrize("text", [
    "Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000. Try again in 1.2s.",
    "Loading… please wait... the session... resumed, e.g. versions 1.2...1.4 and ranges 1..10",
    "The model gpt-4o... is overloaded. Retry... later (request id req_abc123def456).",
])
def test_redact_leaves_ordinary_text_alone(text):
    Secret(KEY)
    Secret(PLAIN_KEY)
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


def test_request_ids_are_redacted_capped_one_line_tokens():
    from modelwatch.probes.base import MAX_REQUEST_ID_LEN, clean_request_id

    Secret(KEY)
    assert clean_request_id("req_0123abcd") == "req_0123abcd"
    for echoed in (KEY, KEY.upper(), f"{KEY[:8]}...{KEY[-4:]}", f"{KEY[:5]}…{KEY[-4:]}"):
        out = clean_request_id(f"req_1 {echoed}")
        assert out == f"req_1 {REDACTED}"
    # Controls cannot split a key out of redaction's reach, nor a line in two.
    split = clean_request_id(f"req_2\n{KEY[:20]}\x00{KEY[20:]}\u2028x")
    assert split == f"req_2{REDACTED}x"
    long = clean_request_id("r" * 5000 + KEY)
    assert long == "r" * MAX_REQUEST_ID_LEN
    assert clean_request_id(None) is None and clean_request_id(" \t") is None


@pytest.mark.parametrize("offset", [*range(150, 330, 7), *range(930, 975, 5)])
def test_short_error_of_a_huge_text_keeps_no_piece_of_a_key_wherever_it_is_cut(offset):
    Secret(KEY)
    out = short_error("a" * offset + " " + KEY + " rejected " + "x " * 5000)
    assert len(out) <= 240
    assert_no_piece(out, KEY)
