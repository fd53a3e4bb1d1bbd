"""The simulator's Anthropic Messages endpoint, over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``anthropic`` SDK; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from datetime import datetime, timezone

import aiohttp
import anthropic
import pytest

from conftest import with_sim
from modelwatch.sim import start_sim
from modelwatch.sim.anthropic import ERRORS
from modelwatch.sim.scenario import ERROR_KINDS, Scenario

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
PROMPT = [{"role": "user", "content": "Say OK"}]
FAST = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 3}


def make_scenario(**models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 1, "keys": [], "models": models})


async def post(session, url, model, *, stream=True, headers=HEADERS, max_tokens=16, **extra):
    """POST a Messages request; returns (status, headers, body text)."""
    body = {"model": model, "max_tokens": max_tokens, "messages": PROMPT, "stream": stream, **extra}
    async with session.post(f"{url}/v1/messages", json=body, headers=headers) as response:
        return response.status, response.headers, await response.text()


def events(text: str) -> list[tuple[str, dict | str]]:
    """(event name, parsed data) per SSE event; data that is not JSON stays text."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name, data = re.fullmatch(r"event: (\S+)\ndata: (.*)", block, re.S).groups()
        with contextlib.suppress(ValueError):
            data = json.loads(data)
        out.append((name, data))
    return out


def texts(evs) -> list[str]:
    return [d["delta"]["text"] for n, d in evs
            if n == "content_block_delta" and isinstance(d, dict) and d["delta"]["type"] == "text_delta"]


async def sim_log(session, url) -> list[dict]:
    async with session.get(f"{url}/_sim/requests") as response:
        return await response.json()


@contextlib.contextmanager
def sim_in_thread(scenario: Scenario):
    """Run the simulator on its own loop in a thread, for the synchronous SDK."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_sim(scenario, port=0), loop).result(5)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ---------------------------------------------------------------- stream shape


def test_healthy_stream_has_anthropic_shape_and_headers():
    async def body(session, url):
        answer = await post(session, url, "m")
        return answer, await sim_log(session, url)

    (status, headers, text), log = with_sim(make_scenario(m={**FAST, "tokens": 4}), body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert re.fullmatch(r"req_011C[0-9A-Za-z]{20}", headers["request-id"])
    assert headers["request-id"] == log[0]["request_id"]
    assert headers["anthropic-organization-id"]
    for name in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert int(headers[f"anthropic-ratelimit-{name}-remaining"]) < int(headers[f"anthropic-ratelimit-{name}-limit"])
        reset = datetime.strptime(headers[f"anthropic-ratelimit-{name}-reset"], "%Y-%m-%dT%H:%M:%S%z")
        assert 0 <= (reset - datetime.now(timezone.utc)).total_seconds() <= 61
    assert "retry-after" not in headers

    evs = events(text)
    names = [n for n, _ in evs]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 4 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in evs)  # the data repeats the event name
    message = evs[0][1]["message"]
    assert message["id"].startswith("msg_01") and message["role"] == "assistant" and message["model"] == "m"
    assert message["content"] == [] and message["usage"]["input_tokens"] == 9
    assert texts(evs) == ["OK", " from", " the", " modelwatch"]
    final = evs[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn" and final["usage"]["output_tokens"] == 4
    assert log[0]["outcome"] == "ok" and log[0]["actual_ttft_s"] >= log[0]["injected_ttft_s"] == 0.005
    assert log[0]["actual_duration_s"] >= log[0]["actual_ttft_s"]


def test_max_tokens_caps_text_with_stop_reason_max_tokens():
    async def body(session, url):
        return await post(session, url, "m", max_tokens=2)

    _, _, text = with_sim(make_scenario(m={**FAST, "tokens": 6}), body)
    evs = events(text)
    assert texts(evs) == ["OK", " from"]
    assert evs[-2][1]["delta"]["stop_reason"] == "max_tokens" and evs[-2][1]["usage"]["output_tokens"] == 2


def test_thinking_tokens_come_first_in_their_own_block_and_are_billed():
    async def body(session, url):
        return [await post(session, url, "m", max_tokens=cap) for cap in (16, 3)]

    (_, _, full), (_, _, capped) = with_sim(make_scenario(m={**FAST, "ttft_ms": 30, "thinking_tokens": 3}), body)
    evs = events(full)
    starts = [(d["index"], d["content_block"]["type"]) for n, d in evs if n == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    deltas = [(d["index"], d["delta"]["type"]) for n, d in evs if n == "content_block_delta"]
    assert deltas == [(0, "thinking_delta")] * 3 + [(0, "signature_delta")] + [(1, "text_delta")] * 3
    assert evs[-2][1]["usage"]["output_tokens"] == 6
    # Thinking spends max_tokens first: all three thinking deltas fill a cap of 3, no text at all.
    evs = events(capped)
    assert texts(evs) == [] and evs[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_content_blocked_is_a_200_refusal_without_text():
    async def body(session, url):
        status, _, text = await post(session, url, "m")
        return status, text, await sim_log(session, url)

    status, text, log = with_sim(make_scenario(m={**FAST, "ttft_ms": 60, "error": "content_blocked"}), body)
    evs = events(text)
    assert status == 200 and texts(evs) == []
    assert evs[-2][1]["delta"]["stop_reason"] == "refusal" and evs[-2][1]["delta"]["stop_details"]["type"] == "refusal"
    assert evs[-1][0] == "message_stop"
    assert log[0]["outcome"] == "content_blocked" and log[0]["actual_duration_s"] >= 0.060


def test_faults_midstream_error_malformed_and_pings():
    async def body(session, url):
        return [await post(session, url, m) for m in ("mid", "bad", "ping")], await sim_log(session, url)

    scenario = make_scenario(mid={**FAST, "midstream_error_after": 1}, bad={**FAST, "malformed_after": 1},
                             ping={**FAST, "ttft_ms": 100, "keepalive_every_ms": 20})
    ((_, _, mid), (_, _, bad), (_, _, ping)), log = with_sim(scenario, body)
    evs = events(mid)
    assert texts(evs) == ["OK"] and evs[-1] == ("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})
    evs = events(bad)
    assert ("content_block_delta", "{not json") in evs and evs[-1][0] == "message_stop"
    assert texts(evs) == ["OK", " from", " the"]
    names = [n for n, _ in events(ping)]
    assert names[names.index("content_block_delta") - 4:names.index("content_block_delta")] == ["ping"] * 4
    assert [r["outcome"] for r in log] == ["midstream_error", "malformed", "ok"]


def test_disconnect_resets_the_connection():
    async def body(session, url):
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(session, url, "m")
        return await sim_log(session, url)

    log = with_sim(make_scenario(m={**FAST, "disconnect_after": 1}), body)
    assert log[0]["outcome"] == "disconnect" and log[0]["actual_ttft_s"] is not None


def test_non_streaming_answer_is_a_message():
    async def body(session, url):
        return await post(session, url, "m", stream=False), await post(session, url, "m", max_tokens=2,
                                                                        stream=None)

    (status, headers, text), (_, _, capped) = with_sim(make_scenario(m={**FAST, "tokens": 4}), body)
    message = json.loads(text)
    assert status == 200 and headers["request-id"].startswith("req_011C")
    assert message["type"] == "message" and message["content"] == [{"type": "text", "text": "OK from the modelwatch"}]
    assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] == 4
    capped = json.loads(capped)  # "stream": null is treated as absent
    assert capped["stop_reason"] == "max_tokens" and capped["content"][0]["text"] == "OK from"


# ---------------------------------------------------------------- auth, validation, errors


def test_auth_and_version_rules():
    cases = {
        "missing key": ({"anthropic-version": "2023-06-01"}, 401, "authentication_error",
                        "x-api-key header is required"),
        "bad key": ({**HEADERS, "x-api-key": "sk-bad-0000"}, 401, "authentication_error", "invalid x-api-key"),
        "bad bearer": ({"Authorization": "Bearer sk-bad-0000", "anthropic-version": "2026-10-21"}, 401,
                       "authentication_error", "invalid x-api-key"),
        "no version": ({"x-api-key": "k"}, 400, "invalid_request_error", "anthropic-version: header is required"),
        "x-api-key": (HEADERS, 200, None, None),
        "bearer, SDK version": ({"Authorization": "Bearer k", "anthropic-version": "2026-10-21"}, 200, None, None),
        "any version": ({"x-api-key": "k", "anthropic-version": "1999-01-01"}, 200, None, None),
    }

    async def body(session, url):
        return {name: await post(session, url, "m", stream=False, headers=h) for name, (h, *_) in cases.items()}

    results = with_sim(make_scenario(m=FAST), body)
    for name, (_, status, error_type, message) in cases.items():
        got_status, headers, text = results[name]
        assert got_status == status, name
        assert headers["request-id"].startswith("req_011C"), name
        if error_type:
            error = json.loads(text)
            assert error == {"type": "error", "error": {"type": error_type, "message": message},
                             "request_id": headers["request-id"]}, name


@pytest.mark.parametrize("change, message", [
    ({"model": None}, "model: Field required"),
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"max_tokens": "16"}, "max_tokens: Input should be a valid integer"),
    ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"messages": None}, "messages: Field required"),
    ({"messages": []}, "messages: at least one message is required"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"stream": "yes"}, "stream: Input should be a valid boolean"),
])
def test_invalid_bodies_get_anthropic_400s(change, message):
    request = {"model": "m", "max_tokens": 16, "messages": PROMPT, **change}
    request = {k: v for k, v in request.items() if v is not None}

    async def body(session, url):
        async with session.post(f"{url}/v1/messages", json=request, headers=HEADERS) as response:
            return response.status, await response.json()

    status, error = with_sim(make_scenario(m=FAST), body)
    assert status == 400
    assert error["error"] == {"type": "invalid_request_error", "message": message}


def test_unknown_model_is_a_404_not_found_error():
    async def body(session, url):
        return await post(session, url, "claude-nope")

    status, _, text = with_sim(make_scenario(m=FAST), body)
    assert status == 404 and json.loads(text)["error"] == {"type": "not_found_error", "message": "model: claude-nope"}


def test_the_error_table_covers_every_kind_but_content_blocked():
    assert set(ERRORS) == set(ERROR_KINDS) - {"content_blocked"}


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_each_error_kind_has_anthropic_status_body_and_headers(kind):
    spec = ERRORS[kind]

    async def body(session, url):
        return await post(session, url, "m"), await sim_log(session, url)

    (status, headers, text), log = with_sim(make_scenario(m={**FAST, "error": kind}), body)
    assert status == spec.status and log[0]["outcome"] == kind and log[0]["status"] == status
    if spec.html:
        assert headers["Content-Type"].startswith("text/html") and "<title>" in text
        return
    error = json.loads(text)
    assert error["type"] == "error" and error["error"]["type"] == spec.type and error["error"]["message"]
    assert error["request_id"] == headers["request-id"]
    assert error["error"].get("details") == ({"error_code": spec.error_code} if spec.error_code else None)
    assert ("retry-after" in headers) == (status in (429, 529))


# ---------------------------------------------------------------- official SDK


def test_anthropic_sdk_streams_completes_and_raises_typed_errors():
    scenario = make_scenario(m={**FAST, "tokens": 4}, think={**FAST, "thinking_tokens": 2},
                             busy={**FAST, "error": "overloaded"}, broke={**FAST, "error": "quota_exhausted"},
                             mid={**FAST, "midstream_error_after": 2}, refuse={**FAST, "error": "content_blocked"})
    with sim_in_thread(scenario) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0)
        with client.messages.stream(model="m", max_tokens=16, messages=PROMPT) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "OK from the modelwatch"
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4 and final.usage.input_tokens == 9

        message = client.messages.create(model="m", max_tokens=16, messages=PROMPT, stream=False)
        assert message.content[0].text == "OK from the modelwatch" and message.usage.output_tokens == 4

        with client.messages.stream(model="think", max_tokens=16, messages=PROMPT) as stream:
            final = stream.get_final_message()
        assert [block.type for block in final.content] == ["thinking", "text"]
        assert final.content[0].thinking == "Let me" and final.content[0].signature

        with client.messages.stream(model="refuse", max_tokens=16, messages=PROMPT) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "refusal" and final.content == []

        with pytest.raises(anthropic.OverloadedError) as overloaded:
            client.messages.create(model="busy", max_tokens=16, messages=PROMPT)
        assert isinstance(overloaded.value, anthropic.InternalServerError)
        assert overloaded.value.status_code == 529 and overloaded.value.type == "overloaded_error"

        with pytest.raises(anthropic.RateLimitError) as quota:
            client.messages.create(model="broke", max_tokens=16, messages=PROMPT)
        assert quota.value.error_code == "enforced_spend_limit_reached"
        assert type(quota.value).__name__ == "EnforcedSpendLimitReachedError"

        # A mid-stream error: the SDK raises with the stream's status (200), not OverloadedError.
        with pytest.raises(anthropic.APIStatusError) as mid:
            with client.messages.stream(model="mid", max_tokens=16, messages=PROMPT) as stream:
                list(stream.text_stream)
        assert mid.value.status_code == 200 and not isinstance(mid.value, anthropic.OverloadedError)
        assert mid.value.type == "overloaded_error"

        bad = anthropic.Anthropic(base_url=server.url, api_key="sk-bad-key-0123456789", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as auth:
            bad.messages.create(model="m", max_tokens=16, messages=PROMPT)
        assert auth.value.status_code == 401 and auth.value.request_id.startswith("req_011C")
