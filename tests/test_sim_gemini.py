"""The simulator's Gemini REST endpoints, over real loopback sockets, raw and through google-genai."""

from __future__ import annotations

import json
import urllib.request

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from conftest import with_sim
from modelwatch.sim.gemini import ERRORS
from modelwatch.sim.scenario import ERROR_KINDS, Scenario

KEY = "AIzaSyFixtureKey0123456789abcdefghijk"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say OK"}]}], "generationConfig": {"maxOutputTokens": 16}}
STREAM = "/v1beta/models/{model}:streamGenerateContent?alt=sse"


def make_scenario(**models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 3, "models": models})


def fetch(scenario: Scenario, path: str, body=BODY, headers: dict | None = None, model: str = "m") -> tuple:
    """POST to the in-process simulator; (status, headers, raw body bytes, request log)."""
    headers = {"x-goog-api-key": KEY} if headers is None else headers

    async def go(session, url):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with session.post(url + path.format(model=model), data=data, headers=headers) as resp:
            raw = await resp.read()
        async with session.get(url + "/_sim/requests") as log:
            return resp.status, resp.headers, raw, await log.json()
    return with_sim(scenario, go)


def events(raw: bytes) -> list[dict]:
    """The JSON payloads of an SSE body framed the Gemini way (CRLF, ``data: `` with the space)."""
    blocks = raw.split(b"\r\n\r\n")
    assert blocks[-1] == b"", "every event ends with CRLF CRLF"
    out = []
    for block in blocks[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block, block
        out.append(json.loads(block[len(b"data: "):]))
    return out


FAST = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 3}


# ---------------------------------------------------------------- streams


def test_stream_shape_usage_and_log():
    status, headers, raw, log = fetch(make_scenario(m=FAST), STREAM)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    chunks = events(raw)
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == ["OK", " from", " the"]
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    # Early chunks report the prompt only; the last has every count, consistently summed.
    assert all(set(c["usageMetadata"]) == {"promptTokenCount", "totalTokenCount", "promptTokensDetails"}
               for c in chunks[:-1])
    usage = chunks[-1]["usageMetadata"]
    assert usage["candidatesTokenCount"] == 3
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + 3
    assert {c["responseId"] for c in chunks} == {log[-1]["request_id"]}
    assert {c["modelVersion"] for c in chunks} == {"m"}
    assert "x-request-id" not in headers and not any(h.lower().startswith("x-ratelimit") for h in headers)
    rec = log[-1]
    assert (rec["path"], rec["model"], rec["status"], rec["outcome"]) == (
        "/v1beta/models/m:streamGenerateContent", "m", 200, "ok")
    assert rec["injected_ttft_s"] <= rec["actual_ttft_s"] <= rec["actual_duration_s"]


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_both_versions_and_both_key_places(version):
    path = f"/{version}/models/{{model}}:streamGenerateContent?alt=sse"
    assert fetch(make_scenario(m=FAST), path)[0] == 200
    status, _h, raw, _log = fetch(make_scenario(m=FAST), path + f"&key={KEY}", headers={})
    assert status == 200 and events(raw)[-1]["candidates"][0]["finishReason"] == "STOP"


def test_max_output_tokens_caps_the_answer():
    body = {**BODY, "generationConfig": {"maxOutputTokens": 2}}
    chunks = events(fetch(make_scenario(m={**FAST, "tokens": 5}), STREAM, body)[2])
    assert len(chunks) == 2 and chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 2


def test_thought_parts_then_text_then_a_signature_part():
    chunks = events(fetch(make_scenario(m={**FAST, "ttft_ms": 20, "thinking_tokens": 2}), STREAM)[2])
    parts = [c["candidates"][0].get("content", {}).get("parts", [{}])[0] for c in chunks]
    assert [p.get("thought") for p in parts[:2]] == [True, True]
    assert [p["text"] for p in parts[2:5]] == ["OK", " from", " the"]
    assert parts[-1]["text"] == "" and parts[-1]["thoughtSignature"]
    assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 2
    # thinkingBudget 0 turns thinking off.
    body = {**BODY, "generationConfig": {"maxOutputTokens": 16, "thinkingConfig": {"thinkingBudget": 0}}}
    plain = events(fetch(make_scenario(m={**FAST, "thinking_tokens": 2}), STREAM, body)[2])
    assert not any(c["candidates"][0]["content"]["parts"][0].get("thought") for c in plain)
    assert "thoughtsTokenCount" not in plain[-1]["usageMetadata"]


def test_without_alt_sse_the_stream_is_one_json_array():
    status, headers, raw, _log = fetch(make_scenario(m=FAST), "/v1/models/{model}:streamGenerateContent")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    chunks = json.loads(raw)
    assert len(chunks) == 3 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_generate_content_is_one_json_object():
    status, _h, raw, log = fetch(make_scenario(m=FAST), "/v1/models/{model}:generateContent")
    answer = json.loads(raw)
    assert status == 200 and answer["candidates"][0]["content"]["parts"][0]["text"] == "OK from the"
    assert answer["usageMetadata"]["candidatesTokenCount"] == 3 and log[-1]["outcome"] == "ok"


def test_prompt_blocked_stream():
    chunks = events(fetch(make_scenario(m={**FAST, "error": "content_blocked"}), STREAM)[2])
    assert len(chunks) == 1 and "candidates" not in chunks[0]
    assert chunks[0]["promptFeedback"]["blockReason"] == "SAFETY"


# ---------------------------------------------------------------- faults


def test_midstream_error_is_a_data_event_then_eof():
    status, _h, raw, log = fetch(make_scenario(m={**FAST, "midstream_error_after": 1}), STREAM)
    chunks = events(raw)
    assert status == 200 and len(chunks) == 2
    assert chunks[1] == ERRORS["server_error"].body("m")
    assert log[-1]["outcome"] == "midstream_error"


def test_raw_error_is_unframed_pretty_json_then_eof():
    _s, _h, raw, log = fetch(make_scenario(m={**FAST, "raw_error_after": 1}), STREAM)
    framed, _, rest = raw.partition(b"\r\n\r\n")
    assert framed.startswith(b"data: ")
    assert rest.startswith(b"{\n  \"error\": {") and not any(line.startswith(b"data:") for line in rest.splitlines())
    assert json.loads(rest)["error"]["status"] == "INTERNAL"
    assert log[-1]["outcome"] == "raw_error"


def test_malformed_chunk_then_carries_on():
    raw = fetch(make_scenario(m={**FAST, "malformed_after": 1}), STREAM)[2]
    assert b"data: {not json\r\n\r\n" in raw and raw.count(b"finishReason") == 1


# ---------------------------------------------------------------- auth and errors


def test_refused_key_gets_googles_api_key_invalid():
    status, headers, raw, log = fetch(make_scenario(m=FAST), STREAM, headers={"x-goog-api-key": "sk-bad-x"})
    error = json.loads(raw)["error"]
    assert status == 400 and headers["Content-Type"] == "application/json; charset=UTF-8"
    assert (error["code"], error["status"], error["message"]) == (
        400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
    assert error["details"][0] == {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                   "domain": "googleapis.com",
                                   "metadata": {"service": "generativelanguage.googleapis.com"}}
    assert log[-1]["outcome"] == "auth_error"


def test_missing_key_is_permission_denied():
    status, _h, raw, _log = fetch(make_scenario(m=FAST), STREAM, headers={})
    error = json.loads(raw)["error"]
    assert (status, error["status"]) == (403, "PERMISSION_DENIED")
    assert error["message"].startswith("Method doesn't allow unregistered callers")


def test_unknown_model_unknown_method_and_bad_body():
    status, _h, raw, _log = fetch(make_scenario(m=FAST), STREAM, model="nope")
    assert status == 404 and json.loads(raw)["error"]["message"].startswith(
        "models/nope is not found for API version v1beta")
    assert fetch(make_scenario(m=FAST), "/v1/models/m:embedContent")[0] == 404
    status, _h, raw, _log = fetch(make_scenario(m=FAST), STREAM, body=b"{nope")
    assert (status, json.loads(raw)["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert fetch(make_scenario(m=FAST), STREAM, body={"contents": []})[0] == 400


@pytest.mark.parametrize("kind", [k for k in ERROR_KINDS if k != "content_blocked"])
def test_every_error_kind_has_googles_status_and_body(kind):
    spec = ERRORS[kind]
    status, headers, raw, log = fetch(make_scenario(m={"error": kind}), STREAM)
    assert status == spec.status and log[-1]["outcome"] == kind
    if spec.html:
        assert headers["Content-Type"].startswith("text/html") and b"<title>Error" in raw
        return
    error = json.loads(raw)["error"]
    assert (error["code"], error["status"]) == (spec.status, spec.rpc)


def test_quota_bodies_tell_per_day_from_per_minute():
    def details(kind: str) -> list[dict]:
        return json.loads(fetch(make_scenario(m={"error": kind}), STREAM)[2])["error"]["details"]

    day = details("quota_exhausted")
    assert "PerDay" in day[1]["violations"][0]["quotaId"]
    minute = details("rate_limited")
    assert "PerMinute" in minute[1]["violations"][0]["quotaId"] and minute[2]["retryDelay"] == "31s"


def test_error_array_shape_and_non_sse_stream_errors():
    arrayed = json.loads(fetch(make_scenario(m={"error": "overloaded", "error_shape": "gemini_array"}), STREAM)[2])
    assert isinstance(arrayed, list) and arrayed[0]["error"]["status"] == "UNAVAILABLE"
    plain = json.loads(fetch(make_scenario(m={"error": "overloaded"}), "/v1/models/{model}:streamGenerateContent")[2])
    assert isinstance(plain, list)


# ---------------------------------------------------------------- the official SDK


def sdk(sim_url: str, version: str | None = "v1beta", key: str = KEY) -> genai.Client:
    options = genai_types.HttpOptions(base_url=sim_url, api_version=version) if version else \
        genai_types.HttpOptions(base_url=sim_url)
    return genai.Client(api_key=key, http_options=options)


@pytest.mark.parametrize("version", ["v1beta", None])  # None: the SDK's default (v1)
def test_sdk_streams_to_completion(sim_url, version):
    client = sdk(sim_url, version)  # keep a reference: a collected Client closes its transport
    chunks = list(client.models.generate_content_stream(model="gem-healthy", contents="Say OK"))
    assert "".join(c.text for c in chunks) == "OK from the modelwatch"
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == 4
    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        paths = [rec["path"] for rec in json.load(resp) if rec["request_id"] == chunks[0].response_id]
    assert paths == [f"/{version or 'v1'}/models/gem-healthy:streamGenerateContent"]


def test_sdk_generate_content_and_thoughts(sim_url):
    client = sdk(sim_url)
    assert client.models.generate_content(model="gem-healthy", contents="Say OK").text == "OK from the modelwatch"
    chunks = list(client.models.generate_content_stream(model="gem-thinking", contents="Say OK"))
    assert any(p.thought for c in chunks for p in (c.candidates[0].content.parts or ()))
    assert chunks[-1].usage_metadata.thoughts_token_count == 4


@pytest.mark.parametrize("model,cls,code,status", [
    ("gem-err-rate", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
    ("gem-err-bad-request", genai_errors.ClientError, 400, "INVALID_ARGUMENT"),
    ("gem-no-such-model", genai_errors.ClientError, 404, "NOT_FOUND"),
    ("gem-err-overloaded", genai_errors.ServerError, 503, "UNAVAILABLE"),
    ("gem-err-server", genai_errors.ServerError, 500, "INTERNAL"),
    ("gem-midstream", genai_errors.ServerError, 500, "INTERNAL"),
    ("gem-raw-error", genai_errors.ServerError, 500, "INTERNAL"),
])
def test_sdk_raises_the_right_error(sim_url, model, cls, code, status):
    client = sdk(sim_url)
    with pytest.raises(cls) as caught:
        list(client.models.generate_content_stream(model=model, contents="Say OK"))
    assert (caught.value.code, caught.value.status) == (code, status)


def test_sdk_refused_key(sim_url):
    client = sdk(sim_url, key="sk-bad-Canary")
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gem-healthy", contents="Say OK")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_sdk_thinking_level_is_accepted_and_logged(sim_url):
    client = sdk(sim_url)
    config = genai_types.GenerateContentConfig(
        thinking_config=genai_types.ThinkingConfig(thinking_level=genai_types.ThinkingLevel.MINIMAL))
    chunks = list(client.models.generate_content_stream(model="gem-thinking", contents="Say OK", config=config))
    assert not any(p.thought for c in chunks for p in (c.candidates[0].content.parts or ()))
    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        entry = [r for r in json.load(resp) if r["request_id"] == chunks[0].response_id][0]
    # google-genai 3.6 writes this nested key in snake_case; the API (and the simulator) take both spellings.
    assert entry["options"]["generationConfig"]["thinkingConfig"] in ({"thinkingLevel": "MINIMAL"},
                                                                     {"thinking_level": "MINIMAL"})


@pytest.mark.parametrize("thinking", [{"thinkingLevel": "EXTREME"}, {"thinkingLevel": "low", "thinkingBudget": 0}])
def test_bad_thinking_config_is_invalid_argument(thinking):
    body = {**BODY, "generationConfig": {"maxOutputTokens": 16, "thinkingConfig": thinking}}
    status, _, raw, _ = fetch(make_scenario(m=FAST), STREAM, body=body)
    assert status == 400 and json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"
