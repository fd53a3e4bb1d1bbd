"""Conversations on the simulator: per-turn TTFT growth, faults from a turn on, barge-in, long sessions.

Every test runs the real simulator on a loopback port and talks to it with
aiohttp (HTTP and raw WebSockets) or the official ``openai`` SDK; nothing is
mocked. The knobs are ``turn_ttft_ms``, ``turn_ttft_after``,
``faults_from_turn``, ``cancel_ms`` and ``audio_after_cancel``; the request
log's ``turn`` (REST) and ``turns`` (sessions) say what was injected, and the
clients check it against what they measured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import openai
import pytest

from conftest import with_sim
from modelwatch.sim.scenario import Scenario

OPENAI_KEY = {"Authorization": "Bearer sk-test"}
GOOGLE_KEY = {"x-goog-api-key": "AIzaSyTurnsKey"}
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
TEXT_SESSION = {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
AUDIO_SESSION = {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}}
WAIT_S = 3.0
# How far a client's TTFT may sit from the injected one: loopback, one event loop for both ends.
EARLY_S, LATE_S = 0.002, 0.015


def scenario(**models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 1, "models": models})


async def sim_log(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(f"{url}/_sim/requests") as response:
        return await response.json()


def assert_measured(measured: float, injected: float) -> None:
    assert injected - EARLY_S <= measured <= injected + LATE_S, (measured, injected)


def user_item(text: str = "Say OK") -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def pcm_b64(ms: int) -> str:
    return base64.b64encode(b"\x00\x00" * (24 * ms)).decode()


# ---------------------------------------------------------------- REST: the resent history is the turn


def chat_history(turns: int) -> list[dict]:
    """A Chat Completions conversation at turn ``turns``: system, then user/assistant pairs."""
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Question {turn}"})
        if turn < turns:
            messages.append({"role": "assistant", "content": "OK"})
    return messages


async def chat_stream(session, url, messages, path="/v1/chat/completions", headers=OPENAI_KEY):
    """POST a streaming chat request; (seconds to the first content delta, every data payload, status)."""
    body = {"model": "m", "messages": messages, "stream": True}
    started = time.perf_counter()
    first = None
    payloads = []
    async with session.post(url + path, json=body, headers=headers) as response:
        if response.status != 200:
            return None, [await response.text()], response.status
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip().decode()
            payloads.append(data)
            if first is None and data.startswith("{"):
                chunk = json.loads(data)
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - started
        return first, payloads, response.status


def test_chat_ttft_grows_with_the_resent_history_as_logged():
    growth = {"ttfb_ms": 0, "ttft_ms": 20, "turn_ttft_ms": 15, "turn_ttft_after": 1, "inter_token_ms": 1,
              "tokens": 2}

    async def body(session, url):
        measured = []
        for turn in range(1, 5):
            first, _, status = await chat_stream(session, url, chat_history(turn))
            assert status == 200
            measured.append(first)
        azure = await chat_stream(session, url, chat_history(3), "/openai/v1/chat/completions",
                                  {"api-key": "az-key"})
        return measured, azure, await sim_log(session, url)

    measured, azure, log = with_sim(scenario(m=growth), body)
    assert [entry["turn"] for entry in log] == [1, 2, 3, 4, 3]
    assert [entry["injected_ttft_s"] for entry in log] == pytest.approx([0.020, 0.035, 0.050, 0.065, 0.050])
    for first, entry in zip(measured, log, strict=False):
        assert_measured(first, entry["injected_ttft_s"])
    assert_measured(azure[0], 0.050)
    assert all(entry["turns"] is None for entry in log)


@pytest.mark.parametrize(("path", "headers", "request_body", "turn"), [
    ("/v1/responses", OPENAI_KEY,
     {"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "OK"},
                              {"type": "message", "role": "user", "content": "b"},
                              {"type": "function_call_output", "call_id": "c", "output": "x"}]}, 2),
    ("/v1/responses", OPENAI_KEY, {"model": "m", "input": "just a string"}, 1),
    ("/v1/messages", {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
     {"model": "m", "max_tokens": 16, "messages": [
         {"role": "user", "content": "a"}, {"role": "assistant", "content": "OK"},
         {"role": "user", "content": "b"}, {"role": "assistant", "content": "OK"},
         {"role": "user", "content": "c"}]}, 3),
    ("/v1beta/models/m:generateContent", GOOGLE_KEY,
     {"contents": [{"parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "OK"}]},
                   {"role": "user", "parts": [{"text": "b"}]}]}, 2),
])
def test_every_rest_protocol_counts_its_user_messages_as_the_turn(path, headers, request_body, turn):
    async def body(session, url):
        started = time.perf_counter()
        async with session.post(url + path, json=request_body, headers=headers) as response:
            await response.read()
            status = response.status
        return status, time.perf_counter() - started, await sim_log(session, url)

    behaviour = {"ttft_ms": 10, "turn_ttft_ms": 20, "inter_token_ms": 1, "tokens": 1}
    status, elapsed, log = with_sim(scenario(m=behaviour), body)
    assert status == 200
    assert log[0]["turn"] == turn
    assert log[0]["injected_ttft_s"] == pytest.approx(0.010 + 0.020 * turn)
    assert elapsed >= log[0]["injected_ttft_s"]


def test_rest_faults_apply_from_their_turn_on():
    async def body(session, url):
        statuses = [(await chat_stream(session, url, chat_history(turn)))[2] for turn in (1, 2, 3, 4, 1)]
        return statuses, await sim_log(session, url)

    failing = {"ttft_ms": 5, "inter_token_ms": 1, "tokens": 2, "error": "server_error", "faults_from_turn": 3}
    statuses, log = with_sim(scenario(m=failing), body)
    assert statuses == [200, 200, 500, 500, 200]
    assert [entry["outcome"] for entry in log] == ["ok", "ok", "server_error", "server_error", "ok"]

    async def stream_body(session, url):
        return [await chat_stream(session, url, chat_history(turn)) for turn in (1, 2)]

    midstream = {"ttft_ms": 5, "inter_token_ms": 1, "tokens": 3, "midstream_error_after": 1, "faults_from_turn": 2}
    (_, first, _), (_, second, _) = with_sim(scenario(m=midstream), stream_body)
    assert first[-1] == "[DONE]" and sum('"content":"' in p and '"content":""' not in p for p in first) == 3
    assert second[-1] != "[DONE]" and '"error"' in second[-1]


def test_turns_before_faults_from_turn_do_not_count_as_spread_draws():
    # spread draws frac(n x 0.618...): n=1 -> 0.618 (no error at 50%), n=2 -> 0.236 (error).
    async def body(session, url):
        return [(await chat_stream(session, url, chat_history(turn)))[2] for turn in (1, 1, 2, 2)]

    flaky = {"ttft_ms": 5, "inter_token_ms": 1, "tokens": 1, "errors": {"server_error": 0.5},
             "error_draws": "spread", "faults_from_turn": 2}
    assert with_sim(scenario(m=flaky), body) == [200, 200, 200, 500]


# ---------------------------------------------------------------- OpenAI Realtime


class Realtime:
    """A raw Realtime WebSocket client with arrival times."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, session, url, modality_event=TEXT_SESSION) -> Realtime:
        ws = await session.ws_connect(url.replace("http://", "ws://") + "/v1/realtime?model=m",
                                      headers=OPENAI_KEY)
        conn = cls(ws)
        await conn.until("session.created")
        await conn.send(modality_event)
        await conn.until("session.updated")
        return conn

    async def recv(self) -> tuple[dict | aiohttp.WSMessage, float]:
        msg = await asyncio.wait_for(self.ws.receive(), WAIT_S)
        at = time.perf_counter()
        return (json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else msg), at

    async def until(self, *types: str) -> list[tuple[dict, float]]:
        events = []
        while True:
            event, at = await self.recv()
            assert isinstance(event, dict), f"socket ended early: {event}"
            events.append((event, at))
            if event["type"] in types:
                return events

    async def send(self, event: dict) -> float:
        await self.ws.send_str(json.dumps(event))
        return time.perf_counter()

    async def text_turn(self) -> tuple[list[dict], float | None]:
        """One user item and response; the events from response.create on, and the measured TTFT."""
        await self.send(user_item())
        await self.until("conversation.item.done")
        sent = await self.send({"type": "response.create"})
        events = await self.until("response.done")
        deltas = [at for event, at in events if event["type"].endswith(".delta")]
        return [event for event, _ in events], (deltas[0] - sent if deltas else None)


def done_of(events: list[dict]) -> dict:
    return next(e for e in events if e["type"] == "response.done")["response"]


def test_realtime_ttft_grows_per_response_create_as_logged():
    growth = {"ttft_ms": 10, "turn_ttft_ms": 10, "inter_token_ms": 1, "tokens": 2}

    async def body(session, url):
        conn = await Realtime.open(session, url)
        measured = [(await conn.text_turn())[1] for _ in range(5)]
        await conn.ws.close()
        return measured, await sim_log(session, url)

    measured, log = with_sim(scenario(m=growth), body)
    turns = log[0]["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4, 5] and log[0]["turn"] is None
    assert [t["injected_ttft_s"] for t in turns] == pytest.approx([0.020, 0.030, 0.040, 0.050, 0.060])
    assert [t["outcome"] for t in turns] == ["ok"] * 5
    for first, entry in zip(measured, turns, strict=True):
        assert_measured(first, entry["injected_ttft_s"])
        assert_measured(entry["actual_ttft_s"], entry["injected_ttft_s"])


@pytest.mark.parametrize(("faults", "expect"), [
    ({"fail_response_with": "server_error"}, "response_failed"),
    ({"error_event": "server_error"}, "error_event"),
    ({"error": "content_blocked"}, "content_blocked"),
    ({"drop_after_deltas": 1}, "disconnect"),
    ({"close_code": 1011, "close_reason": "boom"}, "close"),
])
def test_realtime_faults_apply_from_their_turn_on(faults, expect):
    behaviour = {"ttft_ms": 5, "inter_token_ms": 1, "tokens": 3, "faults_from_turn": 3, **faults}

    async def body(session, url):
        conn = await Realtime.open(session, url)
        early = [(await conn.text_turn())[0] for _ in range(2)]
        await conn.send(user_item())
        await conn.until("conversation.item.done")
        await conn.send({"type": "response.create"})
        third = []
        while True:
            event, _ = await conn.recv()
            third.append(event)
            if not isinstance(event, dict) or event["type"] in ("response.done", "error"):
                break
        await conn.ws.close()
        await asyncio.sleep(0.05)
        return early, third, await sim_log(session, url)

    early, third, log = with_sim(scenario(m=behaviour), body)
    for events in early:
        assert done_of(events)["status"] == "completed"
        assert sum(e["type"] == "response.output_text.delta" for e in events) == 3
    last = third[-1]
    if expect == "response_failed":
        assert last["response"]["status"] == "failed"
    elif expect == "error_event":
        assert last["type"] == "error" and last["error"]["code"] == "server_error"
    elif expect == "content_blocked":
        assert last["response"]["status_details"] == {"type": "incomplete", "reason": "content_filter"}
    elif expect == "disconnect":
        assert sum(isinstance(e, dict) and e["type"] == "response.output_text.delta" for e in third) == 1
        assert not isinstance(third[-1], dict) and third[-1].type is not aiohttp.WSMsgType.TEXT
    else:
        assert third[-1].type is aiohttp.WSMsgType.CLOSE and third[-1].data == 1011
    assert [t["outcome"] for t in log[0]["turns"]] == ["ok", "ok", expect]


async def audio_response(conn: Realtime, audio_deltas_before_cancel: int = 2):
    """A user item and an audio response cancelled after some audio; every event to its response.done, cancel time."""
    await conn.send(user_item())
    events, audio = await conn.until("conversation.item.done"), 0
    await conn.send({"type": "response.create"})
    while audio < audio_deltas_before_cancel:
        event, at = await conn.recv()
        events.append((event, at))
        audio += event["type"] == "response.output_audio.delta"
    cancelled_at = await conn.send({"type": "response.cancel"})
    events += await conn.until("response.done")
    return events, cancelled_at


def test_cancel_ms_keeps_the_response_streaming_until_its_cancelled_done():
    barge = {"ttft_ms": 5, "tokens": 200, "inter_token_ms": 10, "audio_ms": 2000, "audio_chunk_ms": 10,
             "cancel_ms": 60}

    async def body(session, url):
        conn = await Realtime.open(session, url, AUDIO_SESSION)
        events, cancelled_at = await audio_response(conn)
        await conn.ws.close()
        return events, cancelled_at, await sim_log(session, url)

    events, cancelled_at, log = with_sim(scenario(m=barge), body)
    done, done_at = events[-1]
    response = done["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done_at - cancelled_at >= 0.060
    audio_after = [e for e, at in events if at > cancelled_at and e["type"] == "response.output_audio.delta"]
    assert len(audio_after) >= 3  # 10 ms chunks kept coming during the 60 ms
    all_audio = [e for e, _ in events if e["type"] == "response.output_audio.delta"]
    pcm_ms = sum(len(base64.b64decode(e["delta"])) for e in all_audio) / 48
    assert response["usage"]["output_token_details"]["audio_tokens"] == pytest.approx(pcm_ms / 50, abs=1)
    turn = log[0]["turns"][0]
    assert turn["outcome"] == "cancelled" and turn["cancel_latency_s"] >= 0.060
    assert turn["cancel_latency_s"] <= done_at - cancelled_at + 0.005


def test_cancel_without_cancel_ms_ends_at_once_and_cancel_with_nothing_running_is_an_error():
    async def body(session, url):
        conn = await Realtime.open(session, url, AUDIO_SESSION)
        events, cancelled_at = await audio_response(conn)
        await conn.send({"type": "response.cancel"})
        refused, _ = await conn.recv()
        await conn.ws.close()
        return events, cancelled_at, refused

    barge = {"ttft_ms": 5, "tokens": 50, "inter_token_ms": 10, "audio_ms": 1000, "audio_chunk_ms": 10}
    events, cancelled_at, refused = with_sim(scenario(m=barge), body)
    done, done_at = events[-1]
    assert done["response"]["status"] == "cancelled" and done_at - cancelled_at < 0.030
    assert refused["type"] == "error" and refused["error"]["code"] == "response_cancel_not_active"


def test_audio_after_cancel_sends_late_audio_of_the_cancelled_response_from_its_turn_on():
    barge = {"ttft_ms": 5, "tokens": 50, "inter_token_ms": 10, "audio_ms": 1000, "audio_chunk_ms": 10,
             "audio_after_cancel": 3, "faults_from_turn": 2}

    async def body(session, url):
        conn = await Realtime.open(session, url, AUDIO_SESSION)
        turns = []
        for _ in range(2):
            events, _ = await audio_response(conn)
            # Then a text response: whatever arrives before its response.created is late output.
            await conn.send({"type": "response.create",
                             "response": {"output_modalities": ["text"], "max_output_tokens": 1}})
            late = await conn.until("response.created")
            await conn.until("response.done")
            turns.append((events, [e for e, _ in late[:-1]]))
        await conn.ws.close()
        return turns, await sim_log(session, url)

    turns, log = with_sim(scenario(m=barge), body)
    (first, first_late), (second, second_late) = turns
    assert first_late == []
    cancelled = second[-1][0]["response"]
    assert [e["type"] for e in second_late] == ["response.output_audio.delta"] * 3
    assert {e["response_id"] for e in second_late} == {cancelled["id"]}
    sent_before = sum(e["type"] == "response.output_audio.delta" for e, _ in second)
    assert all(base64.b64decode(e["delta"]) for e in second_late)
    outcomes = [(t["outcome"], t.get("audio_after_cancel")) for t in log[0]["turns"]]
    assert outcomes == [("cancelled", None), ("ok", None), ("cancelled", 3), ("ok", None)]
    assert sent_before >= 2


def test_truncate_answers_truncated_and_refuses_what_it_cannot_cut():
    barge = {"ttft_ms": 5, "tokens": 50, "inter_token_ms": 10, "audio_ms": 1000, "audio_chunk_ms": 20}

    async def body(session, url):
        conn = await Realtime.open(session, url, AUDIO_SESSION)
        events, _ = await audio_response(conn, audio_deltas_before_cancel=3)
        audio_ms = sum(len(base64.b64decode(e["delta"])) for e, _ in events
                       if e["type"] == "response.output_audio.delta") // 48
        item_id = next(e for e, _ in events if e["type"] == "response.output_item.added")["item"]["id"]
        user_id = events[0][0]["item"]["id"]
        answers = []
        for truncate in ({"item_id": item_id, "content_index": 0, "audio_end_ms": 20},
                         {"item_id": "item_nope", "content_index": 0, "audio_end_ms": 10},
                         {"item_id": item_id, "content_index": 0, "audio_end_ms": audio_ms + 100},
                         {"item_id": user_id, "content_index": 0, "audio_end_ms": 0},
                         {"item_id": item_id, "content_index": 0}):
            await conn.send({"type": "conversation.item.truncate", "event_id": "evt_t", **truncate})
            answers.append((await conn.recv())[0])
        await conn.ws.close()
        return item_id, audio_ms, answers

    item_id, audio_ms, answers = with_sim(scenario(m=barge), body)
    ok, unknown, too_long, not_audio, missing = answers
    assert ok["type"] == "conversation.item.truncated"
    assert {k: ok[k] for k in ("item_id", "content_index", "audio_end_ms")} == {
        "item_id": item_id, "content_index": 0, "audio_end_ms": 20}
    assert unknown["type"] == "error" and unknown["error"]["code"] == "invalid_value"
    assert "item_nope" in unknown["error"]["message"] and unknown["error"]["event_id"] == "evt_t"
    # After the truncation the item holds 20 ms, so the longer cut names that.
    assert too_long["error"]["code"] == "invalid_value" and too_long["error"]["param"] == "audio_end_ms"
    assert too_long["error"]["message"] == f"Audio content of 20ms is already shorter than {audio_ms + 100}ms"
    assert not_audio["error"]["code"] == "invalid_value"
    assert missing["error"]["code"] == "missing_required_parameter" and missing["error"]["param"] == "audio_end_ms"


def test_truncate_beyond_the_audio_sent_is_refused_before_any_cut():
    barge = {"ttft_ms": 5, "tokens": 50, "inter_token_ms": 10, "audio_ms": 1000, "audio_chunk_ms": 20}

    async def body(session, url):
        conn = await Realtime.open(session, url, AUDIO_SESSION)
        events, _ = await audio_response(conn, audio_deltas_before_cancel=2)
        item_id = next(e for e, _ in events if e["type"] == "response.output_item.added")["item"]["id"]
        sent = sum(len(base64.b64decode(e["delta"])) for e, _ in events
                   if e["type"] == "response.output_audio.delta") // 48
        await conn.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": sent + 1})
        too_long = (await conn.recv())[0]
        await conn.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": sent})
        exact = (await conn.recv())[0]
        await conn.ws.close()
        return sent, too_long, exact

    sent, too_long, exact = with_sim(scenario(m=barge), body)
    assert too_long["error"]["message"] == f"Audio content of {sent}ms is already shorter than {sent + 1}ms"
    assert exact["type"] == "conversation.item.truncated" and exact["audio_end_ms"] == sent


def test_realtime_serves_100_text_and_100_audio_turns_in_one_session_with_growing_usage():
    quick = {"ttft_ms": 0, "inter_token_ms": 0, "tokens": 2, "audio_ms": 20, "audio_chunk_ms": 20}

    async def body(session, url):
        usages = {}
        for name, setup in (("text", TEXT_SESSION), ("audio", AUDIO_SESSION)):
            conn = await Realtime.open(session, url, setup)
            usages[name] = []
            for _ in range(100):
                if name == "text":
                    await conn.send(user_item())
                    await conn.until("conversation.item.done")
                else:
                    await conn.send({"type": "input_audio_buffer.append", "audio": pcm_b64(100)})
                    await conn.send({"type": "input_audio_buffer.commit"})
                    await conn.until("conversation.item.done")
                await conn.send({"type": "response.create"})
                response = done_of([e for e, _ in await conn.until("response.done")])
                assert response["status"] == "completed"
                usages[name].append(response["usage"])
            await conn.ws.close()
        return usages, await sim_log(session, url)

    usages, log = with_sim(scenario(m=quick), body)
    for name in ("text", "audio"):
        inputs = [u["input_tokens"] for u in usages[name]]
        assert len(inputs) == 100 and all(b > a for a, b in zip(inputs, inputs[1:], strict=False)), name
    assert usages["audio"][-1]["output_token_details"]["audio_tokens"] > 0
    assert usages["audio"][-1]["input_token_details"]["audio_tokens"] > 100  # heard and said, 100 times
    assert [len(entry["turns"]) for entry in log] == [100, 100]
    assert all(t["outcome"] == "ok" for entry in log for t in entry["turns"])


def test_openai_sdk_multi_turn_session_with_barge_in():
    pytest.importorskip("websockets")
    barge = {"ttft_ms": 5, "tokens": 10, "inter_token_ms": 10, "audio_ms": 200, "audio_chunk_ms": 20,
             "cancel_ms": 40, "turn_ttft_ms": 5}

    async def body(session, url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test")
        results = []
        async with client.realtime.connect(model="m") as connection:
            await connection.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
            for turn in range(3):
                await connection.conversation.item.create(item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]})
                await connection.response.create()
                cancel_sent = item_id = None
                audio_ms = 0
                async for event in connection:
                    if event.type == "response.output_audio.delta":
                        item_id = event.item_id
                        audio_ms += len(base64.b64decode(event.delta)) // 48
                        if turn == 1 and cancel_sent is None:
                            await connection.response.cancel()
                            cancel_sent = time.perf_counter()
                    if event.type == "response.done":
                        done_at = time.perf_counter()
                        break
                status, truncated = event.response.status, None
                if cancel_sent is not None:
                    await connection.conversation.item.truncate(item_id=item_id, content_index=0,
                                                                audio_end_ms=audio_ms // 2)
                    async for event in connection:
                        if event.type == "conversation.item.truncated":
                            truncated = event
                            break
                latency = done_at - cancel_sent if cancel_sent is not None else None
                results.append((status, latency, truncated, audio_ms))
        return results

    results = with_sim(scenario(m=barge), body)
    assert [r[0] for r in results] == ["completed", "cancelled", "completed"]
    _, latency, truncated, audio_ms = results[1]
    assert latency >= 0.040
    assert truncated.item_id and truncated.content_index == 0 and truncated.audio_end_ms == audio_ms // 2
    assert results[0][3] == results[2][3] == 200


# ---------------------------------------------------------------- Gemini Live


class Live:
    """A raw Gemini Live WebSocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, session, url, setup: dict) -> Live:
        ws = await session.ws_connect(url.replace("http://", "ws://") + LIVE_PATH, headers=GOOGLE_KEY)
        conn = cls(ws)
        await conn.send({"setup": {"model": "models/m", **setup}})
        assert "setupComplete" in await conn.recv()
        return conn

    async def recv(self) -> dict | aiohttp.WSMessage:
        msg = await asyncio.wait_for(self.ws.receive(), WAIT_S)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return json.loads(msg.data)
        return msg

    async def send(self, message: dict) -> float:
        await self.ws.send_str(json.dumps(message))
        return time.perf_counter()

    async def turn(self, *messages: dict) -> tuple[list[dict | aiohttp.WSMessage], float | None]:
        """Send a turn's messages; every message to turnComplete (or the close), and the measured TTFT."""
        for message in messages:
            sent = await self.send(message)
        received, first = [], None
        while True:
            message = await self.recv()
            received.append(message)
            if not isinstance(message, dict):
                return received, first
            content = message.get("serverContent", {})
            if first is None and "modelTurn" in content:
                first = time.perf_counter() - sent
            if content.get("turnComplete"):
                return received, first


TEXT_SETUP = {"generationConfig": {"responseModalities": ["TEXT"]}}
AUDIO_SETUP = {"realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}}}
TEXT_TURN = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Say OK, please"}]}],
                               "turnComplete": True}}


def live_audio_turn(ms: int = 100) -> list[dict]:
    audio = base64.b64encode(b"\x00\x00" * (16 * ms)).decode()
    return [{"realtimeInput": {"activityStart": {}}},
            {"realtimeInput": {"audio": {"data": audio, "mimeType": "audio/pcm;rate=16000"}}},
            {"realtimeInput": {"activityEnd": {}}}]


def test_live_ttft_grows_per_user_turn_as_logged():
    growth = {"ttfb_ms": 0, "ttft_ms": 10, "turn_ttft_ms": 12, "turn_ttft_after": 2, "inter_token_ms": 1,
              "tokens": 2}

    async def body(session, url):
        conn = await Live.open(session, url, TEXT_SETUP)
        measured = [(await conn.turn(TEXT_TURN))[1] for _ in range(5)]
        await conn.ws.close()
        return measured, await sim_log(session, url)

    measured, log = with_sim(scenario(m=growth), body)
    turns = log[0]["turns"]
    assert [t["injected_ttft_s"] for t in turns] == pytest.approx([0.010, 0.010, 0.022, 0.034, 0.046])
    for first, entry in zip(measured, turns, strict=True):
        assert_measured(first, entry["injected_ttft_s"])
        assert_measured(entry["actual_ttft_s"], entry["injected_ttft_s"])
    assert [t["outcome"] for t in turns] == ["ok"] * 5


@pytest.mark.parametrize(("faults", "expect"), [
    ({"close_code": 1011, "close_reason": "Internal error occurred."}, "close"),
    ({"drop_after_deltas": 1}, "disconnect"),
    ({"error": "content_blocked"}, "content_blocked"),
])
def test_live_faults_apply_from_their_turn_on(faults, expect):
    behaviour = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 3, "faults_from_turn": 3, **faults}

    async def body(session, url):
        conn = await Live.open(session, url, TEXT_SETUP)
        turns = [(await conn.turn(TEXT_TURN))[0] for _ in range(3)]
        await conn.ws.close()
        await asyncio.sleep(0.05)
        return turns, await sim_log(session, url)

    turns, log = with_sim(scenario(m=behaviour), body)
    for messages in turns[:2]:
        texts = [p["text"] for m in messages for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])]
        assert texts == ["OK", " from", " the"]
    third = turns[2]
    if expect == "close":
        assert third[-1].type is aiohttp.WSMsgType.CLOSE and third[-1].data == 1011
    elif expect == "disconnect":
        assert len(third) == 2 and not isinstance(third[-1], dict)
    else:
        assert third[-1]["serverContent"].get("turnCompleteReason") == "PROHIBITED_INPUT_CONTENT"
    assert [t["outcome"] for t in log[0]["turns"]] == ["ok", "ok", expect]


def test_live_serves_100_text_turns_and_audio_turns_with_growing_prompt_usage():
    quick = {"ttfb_ms": 0, "ttft_ms": 0, "inter_token_ms": 0, "tokens": 2, "audio_ms": 40, "audio_chunk_ms": 20}

    async def body(session, url):
        text = await Live.open(session, url, TEXT_SETUP)
        text_usage = []
        for _ in range(100):
            messages, _ = await text.turn(TEXT_TURN)
            text_usage.append(messages[-1]["usageMetadata"])
        await text.ws.close()
        audio = await Live.open(session, url, AUDIO_SETUP)
        audio_usage = []
        for _ in range(20):
            messages, _ = await audio.turn(*live_audio_turn())
            assert any("inlineData" in p for m in messages
                       for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", []))
            audio_usage.append(messages[-1]["usageMetadata"])
        await audio.ws.close()
        return text_usage, audio_usage, await sim_log(session, url)

    text_usage, audio_usage, log = with_sim(scenario(m=quick), body)
    for usages in (text_usage, audio_usage):
        prompts = [u["promptTokenCount"] for u in usages]
        assert all(b > a for a, b in zip(prompts, prompts[1:], strict=False)), prompts[:5]
        assert all(u["totalTokenCount"] == u["promptTokenCount"] + u["responseTokenCount"] for u in usages)
        for u in usages:
            assert u["promptTokenCount"] == sum(d["tokenCount"] for d in u["promptTokensDetails"])
    # Each audio turn adds 100 ms heard and 40 ms said: 32 tokens a second.
    audio_prompt = [next(d["tokenCount"] for d in u["promptTokensDetails"] if d["modality"] == "AUDIO")
                    for u in audio_usage]
    assert audio_prompt[0] == 4 and audio_prompt[-1] == pytest.approx(20 * 100 * 0.032 + 19 * 40 * 0.032, abs=2)
    assert [len(entry["turns"]) for entry in log] == [100, 20]


def test_live_turn_interrupted_by_the_next_is_logged_interrupted():
    slow = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 30, "tokens": 10}

    async def body(session, url):
        conn = await Live.open(session, url, TEXT_SETUP)
        await conn.send(TEXT_TURN)
        while "modelTurn" not in (await conn.recv()).get("serverContent", {}):
            pass
        messages, _ = await conn.turn(TEXT_TURN)
        await conn.ws.close()
        return messages, await sim_log(session, url)

    messages, log = with_sim(scenario(m=slow), body)
    assert {"serverContent": {"interrupted": True}} in messages
    assert [t["outcome"] for t in log[0]["turns"]] == ["interrupted", "ok"]
