"""The simulator's OpenAI Responses endpoint, over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``openai`` SDK; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time

import aiohttp
import openai
import pytest

from conftest import with_sim
from modelwatch.sim import start_sim
from modelwatch.sim.scenario import Scenario

KEY = {"Authorization": "Bearer sk-test"}
FAST = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 3}
TEXT3 = "OK from the"


def make_scenario(**models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 1, "keys": [], "models": models})


async def post(session, url, model="m", *, path="/v1/responses", headers=KEY, stream=True, **extra):
    """POST a Responses request; returns (status, headers, body text)."""
    body = {"model": model, "input": "Say OK", "stream": stream, "store": False, **extra}
    async with session.post(url + path, json=body, headers=headers) as response:
        return response.status, response.headers, await response.text()


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE block; comments as (None, line)."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            out.append((None, block))
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        out.append((lines[0][len("event: "):], lines[1][len("data: "):]))
    return out


def objects(events) -> list[dict]:
    out = []
    for _, data in events:
        with contextlib.suppress(ValueError):
            out.append(json.loads(data))
    return out


def deltas(objs) -> list[str]:
    return [o["delta"] for o in objs if o["type"] == "response.output_text.delta"]


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


def test_healthy_stream_has_the_responses_shape():
    async def body(session, url):
        return (*await post(session, url), await sim_log(session, url))

    status, headers, text, log = with_sim(make_scenario(m=FAST), body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"]) and "x-ratelimit-limit-tokens" in headers
    events = sse(text)
    objs = objects(events)
    assert [name for name, _ in events] == [o["type"] for o in objs]  # event: names the data's type
    assert [o["sequence_number"] for o in objs] == list(range(len(objs)))
    assert [o["type"] for o in objs] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 3, "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert "[DONE]" not in text
    assert deltas(objs) == ["OK", " from", " the"]
    final = objs[-1]["response"]
    assert {o.get("response", {}).get("id", final["id"]) for o in objs} == {final["id"]}
    assert final["status"] == "completed" and final["store"] is False and final["incomplete_details"] is None
    assert final["output"][0]["content"][0]["text"] == TEXT3
    usage = final["usage"]
    assert usage["output_tokens"] == 3 and usage["total_tokens"] == usage["input_tokens"] + 3
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert log[0]["outcome"] == "ok" and log[0]["path"] == "/v1/responses" and log[0]["actual_ttft_s"] >= 0.005


def test_max_output_tokens_cuts_the_answer_incomplete():
    async def body(session, url):
        return await post(session, url, max_output_tokens=16)

    _, _, text = with_sim(make_scenario(m={**FAST, "tokens": 20, "inter_token_ms": 0}), body)
    objs = objects(sse(text))
    assert len(deltas(objs)) == 16
    final = objs[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"
    assert final["response"]["usage"]["output_tokens"] == 16


@pytest.mark.parametrize("behaviour,count", [({"error": "content_blocked"}, 0),
                                             ({"finish_reason": "content_filter"}, 3)])
def test_content_filter_ends_incomplete(behaviour, count):
    async def body(session, url):
        return (await post(session, url))[2]

    objs = objects(sse(with_sim(make_scenario(m={**FAST, **behaviour}), body)))
    assert len(deltas(objs)) == count
    assert objs[-1]["type"] == "response.incomplete"
    assert objs[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}


def test_non_streaming_request_gets_a_response_object():
    async def body(session, url):
        return await post(session, url, stream=False)

    status, headers, text = with_sim(make_scenario(m=FAST), body)
    obj = json.loads(text)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert obj["object"] == "response" and obj["status"] == "completed"
    assert obj["output"][0]["content"][0]["text"] == TEXT3 and obj["usage"]["output_tokens"] == 3


# ---------------------------------------------------------------- auth, validation, routes


def test_auth_validation_and_routes():
    async def body(session, url):
        got = {}
        got["no key"] = await post(session, url, headers={})
        got["bad key"] = await post(session, url, headers={"Authorization": "Bearer sk-bad-000011112222"})
        got["api-key on openai"] = await post(session, url, headers={"api-key": "sk-test"})
        got["no input"] = await post(session, url, input=None)
        got["cap 8"] = await post(session, url, max_output_tokens=8)
        got["effort"] = await post(session, url, reasoning={"effort": "extreme"})
        got["store"] = await post(session, url, store="no")
        got["model"] = await post(session, url, model="nope")
        got["azure v1"] = await post(session, url, path="/openai/v1/responses", headers={"api-key": "sk-test"})
        got["azure dated"] = await post(session, url, path="/openai/responses?api-version=2025-04-01-preview",
                                        headers={"api-key": "sk-test"})
        got["azure no version"] = await post(session, url, path="/openai/responses", headers={"api-key": "sk-test"})
        return {k: (status, json.loads(text) if status != 200 else text) for k, (status, _, text) in got.items()}

    got = with_sim(make_scenario(m=FAST), body)
    assert got["no key"][0] == 401 and "Missing bearer" in got["no key"][1]["error"]["message"]
    assert got["bad key"][0] == 401 and got["bad key"][1]["error"]["code"] == "invalid_api_key"
    assert got["api-key on openai"][0] == 401
    assert got["no input"][0] == 400 and got["no input"][1]["error"]["param"] == "input"
    assert got["cap 8"][0] == 400 and got["cap 8"][1]["error"]["code"] == "integer_below_min_value"
    assert got["effort"][0] == 400 and got["effort"][1]["error"]["param"] == "reasoning.effort"
    assert got["store"][0] == 400 and got["store"][1]["error"]["code"] == "invalid_type"
    assert got["model"][0] == 404 and got["model"][1]["error"]["code"] == "model_not_found"
    for route in ("azure v1", "azure dated"):
        assert got[route][0] == 200 and deltas(objects(sse(got[route][1]))) == ["OK", " from", " the"]
    assert got["azure no version"][0] == 400 and got["azure no version"][1]["error"]["param"] == "api-version"


def test_injected_errors_use_the_chat_statuses_and_headers():
    async def body(session, url):
        return await post(session, url, "r")

    status, headers, text = with_sim(make_scenario(r={"error": "rate_limited"}), body)
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(text)["error"]["code"] == "rate_limit_exceeded"


# ---------------------------------------------------------------- faults


def test_fail_response_with_sends_response_failed_at_ttft():
    async def body(session, url):
        t0 = time.perf_counter()
        result = await post(session, url)
        return result, time.perf_counter() - t0, await sim_log(session, url)

    (status, _, text), took, log = with_sim(
        make_scenario(m={**FAST, "ttft_ms": 60, "fail_response_with": "rate_limit_exceeded"}), body)
    objs = objects(sse(text))
    assert status == 200 and deltas(objs) == [] and took >= 0.06
    assert objs[-1]["type"] == "response.failed"
    assert objs[-1]["response"]["status"] == "failed"
    assert objs[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert log[0]["outcome"] == "response_failed" and log[0]["actual_ttft_s"] is None


def test_error_event_is_standalone():
    async def body(session, url):
        return (await post(session, url))[2], await sim_log(session, url)

    text, log = with_sim(make_scenario(m={**FAST, "error_event": "server_error"}), body)
    events = sse(text)
    assert events[-1][0] == "error"
    error = json.loads(events[-1][1])
    assert set(error) == {"type", "code", "message", "param", "sequence_number"} and error["code"] == "server_error"
    assert log[0]["outcome"] == "error_event"


def test_midstream_error_is_response_failed_after_n_deltas():
    async def body(session, url):
        return (await post(session, url))[2], await sim_log(session, url)

    text, log = with_sim(make_scenario(m={**FAST, "tokens": 5, "midstream_error_after": 2}), body)
    objs = objects(sse(text))
    assert deltas(objs) == ["OK", " from"]
    assert objs[-1]["type"] == "response.failed" and objs[-1]["response"]["error"]["code"] == "server_error"
    assert objs[-1]["response"]["usage"]["output_tokens"] == 2
    assert log[0]["outcome"] == "midstream_error"


def test_disconnect_resets_after_n_deltas():
    async def body(session, url):
        seen = []
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async with session.post(f"{url}/v1/responses", headers=KEY,
                                    json={"model": "m", "input": "Say OK", "stream": True}) as response:
                async for line in response.content:
                    seen.append(line.decode())
        return "".join(seen), await sim_log(session, url)

    text, log = with_sim(make_scenario(m={**FAST, "tokens": 6, "disconnect_after": 2}), body)
    assert deltas(objects(sse(text))) == ["OK", " from"] and "response.completed" not in text
    assert log[0]["outcome"] == "disconnect"


def test_malformed_event_then_the_stream_continues():
    async def body(session, url):
        return (await post(session, url))[2]

    text = with_sim(make_scenario(m={**FAST, "malformed_after": 1}), body)
    events = sse(text)
    bad = [i for i, (_, data) in enumerate(events) if data == "{not json"]
    assert len(bad) == 1
    assert deltas(objects(events[:bad[0]])) == ["OK"] and objects(events)[-1]["type"] == "response.completed"


def test_stall_delays_the_next_delta_and_keepalives_fill_the_wait():
    async def body(session, url):
        arrivals, comments = [], 0
        async with session.post(f"{url}/v1/responses", headers=KEY,
                                json={"model": "m", "input": "Say OK", "stream": True}) as response:
            async for line in response.content:
                if line.startswith(b"data: ") and b'"response.output_text.delta"' in line:
                    arrivals.append(time.perf_counter())
                comments += line.startswith(b": keep-alive")
        return arrivals, comments

    scenario = make_scenario(m={**FAST, "ttft_ms": 100, "keepalive_every_ms": 20, "tokens": 3,
                                "stall_after": 2, "stall_ms": 200})
    arrivals, comments = with_sim(scenario, body)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 3 and gaps[0] < 0.1 and gaps[1] >= 0.195
    assert comments >= 3


def test_injected_ttft_is_honoured_and_logged():
    async def body(session, url):
        t0 = time.perf_counter()
        first = None
        async with session.post(f"{url}/v1/responses", headers=KEY,
                                json={"model": "m", "input": "Say OK", "stream": True}) as response:
            async for line in response.content:
                if first is None and b'"response.output_text.delta"' in line and line.startswith(b"data: "):
                    first = time.perf_counter() - t0
        return first, await sim_log(session, url)

    first, log = with_sim(make_scenario(m={**FAST, "ttft_ms": 120}), body)
    assert log[0]["injected_ttft_s"] == 0.12
    assert 0.12 <= log[0]["actual_ttft_s"] < 0.14 and first >= log[0]["actual_ttft_s"]


# ---------------------------------------------------------------- official SDK


@pytest.mark.slow
def test_openai_sdk_streams_helpers_and_errors():
    scenario = make_scenario(m={**FAST, "tokens": 4}, broke={**FAST, "error": "quota_exhausted"},
                             failing={**FAST, "fail_response_with": "server_error"})
    with sim_in_thread(scenario) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
        events = list(client.responses.create(model="m", input="Say OK", stream=True, store=False,
                                              max_output_tokens=16))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "OK from the modelwatch"
        assert events[-1].response.output_text == "OK from the modelwatch"
        assert events[-1].response.usage.output_tokens == 4

        with client.responses.stream(model="m", input="Say OK") as stream:
            final = stream.get_final_response()
        assert final.output_text == "OK from the modelwatch" and final.status == "completed"

        response = client.responses.create(model="m", input="Say OK")
        assert response.output_text == "OK from the modelwatch" and response.usage.total_tokens > 4

        failed = list(client.responses.create(model="failing", input="Say OK", stream=True))
        assert failed[-1].type == "response.failed" and failed[-1].response.error.code == "server_error"

        with pytest.raises(openai.RateLimitError) as quota:
            client.responses.create(model="broke", input="Say OK", stream=True)
        assert quota.value.code == "insufficient_quota"
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="m", input="Say OK", max_output_tokens=8)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bad-0123456789",
                          max_retries=0).responses.create(model="m", input="Say OK")

        azure = openai.AzureOpenAI(azure_endpoint=server.url, api_key="sk-test", api_version="2025-04-01-preview",
                                   max_retries=0)
        assert azure.responses.create(model="m", input="Say OK").output_text == "OK from the modelwatch"


# ---------------------------------------------------------------- reasoning


def test_reasoning_item_and_summary_come_before_the_message():
    reasoner = {**FAST, "thinking_tokens": 3, "reasoning_ms": 60}

    async def body(session, url):
        summary = await post(session, url, reasoning={"effort": "low", "summary": "auto"})
        plain = await post(session, url, reasoning={"effort": "medium"})
        minimal = await post(session, url, reasoning={"effort": "minimal"})
        return summary, plain, minimal, await sim_log(session, url)

    summary, plain, minimal, log = with_sim(make_scenario(m=reasoner), body)
    objs = objects(sse(summary[2]))
    kinds = [o["type"] for o in objs]
    first_text = kinds.index("response.output_text.delta")
    assert kinds[2:5] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta"]
    assert kinds.index("response.output_item.done") < first_text
    assert kinds.count("response.reasoning_summary_text.delta") == 3
    assert objs[first_text]["output_index"] == 1
    final = objs[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 3 and final["usage"]["output_tokens"] == 6
    plain_kinds = [o["type"] for o in objects(sse(plain[2]))]
    assert "response.reasoning_summary_text.delta" not in plain_kinds and plain_kinds[2] == "response.output_item.added"
    minimal_final = objects(sse(minimal[2]))[-1]["response"]
    assert [item["type"] for item in minimal_final["output"]] == ["message"]
    assert minimal_final["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
    assert [e["injected_ttft_s"] for e in log] == pytest.approx([0.065, 0.065, 0.005])
    assert log[0]["options"]["reasoning"] == {"effort": "low", "summary": "auto"}


def test_openai_sdk_reads_the_reasoning_stream():
    with sim_in_thread(make_scenario(m={**FAST, "thinking_tokens": 2, "reasoning_ms": 20})) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
        with client.responses.stream(model="m", input="Say OK", reasoning={"effort": "low", "summary": "auto"}) as s:
            events = [event.type for event in s]
            final = s.get_final_response()
        assert "response.reasoning_summary_text.delta" in events
        assert final.output_text == "OK from the"
        assert final.usage.output_tokens_details.reasoning_tokens == 2
