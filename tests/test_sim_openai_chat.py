"""The simulator's OpenAI Chat Completions endpoint, over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``openai`` SDK; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import openai
import pytest

from conftest import with_sim
from modelwatch.sim import default_scenario, start_sim
from modelwatch.sim.scenario import ERROR_KINDS, Scenario

KEY = {"Authorization": "Bearer sk-test"}
PROMPT = [{"role": "user", "content": "Say OK"}]
FAST = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 3}
SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------- helpers


def make_scenario(seed: int = 1, keys: list[str] | None = None, **models: dict) -> Scenario:
    """A scenario from model blocks given as keyword arguments."""
    return Scenario.model_validate({"seed": seed, "keys": keys or [], "models": models})


async def post_chat(session, url, model, *, stream=True, include_usage=False, headers=KEY, **extra):
    """POST a chat request; returns (status, headers, body text)."""
    body = {"model": model, "messages": PROMPT, "stream": stream}
    body.update(extra)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        return response.status, response.headers, await response.text()


def sse_events(text: str) -> list[str]:
    """Split an SSE body into events: ``data:`` payloads, or comment lines as-is."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith(("data: ", ":")), block
        events.append(block[len("data: "):] if block.startswith("data: ") else block)
    return events


def chunks(events: list[str]) -> list[dict]:
    """The JSON chunks of a stream (skipping comments, [DONE] and junk)."""
    out = []
    for event in events:
        with contextlib.suppress(ValueError):
            out.append(json.loads(event))
    return out


def contents(events: list[str]) -> list[str]:
    """Non-empty delta contents, in order."""
    return [c["choices"][0]["delta"]["content"] for c in chunks(events)
            if c.get("choices") and c["choices"][0]["delta"].get("content")]


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


def test_healthy_stream_has_openai_shape_and_headers():
    async def body(session, url):
        return await post_chat(session, url, "m", include_usage=True)

    status, headers, text = with_sim(make_scenario(m={**FAST, "tokens": 4}), body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    for name in ("limit-requests", "limit-tokens", "remaining-requests", "remaining-tokens"):
        assert headers[f"x-ratelimit-{name}"].isdigit()
    assert re.fullmatch(r"(\d+m)?[\d.]+m?s", headers["x-ratelimit-reset-requests"])
    assert headers["openai-processing-ms"].isdigit()

    events = sse_events(text)
    assert events[-1] == "[DONE]"
    parsed = chunks(events)
    assert len(parsed) == 1 + 4 + 1 + 1  # role, content, finish, usage
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert contents(events) == ["OK", " from", " the", " modelwatch"]
    finish = parsed[5]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    usage_chunk = parsed[6]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 4 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    assert "reasoning_tokens" in usage["completion_tokens_details"]
    assert all(c["usage"] is None for c in parsed[:-1])
    assert {c["id"] for c in parsed} == {parsed[0]["id"]} and parsed[0]["id"].startswith("chatcmpl-")
    assert {c["created"] for c in parsed} == {parsed[0]["created"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in parsed)


def test_max_completion_tokens_caps_chunks_with_finish_length():
    async def body(session, url):
        return await post_chat(session, url, "m", max_completion_tokens=2)

    _, _, text = with_sim(make_scenario(m={**FAST, "tokens": 6}), body)
    events = sse_events(text)
    assert contents(events) == ["OK", " from"]
    assert chunks(events)[-1]["choices"][0]["finish_reason"] == "length"


def test_content_blocked_is_a_200_stream_without_content():
    async def body(session, url):
        status, _, text = await post_chat(session, url, "m")
        return status, text, await sim_log(session, url)

    status, text, log = with_sim(make_scenario(m={**FAST, "ttft_ms": 60, "error": "content_blocked"}), body)
    events = sse_events(text)
    assert status == 200 and contents(events) == []
    assert log[0]["actual_duration_s"] >= 0.060  # the verdict comes when the first token would
    assert chunks(events)[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert events[-1] == "[DONE]"
    assert log[0]["outcome"] == "content_blocked"


@pytest.mark.parametrize(
    ("usage_mode", "requested", "expect"),
    [
        ("include_usage", True, "usage_chunk"),
        ("include_usage", False, "nothing"),
        ("none", True, "nothing"),
        ("always_final", False, "final_chunk"),
        ("x_groq", False, "x_groq"),
    ],
)
def test_usage_modes(usage_mode, requested, expect):
    async def body(session, url):
        return await post_chat(session, url, "m", include_usage=requested)

    _, _, text = with_sim(make_scenario(m={**FAST, "usage_mode": usage_mode}), body)
    parsed = chunks(sse_events(text))
    with_usage = [c for c in parsed if c.get("usage")]
    final = parsed[-1]
    if expect == "usage_chunk":
        assert with_usage == [final] and final["choices"] == []
    elif expect == "nothing":
        assert all("usage" not in c for c in parsed) and final["choices"]
    elif expect == "final_chunk":
        assert with_usage == [final] and final["choices"][0]["finish_reason"] == "stop"
        assert final["usage"]["completion_tokens"] == 3
    else:
        usage = final["x_groq"]["usage"]
        assert usage["completion_tokens"] == 3
        assert usage["total_tokens"] == usage["prompt_tokens"] + 3 and usage["total_time"] > 0
        assert with_usage == []


# ---------------------------------------------------------------- official SDK


def test_openai_sdk_streams_completes_and_raises_typed_errors():
    scenario = make_scenario(m={**FAST, "tokens": 4}, broke={**FAST, "error": "quota_exhausted"},
                             mid={**FAST, "midstream_error_after": 2})
    with sim_in_thread(scenario) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=PROMPT, stream=True, stream_options={"include_usage": True})
        received = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
        assert text == "OK from the modelwatch"
        assert received[-1].usage.completion_tokens == 4
        assert received[-1].usage.total_tokens == received[-1].usage.prompt_tokens + 4

        completion = client.chat.completions.create(model="m", messages=PROMPT)
        assert completion.choices[0].message.content == "OK from the modelwatch"
        assert completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens == 4

        bad_client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bad-key-0123456789wxyz",
                                   max_retries=0)
        with pytest.raises(openai.AuthenticationError) as auth:
            bad_client.chat.completions.create(model="m", messages=PROMPT)
        # first 8 characters, one star per hidden character, last 4 (25 - 12 = 13 stars)
        assert "Incorrect API key provided: sk-bad-k" + "*" * 13 + "wxyz." in str(auth.value)
        assert auth.value.code == "invalid_api_key"

        with pytest.raises(openai.RateLimitError) as quota:
            client.chat.completions.create(model="broke", messages=PROMPT)
        assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"

        with pytest.raises(openai.APIError, match="The server had an error"):
            list(client.chat.completions.create(model="mid", messages=PROMPT, stream=True))

        assert [m.id for m in client.models.list()] == ["m", "broke", "mid"]


# ---------------------------------------------------------------- auth and validation


def test_auth_rules_follow_openai():
    async def body(session, url):
        results = {}
        for name, headers in {
            "missing": {},
            "empty": {"Authorization": "Bearer "},
            "sk-bad": {"Authorization": "Bearer sk-bad-000000000000"},
            "any": {"Authorization": "Bearer whatever-key"},
        }.items():
            status, _, text = await post_chat(session, url, "m", headers=headers, stream=False)
            results[name] = (status, json.loads(text))
        return results

    results = with_sim(make_scenario(m=FAST), body)
    missing = {"error": {"message": "Missing bearer or basic authentication in header",
                         "type": "invalid_request_error", "param": None, "code": None}}
    assert results["missing"] == (401, missing) and results["empty"] == (401, missing)
    assert results["sk-bad"][0] == 401 and results["sk-bad"][1]["error"]["code"] == "invalid_api_key"
    assert results["any"][0] == 200


def test_keys_list_accepts_only_listed_keys():
    async def body(session, url):
        good = await post_chat(session, url, "m", stream=False, headers={"Authorization": "Bearer sk-good"})
        other = await post_chat(session, url, "m", stream=False, headers={"Authorization": "Bearer sk-other"})
        return good[0], other[0], json.loads(other[2])

    good, other, other_body = with_sim(make_scenario(keys=["sk-good"], m=FAST), body)
    assert (good, other) == (200, 401)
    assert other_body["error"]["message"].startswith("Incorrect API key provided: sk****")


def test_request_validation_and_routing_errors():
    async def body(session, url):
        out = {}
        async with session.post(f"{url}/v1/chat/completions", data=b"{nope", headers=KEY) as r:
            out["bad_json"] = (r.status, await r.json())
        async with session.post(f"{url}/v1/chat/completions", json={"messages": PROMPT}, headers=KEY) as r:
            out["no_model"] = (r.status, await r.json())
        out["max_tokens_0"] = await post_chat(session, url, "m", max_tokens=0)
        out["unknown_model"] = await post_chat(session, url, "gpt-nope")
        async with session.get(f"{url}/v1/nowhere") as r:
            out["route"] = (r.status, await r.json())
        return out

    out = with_sim(make_scenario(m=FAST), body)
    assert out["bad_json"][0] == 400
    assert out["bad_json"][1]["error"]["message"].startswith("We could not parse the JSON body")
    assert out["no_model"] == (400, {"error": {"message": "you must provide a model parameter",
                                               "type": "invalid_request_error", "param": None, "code": None}})
    assert out["max_tokens_0"][0] == 400
    assert json.loads(out["max_tokens_0"][2])["error"]["code"] == "integer_below_min_value"
    status, headers, text = out["unknown_model"]
    assert status == 404 and "x-request-id" in headers
    assert json.loads(text)["error"] == {
        "message": "The model `gpt-nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    assert out["route"] == (404, {"error": {"message": "Invalid URL (GET /v1/nowhere)",
                                            "type": "invalid_request_error", "param": None, "code": None}})


def test_odd_message_content_is_tolerated():
    async def body(session, url):
        messages = [{"role": "user", "content": 5}, "not a message",
                    {"role": "user", "content": [{"type": "text", "text": "Say OK please"}]}]
        return await post_chat(session, url, "m", stream=False, messages=messages)

    status, _, text = with_sim(make_scenario(m=FAST), body)
    assert status == 200
    assert json.loads(text)["usage"]["prompt_tokens"] == 3 + 4 + 4 + (4 + 4)


# ---------------------------------------------------------------- error kinds and shapes

# kind -> (status, error.type, error.code, retry-after header); None type = HTML page.
EXPECTED_ERRORS = {
    "auth_error": (401, "invalid_request_error", "invalid_api_key", None),
    "quota_exhausted": (429, "insufficient_quota", "insufficient_quota", None),
    "rate_limited": (429, "tokens", "rate_limit_exceeded", "1"),
    "overloaded": (503, "service_unavailable_error", "slow_down", "2"),
    "server_error": (500, "server_error", None, None),
    "bad_gateway": (502, None, None, None),
    "gateway_timeout": (504, None, None, None),
    "model_unavailable": (404, "invalid_request_error", "model_not_found", None),
    "bad_request": (400, "invalid_request_error", "unsupported_parameter", None),
    "capacity_exceeded": (498, "service_unavailable_error", "capacity_exceeded", "1"),
}


def test_every_error_kind_is_covered():
    assert set(EXPECTED_ERRORS) | {"content_blocked"} == set(ERROR_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED_ERRORS))
def test_error_kind_status_body_and_headers(kind):
    async def body(session, url):
        return await post_chat(session, url, "m")

    status, headers, text = with_sim(make_scenario(m={**FAST, "error": kind}), body)
    want_status, want_type, want_code, want_retry = EXPECTED_ERRORS[kind]
    assert status == want_status
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers.get("retry-after") == want_retry
    if want_retry:
        assert headers["retry-after-ms"] == str(int(want_retry) * 1000)
    if want_type is None:
        assert headers["Content-Type"].startswith("text/html")
        assert f"<title>{status} " in text
        return
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(text)["error"]
    assert (error["type"], error["code"]) == (want_type, want_code)
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_rate_limited_message_is_realistic_and_names_model():
    async def body(session, url):
        return await post_chat(session, url, "m")

    _, headers, text = with_sim(make_scenario(m={**FAST, "error": "rate_limited"}), body)
    message = json.loads(text)["error"]["message"]
    assert message.startswith("Rate limit reached for m in organization")
    assert "Please try again in 1s." in message
    assert headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        ("openai", lambda b: b["error"]["code"] == "rate_limit_exceeded" and b["error"]["type"] == "tokens"),
        ("openai_numeric_code", lambda b: b["error"]["code"] == 429 and b["error"]["type"] == "tokens"),
        ("vllm_flat", lambda b: b["object"] == "error" and b["code"] == 429 and b["type"] == "RateLimitError"
         and "error" not in b),
        ("gemini_array", lambda b: isinstance(b, list)
         and b[0]["error"]["code"] == 429 and b[0]["error"]["status"] == "RESOURCE_EXHAUSTED"),
        ("mistral_detail", lambda b: list(b) == ["detail"] and b["detail"].startswith("Rate limit reached")),
    ],
)
def test_error_shapes(shape, check):
    async def body(session, url):
        return await post_chat(session, url, "m")

    status, _, text = with_sim(make_scenario(m={**FAST, "error": "rate_limited", "error_shape": shape}), body)
    assert status == 429
    assert check(json.loads(text))


# ---------------------------------------------------------------- stream faults


def test_midstream_error_ends_stream_without_done():
    async def body(session, url):
        status, _, text = await post_chat(session, url, "m")
        return status, text, await sim_log(session, url)

    status, text, log = with_sim(make_scenario(m={**FAST, "tokens": 5, "midstream_error_after": 2}), body)
    events = sse_events(text)
    assert status == 200 and contents(events) == ["OK", " from"]
    assert json.loads(events[-1]) == {"error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": None, "code": None}}
    assert "[DONE]" not in events
    assert log[0]["outcome"] == "midstream_error"


def test_disconnect_resets_connection_after_n_chunks():
    async def body(session, url):
        seen = []
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with session.post(f"{url}/v1/chat/completions", headers=KEY,
                                    json={"model": "m", "messages": PROMPT, "stream": True}) as response:
                async for line in response.content:
                    seen.append(line.decode())
        return seen, await sim_log(session, url)

    seen, log = with_sim(make_scenario(m={**FAST, "tokens": 6, "disconnect_after": 2}), body)
    events = sse_events("".join(seen))
    assert contents(events) == ["OK", " from"]
    assert "[DONE]" not in events
    assert log[0]["outcome"] == "disconnect"


def test_malformed_chunk_then_stream_continues():
    async def body(session, url):
        return await post_chat(session, url, "m")

    _, _, text = with_sim(make_scenario(m={**FAST, "tokens": 3, "malformed_after": 1}), body)
    events = sse_events(text)
    bad = events.index("{not json")
    assert contents(events[:bad]) == ["OK"]
    assert contents(events[bad:]) == [" from", " the"]
    assert events[-1] == "[DONE]"


def test_stall_for_stall_ms_delays_the_next_chunk():
    async def body(session, url):
        arrivals = []
        async with session.post(f"{url}/v1/chat/completions", headers=KEY,
                                json={"model": "m", "messages": PROMPT, "stream": True}) as response:
            async for line in response.content:
                if b'"content":"' in line and b'"content":""' not in line:
                    arrivals.append(time.perf_counter())
        return arrivals

    arrivals = with_sim(make_scenario(m={**FAST, "tokens": 4, "stall_after": 2, "stall_ms": 250}), body)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 4
    assert gaps[1] >= 0.245 and gaps[0] < 0.1 and gaps[2] < 0.1


def test_stall_forever_lasts_until_the_client_gives_up():
    async def body(session, url):
        seen = []
        timeout = aiohttp.ClientTimeout(sock_read=0.3)
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(f"{url}/v1/chat/completions", headers=KEY, timeout=timeout,
                                    json={"model": "m", "messages": PROMPT, "stream": True}) as response:
                async for line in response.content:
                    seen.append(line.decode())
        for _ in range(50):  # the server notices the hang-up asynchronously
            log = await sim_log(session, url)
            if log[0]["client_disconnected"]:
                break
            await asyncio.sleep(0.02)
        return seen, log

    seen, log = with_sim(make_scenario(m={**FAST, "stall_after": 1}), body)
    assert contents(sse_events("".join(seen))) == ["OK"]
    assert log[0]["outcome"] == "stall" and log[0]["client_disconnected"] is True
    assert log[0]["actual_duration_s"] >= 0.3


def test_keepalive_comments_while_waiting_for_first_token():
    async def body(session, url):
        return await post_chat(session, url, "m")

    scenario = make_scenario(m={**FAST, "ttft_ms": 150, "keepalive_every_ms": 20})
    events = sse_events(with_sim(scenario, body)[2])
    first_content = next(i for i, e in enumerate(events) if '"content":"OK"' in e)
    comments = [i for i, e in enumerate(events) if e.startswith(":")]
    assert all(e == ": keep-alive" for e in (events[i] for i in comments))
    assert 5 <= len(comments) <= 8
    assert max(comments) < first_content and min(comments) > 0  # after the role chunk


def test_client_disconnect_is_quiet(caplog):
    async def body(session, url):
        async with session.post(f"{url}/v1/chat/completions", headers=KEY,
                                json={"model": "m", "messages": PROMPT, "stream": True}) as response:
            await response.content.readline()
            response.close()
        await asyncio.sleep(0.2)
        return await sim_log(session, url)

    with caplog.at_level(logging.DEBUG):
        log = with_sim(make_scenario(m={**FAST, "ttft_ms": 30, "tokens": 50, "inter_token_ms": 5}), body)
    assert log[0]["client_disconnected"] is True
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---------------------------------------------------------------- timing, outages, determinism


def test_injected_ttft_is_honoured():
    async def body(session, url):
        client_ttfts = []
        for _ in range(3):
            start = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", headers=KEY,
                                    json={"model": "m", "messages": PROMPT, "stream": True}) as response:
                async for line in response.content:
                    if b'"content":"OK"' in line:
                        client_ttfts.append(time.perf_counter() - start)
                await response.read()
        return client_ttfts, await sim_log(session, url)

    scenario = make_scenario(m={"ttfb_ms": 40, "ttft_ms": 120, "inter_token_ms": 5, "tokens": 3})
    client_ttfts, log = with_sim(scenario, body)
    for entry in log:
        assert entry["injected_ttft_s"] == pytest.approx(0.120)
        assert 0.120 <= entry["actual_ttft_s"] <= 0.125
        assert entry["actual_duration_s"] >= 0.120 + 2 * 0.005  # two more chunks, 5 ms apart
    assert all(0.119 <= t < 0.2 for t in client_ttfts)


def test_jitter_stays_within_bounds_and_is_logged():
    async def body(session, url):
        for _ in range(5):
            await post_chat(session, url, "m", stream=False)
        return await sim_log(session, url)

    log = with_sim(make_scenario(m={**FAST, "ttft_ms": 40, "jitter_ms": 20}), body)
    injected = [entry["injected_ttft_s"] for entry in log]
    assert all(0.020 <= t <= 0.060 for t in injected)
    assert len(set(injected)) == 5


class FakeClock:
    """A settable monotonic clock for outage windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_outage_windows_follow_uptime():
    clock = FakeClock()
    scenario = make_scenario(m={**FAST, "outages": [{"every_s": 10, "for_s": 2, "error": "overloaded"}]})

    async def body(session, url):
        statuses = []
        for uptime in (0.5, 1.99, 2.0, 9.9, 10.1, 13.0):
            clock.now = 1000.0 + uptime
            statuses.append((await post_chat(session, url, "m", stream=False))[0])
        return statuses

    assert with_sim(scenario, body, clock=clock) == [503, 503, 200, 200, 503, 200]


def test_same_seed_gives_same_ids_and_error_draws():
    def run(seed):
        scenario = make_scenario(seed=seed, m={**FAST, "errors": {"server_error": 0.3, "rate_limited": 0.3}})

        async def body(session, url):
            results = []
            for _ in range(20):
                status, headers, _ = await post_chat(session, url, "m", stream=False)
                results.append((headers["x-request-id"], status))
            return results

        return with_sim(scenario, body)

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert {status for _, status in first} == {200, 429, 500}
    assert [rid for rid, _ in first] != [rid for rid, _ in other]


# ---------------------------------------------------------------- request log


def test_request_log_lists_and_clears():
    async def body(session, url):
        await post_chat(session, url, "m")
        await post_chat(session, url, "gpt-nope")
        before = await sim_log(session, url)
        async with session.delete(f"{url}/_sim/requests") as response:
            assert response.status == 200
        async with session.get(f"{url}/_sim/health") as response:
            health = (response.status, await response.text())
        return before, await sim_log(session, url), health

    before, after, health = with_sim(make_scenario(m=FAST), body)
    assert [(e["model"], e["status"], e["outcome"]) for e in before] == [
        ("m", 200, "ok"), ("gpt-nope", 404, "model_unavailable")]
    assert set(before[0]) >= {"request_id", "path", "model", "status", "outcome", "injected_ttft_s",
                              "actual_ttft_s", "actual_duration_s"}
    assert before[0]["path"] == "/v1/chat/completions"
    assert after == [] and health == (200, "ok")


# ---------------------------------------------------------------- scenario files


def test_bundled_demo_scenario():
    scenario = default_scenario()
    assert set(scenario.models) == {"gpt-4o-mini", "flaky-model", "slow-model", "gpt-4o-mini-realtime-preview",
                                    "claude-haiku-4-5", "gemini-2.5-flash", "gemini-live-2.5-flash-preview",
                                    "gpt-4o-mini-transcribe", "gpt-4o-mini-tts"}
    assert scenario.default is None and scenario.keys == []
    assert scenario.models["flaky-model"].errors == {"server_error": 0.10, "overloaded": 0.05,
                                                     "rate_limited": 0.03}
    assert scenario.models["slow-model"].ttft_ms >= 1500
    assert scenario.models["gpt-4o-mini"].tokens == 8


# ---------------------------------------------------------------- serve()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_reports_url_and_exits_cleanly_on_signal(signum):
    code = ("import sys\nfrom modelwatch.sim import serve, default_scenario\n"
            "serve('127.0.0.1:0', default_scenario(), on_ready=lambda url: print(url, flush=True))\n"
            "print('stopped', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        with urllib.request.urlopen(f"{url}/_sim/health", timeout=5) as response:
            assert response.read() == b"ok"
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert out.strip() == "stopped"
    assert "Traceback" not in err


def test_every_scenario_key_is_documented():
    from modelwatch.sim import scenario as scenario_module
    from modelwatch.sim.scenario import ModelBehaviour, Outage

    doc = scenario_module.__doc__
    keys = [*Scenario.model_fields, *ModelBehaviour.model_fields, *Outage.model_fields]
    assert [key for key in keys if key not in doc] == []


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), (":8080", ("127.0.0.1", 8080)), ("[::1]:9", ("::1", 9)),
     ("0.0.0.0:65535", ("0.0.0.0", 65535)), ("localhost:8080", ("localhost", 8080)),
     (" 127.0.0.1:0 ", ("127.0.0.1", 0)), ("8080", ValueError), ("host:http", ValueError),
     ("h:70000", ValueError), ("::1:9", ValueError), ("[]:9", ValueError)],
)
def test_listen_address(listen, expected):
    """The config's HOST:PORT rule (one parser), except that an empty host means loopback."""
    from modelwatch.sim.app import listen_address

    if expected is ValueError:
        with pytest.raises(ValueError, match=r"^listen address .* must be HOST:PORT, e\.g\. "):
            listen_address(listen)
    else:
        assert listen_address(listen) == expected


@pytest.mark.slow
def test_sim_command_names_a_bad_listen_address():
    result = subprocess.run([sys.executable, "-m", "modelwatch", "sim", "--listen", "8080"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("modelwatch: listen address '8080' must be HOST:PORT, "
                             "e.g. 127.0.0.1:9477 or [::1]:9477\n")


# ---------------------------------------------------------------- Azure routes, dialects, reasoning


async def post_path(session, url, path, body, headers):
    async with session.post(f"{url}{path}", json=body, headers=headers) as response:
        return response.status, response.headers, await response.text()


def test_azure_routes_auth_versions_and_errors():
    async def body(session, url):
        chat = {"model": "m", "messages": PROMPT, "stream": True}
        dated = "/openai/deployments/{}/chat/completions?api-version=2025-04-01-preview"
        got = {
            "v1 api-key": await post_path(session, url, "/openai/v1/chat/completions", chat, {"api-key": "sk-az"}),
            "v1 bearer": await post_path(session, url, "/openai/v1/chat/completions", chat, KEY),
            "v1 no key": await post_path(session, url, "/openai/v1/chat/completions", chat, {}),
            "v1 bad key": await post_path(session, url, "/openai/v1/chat/completions", chat,
                                          {"api-key": "sk-bad-0000111122223333"}),
            # the path names the deployment; the body's model is ignored, as on Azure
            "dated": await post_path(session, url, dated.format("m"), {**chat, "model": "other"},
                                     {"api-key": "sk-az"}),
            "dated no version": await post_path(session, url, "/openai/deployments/m/chat/completions", chat,
                                                {"api-key": "sk-az"}),
            "dated unknown": await post_path(session, url, dated.format("nope"), chat, {"api-key": "sk-az"}),
            "dated rate": await post_path(session, url, dated.format("rate"), chat, {"api-key": "sk-az"}),
        }
        return got, await sim_log(session, url)

    (got, log) = with_sim(make_scenario(m=FAST, rate={"error": "rate_limited"}), body)
    for route in ("v1 api-key", "v1 bearer", "dated"):
        status, _, text = got[route]
        events = sse_events(text)
        assert status == 200 and contents(events) == ["OK", " from", " the"], route
        first = json.loads(events[0])
        assert first["choices"] == [] and first["model"] == "" and first["prompt_filter_results"]
        assert all("content_filter_results" in c["choices"][0] for c in chunks(events)[1:] if c.get("choices"))
    assert [e["model"] for e in log if e["path"].startswith("/openai/deployments/m/")][0] == "m"
    for route in ("v1 no key", "v1 bad key"):
        status, _, text = got[route]
        assert status == 401 and json.loads(text)["error"]["code"] == "401"
        assert "sk-bad" not in text
    assert got["dated no version"][0] == 404
    assert json.loads(got["dated no version"][2]) == {"error": {"code": "404", "message": "Resource not found"}}
    status, _, text = got["dated unknown"]
    assert status == 404 and json.loads(text)["error"]["code"] == "DeploymentNotFound"
    status, headers, text = got["dated rate"]
    assert status == 429 and json.loads(text)["error"]["code"] == "429" and headers["retry-after"] == "1"
    assert "2025-04-01-preview" in json.loads(text)["error"]["message"]


def test_azure_content_filter_marks_the_choice_filtered():
    async def body(session, url):
        chat = {"model": "f", "messages": PROMPT, "stream": True}
        return await post_path(session, url, "/openai/v1/chat/completions", chat, {"api-key": "sk-az"})

    status, _, text = with_sim(make_scenario(f={**FAST, "error": "content_blocked"}), body)
    final = [c for c in chunks(sse_events(text)) if c.get("choices") and c["choices"][0]["finish_reason"]][0]
    assert status == 200 and final["choices"][0]["finish_reason"] == "content_filter"
    assert any(r["filtered"] for r in final["choices"][0]["content_filter_results"].values())


def test_openai_sdk_azure_clients_stream_chat_on_both_forms():
    with sim_in_thread(make_scenario(m={**FAST, "tokens": 4})) as server:
        azure = openai.AzureOpenAI(azure_endpoint=server.url, api_key="sk-az", api_version="2025-04-01-preview",
                                   max_retries=0)
        dated = azure.chat.completions.create(model="m", messages=PROMPT, stream=True)
        v1 = openai.OpenAI(base_url=server.url + "/openai/v1", api_key="sk-az", max_retries=0)
        plain = v1.chat.completions.create(model="m", messages=PROMPT, stream=True)
        for stream in (dated, plain):
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "OK from the modelwatch"
        with pytest.raises(openai.NotFoundError):
            azure.chat.completions.create(model="nope", messages=PROMPT)


def test_reasoning_tokens_time_and_effort():
    reasoner = {**FAST, "ttft_ms": 10, "thinking_tokens": 5, "reasoning_ms": 120}

    async def body(session, url):
        got = {}
        for effort in ("high", "minimal", "none", None):
            extra = {} if effort is None else {"reasoning_effort": effort}
            started = time.perf_counter()
            status, _, text = await post_chat(session, url, "r", include_usage=True, **extra)
            got[effort] = (status, chunks(sse_events(text)), time.perf_counter() - started)
        got["bad"] = await post_chat(session, url, "r", reasoning_effort="extreme")
        got["router off"] = await post_chat(session, url, "r", include_usage=True, reasoning={"enabled": False})
        return got

    got = with_sim(make_scenario(r=reasoner), body)
    for effort in ("high", None):
        status, stream, elapsed = got[effort]
        usage = stream[-1]["usage"]
        assert status == 200 and elapsed >= 0.130
        assert usage["completion_tokens_details"]["reasoning_tokens"] == 5 and usage["completion_tokens"] == 8
        assert not any("reasoning" in c["choices"][0]["delta"] for c in stream if c["choices"])  # OpenAI hides it
    for effort in ("minimal", "none"):
        status, stream, elapsed = got[effort]
        assert elapsed < 0.1 and stream[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert got["bad"][0] == 400 and json.loads(got["bad"][2])["error"]["param"] == "reasoning_effort"
    assert chunks(sse_events(got["router off"][2]))[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_field_streams_reasoning_before_content(field):
    async def body(session, url):
        return await post_chat(session, url, "r", headers={})

    scenario = make_scenario(r={**FAST, "thinking_tokens": 3, "reasoning_field": field, "dialect": "ollama"})
    status, _, text = with_sim(scenario, body)
    stream = [c for c in chunks(sse_events(text)) if c["choices"]]
    kinds = [("r" if c["choices"][0]["delta"].get(field) else "c") for c in stream
             if c["choices"][0]["delta"].get(field) or c["choices"][0]["delta"].get("content")]
    assert status == 200 and kinds == ["r", "r", "r", "c", "c", "c"]  # no key needed on Ollama


def test_ollama_dialect_errors_cap_and_shape():
    async def body(session, url):
        missing = await post_chat(session, url, "gone", headers={})
        capped = await post_chat(session, url, "o", headers={}, max_completion_tokens=2, stream=False)
        streamed = await post_chat(session, url, "o", headers={}, max_tokens=2)
        return missing, capped, streamed

    scenario = make_scenario(o={**FAST, "tokens": 4, "dialect": "ollama"},
                             gone={"dialect": "ollama", "error": "model_unavailable"})
    missing, capped, streamed = with_sim(scenario, body)
    assert missing[0] == 404 and json.loads(missing[2]) == {"error": {
        "message": 'model "gone" not found, try pulling it first', "type": "not_found_error", "param": None,
        "code": None}}
    assert json.loads(capped[2])["usage"]["completion_tokens"] == 4  # max_completion_tokens is ignored
    stream = chunks(sse_events(streamed[2]))
    assert contents(sse_events(streamed[2])) == ["OK", " from"]
    assert {c["system_fingerprint"] for c in stream} == {"fp_ollama"} and "obfuscation" not in stream[0]
    assert re.fullmatch(r"chatcmpl-\d{1,3}", stream[0]["id"])
