"""The simulator's OpenAI Realtime WebSocket endpoint, over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp's
WebSocket client, the ``websockets`` library or the official ``openai`` SDK;
nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import time

import aiohttp
import openai
import pytest

from conftest import with_sim
from modelwatch.sim import ScenarioError, default_scenario, parse_scenario
from modelwatch.sim.scenario import Scenario

KEY = {"Authorization": "Bearer sk-test"}
BETA = {**KEY, "OpenAI-Beta": "realtime=v1"}
FAST = {"ttfb_ms": 0, "ttft_ms": 20, "inter_token_ms": 2, "tokens": 3}
TEXT_SESSION = {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
USER_ITEM = {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say OK"}]}}
WAIT_S = 3.0


# ---------------------------------------------------------------- helpers


def make_scenario(keys: list[str] | None = None, **models: dict) -> Scenario:
    """A scenario from model blocks given as keyword arguments."""
    return Scenario.model_validate({"seed": 1, "keys": keys or [], "models": models})


def ws_url(url: str, path: str = "/v1/realtime?model=m") -> str:
    return url.replace("http://", "ws://") + path


class Conn:
    """An aiohttp WebSocket with JSON helpers and arrival times (perf_counter)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.times: list[float] = []

    async def recv(self) -> dict | aiohttp.WSMessage:
        """The next event as a dict, or the raw message if it is not text (close, error)."""
        msg = await asyncio.wait_for(self.ws.receive(), WAIT_S)
        self.times.append(time.perf_counter())
        return json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else msg

    async def until(self, *types: str) -> list[dict]:
        """Events up to and including the first whose type is in ``types``."""
        events = []
        while True:
            event = await self.recv()
            assert isinstance(event, dict), f"socket ended early: {event}"
            events.append(event)
            if event["type"] in types:
                return events

    async def send(self, event: dict) -> None:
        await self.ws.send_str(json.dumps(event))

    async def closed(self) -> aiohttp.WSMessage:
        """The close message that must come next."""
        msg = await self.recv()
        assert not isinstance(msg, dict), f"expected a close, got {msg}"
        return msg


async def connect(session, url, path="/v1/realtime?model=m", headers=KEY, **kwargs) -> Conn:
    ws = await session.ws_connect(ws_url(url, path), headers=headers, **kwargs)
    return Conn(ws)


async def text_turn(conn: Conn, response: dict | None = None) -> list[dict]:
    """session.created, text session, user item, response; returns events from response.create on."""
    await conn.until("session.created")
    await conn.send(TEXT_SESSION)
    await conn.until("session.updated")
    await conn.send(USER_ITEM)
    await conn.until("conversation.item.done")
    await conn.send({"type": "response.create", **({"response": response} if response else {})})
    return await conn.until("response.done")


async def handshake(session, url, path="/v1/realtime?model=m", headers=KEY):
    """A raw upgrade request, to read a refused handshake's status, headers and body."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    async with session.get(url + path, headers={**upgrade, **headers}) as response:
        body = await response.text()
        return response.status, response.headers, (json.loads(body) if body.startswith(("{", "[")) else body)


async def sim_log(session, url) -> list[dict]:
    async with session.get(f"{url}/_sim/requests") as response:
        return await response.json()


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def assert_usage_consistent(usage: dict) -> None:
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    inp, out = usage["input_token_details"], usage["output_token_details"]
    assert usage["input_tokens"] == inp["text_tokens"] + inp["audio_tokens"] + inp["image_tokens"]
    assert usage["output_tokens"] == out["text_tokens"] + out["audio_tokens"]


# ---------------------------------------------------------------- GA and beta shapes


def test_ga_text_session_event_order_and_usage():
    async def body(session, url):
        conn = await connect(session, url)
        created = await conn.recv()
        await conn.send({**TEXT_SESSION, "event_id": "client_1"})
        updated = await conn.recv()
        await conn.send(USER_ITEM)
        item_events = [await conn.recv(), await conn.recv()]
        await conn.send({"type": "response.create"})
        response_events = await conn.until("rate_limits.updated")
        request_id = conn.ws._response.headers["x-request-id"]
        await conn.ws.close()
        return created, updated, item_events, response_events, request_id, await sim_log(session, url)

    created, updated, item_events, events, request_id, log = with_sim(make_scenario(m=FAST), body)
    session = created["session"]
    assert created["type"] == "session.created" and created["event_id"].startswith("event_")
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["id"].startswith("sess_") and session["model"] == "m"
    assert session["output_modalities"] == ["audio"] and session["max_output_tokens"] == "inf"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["output"]["voice"] == "marin" and session["expires_at"] > time.time()
    assert "modalities" not in session and "input_audio_format" not in session
    assert updated["type"] == "session.updated" and updated["session"]["output_modalities"] == ["text"]
    assert updated["session"]["audio"]["output"]["voice"] == "marin"  # merged, not replaced
    assert types(item_events) == ["conversation.item.added", "conversation.item.done"]
    assert item_events[0]["item"]["role"] == "user" and item_events[0]["previous_item_id"] is None

    assert types(events) == [
        "response.created", "response.output_item.added", "conversation.item.added",
        "response.content_part.added", *["response.output_text.delta"] * 3, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done",
        "rate_limits.updated"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None
    assert events[3]["part"] == {"type": "output_text", "text": ""}
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["OK", " from", " the"] and events[7]["text"] == "OK from the"
    response_id, item_id = events[0]["response"]["id"], events[1]["item"]["id"]
    assert response_id.startswith("resp_") and item_id.startswith("item_")
    assert all(e["response_id"] == response_id and e["item_id"] == item_id for e in events[3:9])
    assert events[2]["previous_item_id"] == item_events[0]["item"]["id"]
    done = events[-2]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["content"] == [{"type": "output_text", "text": "OK from the"}]
    assert done["output_modalities"] == ["text"] and done["conversation_id"].startswith("conv_")
    assert_usage_consistent(done["usage"])
    assert done["usage"]["output_token_details"] == {"text_tokens": 3, "audio_tokens": 0}
    assert done["usage"]["input_token_details"]["text_tokens"] > 0
    assert {r["name"] for r in events[-1]["rate_limits"]} == {"requests", "tokens"}
    assert len({e["event_id"] for e in events}) == len(events)
    assert log == [{**log[0], "request_id": request_id, "path": "/v1/realtime", "model": "m", "status": 101,
                    "outcome": "ok", "client_disconnected": False}]


@pytest.mark.parametrize(("mode", "headers"), [("ga", BETA), ("beta", KEY)])
def test_beta_shapes_from_header_or_beta_mode(mode, headers):
    async def body(session, url):
        conn = await connect(session, url, headers=headers)
        opening = [await conn.recv(), await conn.recv()]
        await conn.send(TEXT_SESSION)  # GA-only fields are refused in beta shape
        refused = await conn.recv()
        await conn.send({"type": "session.update", "session": {"modalities": ["text"]}})
        updated = await conn.recv()
        await conn.send(USER_ITEM)
        item = await conn.recv()
        await conn.send({"type": "response.create"})
        return opening, refused, updated, item, await conn.until("rate_limits.updated")

    opening, refused, updated, item, events = with_sim(make_scenario(m={**FAST, "realtime_mode": mode}), body)
    assert types(opening) == ["session.created", "conversation.created"]
    session = opening[0]["session"]
    assert session["modalities"] == ["text", "audio"] and session["input_audio_format"] == "pcm16"
    assert session["voice"] and session["turn_detection"]["type"] == "server_vad"
    assert "type" not in session and "audio" not in session
    assert opening[1]["conversation"]["object"] == "realtime.conversation"
    assert refused["error"]["code"] == "unknown_parameter" and refused["error"]["param"] == "session.type"
    assert updated["session"]["modalities"] == ["text"]
    assert item["type"] == "conversation.item.created"
    assert types(events) == [
        "response.created", "response.output_item.added", "conversation.item.created",
        "response.content_part.added", *["response.text.delta"] * 3, "response.text.done",
        "response.content_part.done", "response.output_item.done", "response.done", "rate_limits.updated"]
    assert events[3]["part"]["type"] == "text"
    done = events[-2]["response"]
    assert done["modalities"] == ["text"] and done["output"][0]["content"][0]["type"] == "text"
    assert_usage_consistent(done["usage"])


def test_beta_retired_closes_4000_and_ga_still_works():
    async def body(session, url):
        conn = await connect(session, url, headers=BETA)
        error, close = await conn.recv(), await conn.closed()
        ga = await connect(session, url)
        created = await ga.recv()
        await ga.ws.close()
        return error, close, created, await sim_log(session, url)

    error, close, created, log = with_sim(make_scenario(m={**FAST, "realtime_mode": "beta_retired"}), body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert error["error"]["message"] == ("The Realtime Beta API is no longer supported. "
                                         "Please use /v1/realtime for the GA API.")
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 4000
    assert close.extra == "invalid_request_error.beta_api_shape_disabled"
    assert created["type"] == "session.created" and created["session"]["type"] == "realtime"
    assert [entry["outcome"] for entry in log] == ["beta_retired", "ok"]
    assert [entry["status"] for entry in log] == [101, 101]


def test_session_update_validation_and_client_errors_keep_the_session():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.recv()
        replies = []
        for frame in [
            {"type": "session.update", "event_id": "evt_1", "session": {"output_modalities": ["text"]}},
            {"type": "session.update", "session": {"type": "realtime", "modalities": ["text"]}},
            {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text", "audio"]}},
            {"type": "no.such.event"},
            {"event_id": "x"},
            "not json {",
            {"type": "input_audio_buffer.commit"},
            {"type": "response.cancel"},
            {"type": "input_audio_buffer.append", "audio": "***"},
        ]:
            await conn.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
            replies.append(await conn.recv())
        await conn.send(TEXT_SESSION)
        replies.append(await conn.recv())
        return replies

    replies = with_sim(make_scenario(m=FAST), body)
    errors = [r["error"] for r in replies[:-1]]
    assert all(r["type"] == "error" for r in replies[:-1])
    assert errors[0] == {"type": "invalid_request_error", "code": "missing_required_parameter",
                         "message": "Missing required parameter: 'session.type'.", "param": "session.type",
                         "event_id": "evt_1"}
    assert errors[1]["code"] == "unknown_parameter" and errors[1]["param"] == "session.modalities"
    assert errors[2]["code"] == "invalid_value"
    assert [e["code"] for e in errors[3:6]] == ["invalid_event"] * 3
    assert "no.such.event" in errors[3]["message"] and errors[4]["message"] == "The 'type' field is missing."
    assert errors[6]["code"] == "input_audio_buffer_commit_empty"
    assert errors[7]["code"] == "response_cancel_not_active"
    assert errors[8]["code"] == "invalid_value"
    assert replies[-1]["type"] == "session.updated"


# ---------------------------------------------------------------- audio


def pcm_b64(ms: int) -> str:
    return base64.b64encode(b"\0\0" * (24 * ms)).decode()


def test_audio_commit_needs_100_ms():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.recv()
        await conn.send({"type": "input_audio_buffer.append", "audio": pcm_b64(60)})
        await conn.send({"type": "input_audio_buffer.commit"})
        too_short = await conn.recv()
        await conn.send({"type": "input_audio_buffer.append", "audio": pcm_b64(40)})
        await conn.send({"type": "input_audio_buffer.commit"})
        committed = [await conn.recv() for _ in range(3)]
        await conn.send({"type": "input_audio_buffer.append", "audio": pcm_b64(200)})
        await conn.send({"type": "input_audio_buffer.clear"})
        cleared = await conn.recv()
        return too_short, committed, cleared

    too_short, committed, cleared = with_sim(make_scenario(m=FAST), body)
    assert too_short["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "100ms" in too_short["error"]["message"] and "60.00ms" in too_short["error"]["message"]
    assert types(committed) == ["input_audio_buffer.committed", "conversation.item.added",
                                "conversation.item.done"]
    assert committed[1]["item"]["id"] == committed[0]["item_id"]
    assert committed[1]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert cleared["type"] == "input_audio_buffer.cleared"


def test_audio_response_is_paced_in_real_time_and_decodes_to_pcm():
    scenario = make_scenario(m={**FAST, "ttft_ms": 30, "audio_ms": 350, "audio_chunk_ms": 100, "tokens": 3})

    async def body(session, url):
        conn = await connect(session, url)
        await conn.recv()
        await conn.send({"type": "input_audio_buffer.append", "audio": pcm_b64(500)})
        await conn.send({"type": "input_audio_buffer.commit"})
        await conn.until("conversation.item.done")
        await conn.send({"type": "response.create"})
        events = await conn.until("response.done")
        return events, conn.times[-len(events):]

    events, times = with_sim(scenario, body)
    audio = [(e, t) for e, t in zip(events, times, strict=True) if e["type"] == "response.output_audio.delta"]
    transcript = [e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"]
    assert len(audio) == 4 and transcript == ["OK", " from", " the"]
    pcm = b"".join(base64.b64decode(e["delta"]) for e, _ in audio)
    assert len(pcm) == 350 * 48  # PCM16 mono 24 kHz: 48 bytes a millisecond
    assert [len(base64.b64decode(e["delta"])) for e, _ in audio] == [4800, 4800, 4800, 2400]
    assert any(pcm[:200])  # a tone, not silence
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(audio)]
    assert all(0.07 < gap < 0.14 for gap in gaps), gaps  # real time: one chunk every 100 ms
    names = types(events)
    assert names.index("response.output_audio_transcript.delta") < names.index("response.output_audio.delta")
    assert names[-6:] == ["response.output_audio.done", "response.output_audio_transcript.done",
                          "response.content_part.done", "response.output_item.done", "conversation.item.done",
                          "response.done"]
    assert events[3]["part"] == {"type": "output_audio", "transcript": ""}
    done = events[-1]["response"]
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "OK from the"}]
    assert_usage_consistent(done["usage"])
    assert done["usage"]["output_token_details"]["audio_tokens"] > 0
    assert done["usage"]["input_token_details"]["audio_tokens"] > 0


def test_legacy_event_names_in_ga_mode():
    scenario = make_scenario(m={**FAST, "legacy_event_names": True, "audio_ms": 100, "audio_chunk_ms": 50})

    async def body(session, url):
        conn = await connect(session, url)
        text_events = await text_turn(conn)
        await conn.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}})
        await conn.until("session.updated")
        await conn.send({"type": "response.create"})
        return text_events, await conn.until("response.done")

    text_events, audio_events = with_sim(scenario, body)
    assert "response.text.delta" in types(text_events) and "response.text.done" in types(text_events)
    assert "response.output_text.delta" not in types(text_events)
    assert "conversation.item.added" in types(text_events)  # everything else stays GA
    assert {"response.audio.delta", "response.audio_transcript.delta", "response.audio.done"} <= set(
        types(audio_events))
    assert not [t for t in types(audio_events) if "output_audio" in t]


# ---------------------------------------------------------------- responses: caps, overlap, failures


def test_max_output_tokens_caps_text_deltas():
    async def body(session, url):
        conn = await connect(session, url)
        capped = await text_turn(conn, response={"max_output_tokens": 2})
        await conn.until("rate_limits.updated")
        await conn.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 1}})
        await conn.until("session.updated")
        await conn.send({"type": "response.create"})
        return capped, await conn.until("response.done")

    capped, session_capped = with_sim(make_scenario(m={**FAST, "tokens": 5}), body)
    assert types(capped).count("response.output_text.delta") == 2
    assert types(session_capped).count("response.output_text.delta") == 1
    for events in (capped, session_capped):
        done = events[-1]["response"]
        assert done["status"] == "incomplete"
        assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}


def test_second_response_create_while_active_is_refused():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send(TEXT_SESSION)
        await conn.send({"type": "response.create"})
        await conn.send({"type": "response.create"})
        return await conn.until("response.done")

    events = with_sim(make_scenario(m={**FAST, "ttft_ms": 50}), body)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "conversation_already_has_active_response"
    assert events[-1]["response"]["id"] in errors[0]["error"]["message"]
    assert events[-1]["response"]["status"] == "completed"


def test_response_cancel_reports_cancelled():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send(TEXT_SESSION)
        await conn.send({"type": "response.create"})
        await conn.until("response.output_text.delta")
        await conn.send({"type": "response.cancel"})
        return await conn.until("response.done")

    events = with_sim(make_scenario(m={**FAST, "tokens": 50, "inter_token_ms": 20}), body)
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}


def test_content_blocked_ends_incomplete_with_content_filter():
    async def body(session, url):
        events = await text_turn(await connect(session, url))
        return events, await sim_log(session, url)

    events, log = with_sim(make_scenario(m={**FAST, "error": "content_blocked"}), body)
    assert not [e for e in events if e["type"].endswith(".delta")]
    assert events[-1]["response"]["status"] == "incomplete"
    assert events[-1]["response"]["status_details"] == {"type": "incomplete", "reason": "content_filter"}
    assert log[0]["outcome"] == "content_blocked" and log[0]["status"] == 101


@pytest.mark.parametrize(("code", "error_type"), [
    ("model_not_found", "invalid_request_error"), ("insufficient_quota", "insufficient_quota"),
    ("rate_limit_exceeded", "requests"), ("server_error", "server_error")])
def test_fail_response_with(code, error_type):
    async def body(session, url):
        conn = await connect(session, url)
        events = await text_turn(conn)
        return events, await sim_log(session, url)

    events, log = with_sim(make_scenario(m={**FAST, "fail_response_with": code}), body)
    assert types(events) == ["response.created", "response.done"]
    response = events[-1]["response"]
    assert response["status"] == "failed" and response["output"] == []
    details = response["status_details"]
    assert details["type"] == "failed"
    assert details["error"]["type"] == error_type and details["error"]["code"] == code
    assert len(details["error"]["message"]) > 20
    assert response["usage"]["total_tokens"] == 0 and response["usage"]["output_tokens"] == 0
    assert log[0]["outcome"] == "response_failed"
    if code == "model_not_found":
        assert details["error"]["message"] == "The model `m` does not exist or you do not have access to it."


def test_error_event_replaces_the_response_and_session_continues():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send({"type": "response.create"})
        error = await conn.recv()
        await conn.send(TEXT_SESSION)
        return error, await conn.recv(), await sim_log(session, url)

    error, after, log = with_sim(make_scenario(m={**FAST, "error_event": "server_error"}), body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "server_error"
    assert after["type"] == "session.updated"
    assert log[0]["outcome"] == "error_event"


def test_error_event_with_close_code_closes_after_the_error():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send({"type": "response.create"})
        return await conn.recv(), await conn.closed()

    scenario = make_scenario(m={**FAST, "error_event": "session_expired", "close_code": 1000})
    error, close = with_sim(scenario, body)
    assert error["error"]["code"] == "session_expired"
    assert error["error"]["message"] == "Your session hit the maximum duration of 60 minutes."
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1000


# ---------------------------------------------------------------- closes, drops, timeouts


def test_close_code_defaults_to_the_first_delta():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send(TEXT_SESSION)
        await conn.send({"type": "response.create"})
        events = await conn.until("response.content_part.added")
        return events, await conn.closed(), await sim_log(session, url)

    scenario = make_scenario(m={**FAST, "close_code": 1011, "close_reason": "upstream went away"})
    events, close, log = with_sim(scenario, body)
    assert "response.created" in types(events)
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1011 and close.extra == "upstream went away"
    assert log[0]["outcome"] == "close" and log[0]["actual_ttft_s"] is None


def test_close_after_events_counts_server_events():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.recv()
        await conn.send(USER_ITEM)
        return [await conn.recv(), await conn.recv()], await conn.closed()

    events, close = with_sim(make_scenario(m={**FAST, "close_code": 4001, "close_after_events": 3}), body)
    assert types(events) == ["conversation.item.added", "conversation.item.done"]
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 4001


def test_drop_after_deltas_is_an_abnormal_closure():
    websockets = pytest.importorskip("websockets")

    async def body(session, url):
        deltas = 0
        async with websockets.connect(ws_url(url), additional_headers=KEY) as ws:
            for frame in (TEXT_SESSION, USER_ITEM, {"type": "response.create"}):
                await ws.send(json.dumps(frame))
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
                    deltas += event["type"] == "response.output_text.delta"
        await asyncio.sleep(0.05)
        return deltas, closed.value, await sim_log(session, url)

    deltas, closed, log = with_sim(make_scenario(m={**FAST, "tokens": 6, "drop_after_deltas": 2}), body)
    assert deltas == 2
    assert closed.rcvd is None and closed.sent is None  # no close frame either way: the client sees 1006
    assert log[0]["outcome"] == "disconnect"


def test_ignore_client_after_closes_while_the_client_is_sending():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.recv()
        await conn.send(TEXT_SESSION)
        await conn.send(USER_ITEM)
        await conn.send({"type": "response.create"})
        events = await conn.until("error")
        return events, await conn.closed(), await sim_log(session, url)

    scenario = make_scenario(m={**FAST, "ignore_client_after": 2, "error_event": "server_error"})
    events, close, log = with_sim(scenario, body)
    assert types(events) == ["session.updated", "conversation.item.added", "conversation.item.done", "error"]
    assert events[-1]["error"]["code"] == "server_error"
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1011
    assert log[0]["outcome"] == "ignore_client"


def test_session_max_s_expires_the_session():
    async def body(session, url):
        started = time.perf_counter()
        conn = await connect(session, url)
        created = await conn.recv()
        error = await conn.recv()
        return created, error, time.perf_counter() - started, await conn.closed()

    created, error, elapsed, close = with_sim(make_scenario(m={**FAST, "session_max_s": 0.3}), body)
    assert created["session"]["expires_at"] <= time.time() + 1
    assert error["error"] == {"type": "invalid_request_error", "code": "session_expired",
                              "message": "Your session hit the maximum duration of 0.005 minutes.",
                              "param": None, "event_id": None}
    assert 0.28 < elapsed < 0.6
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1000


def test_client_leaving_mid_response_is_quiet(caplog):
    async def body(session, url):
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send(TEXT_SESSION)
        await conn.send({"type": "response.create"})
        await conn.until("response.output_text.delta")
        await conn.ws.close()
        await asyncio.sleep(0.1)
        return await sim_log(session, url)

    with caplog.at_level(logging.DEBUG):
        log = with_sim(make_scenario(m={**FAST, "tokens": 100, "inter_token_ms": 5}), body)
    assert log[0]["client_disconnected"] is True
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---------------------------------------------------------------- auth, routes, handshake errors


def test_auth_http_401_and_missing_key():
    async def body(session, url):
        bad = await handshake(session, url, headers={"Authorization": "Bearer sk-bad-key-1234567890"})
        missing = await handshake(session, url, headers={})
        return bad, missing, await sim_log(session, url)

    (status, headers, error), (missing_status, _, missing), log = with_sim(make_scenario(m=FAST), body)
    assert status == 401 and headers["x-request-id"].startswith("req_")
    assert error["error"]["code"] == "invalid_api_key" and error["error"]["type"] == "invalid_request_error"
    assert "sk-bad-k" in error["error"]["message"] and "sk-bad-key-1234567890" not in error["error"]["message"]
    assert missing_status == 401
    assert missing["error"]["message"] == "Missing bearer or basic authentication in header"
    assert [(e["status"], e["outcome"]) for e in log] == [(401, "auth_error")] * 2


def test_auth_error_then_close():
    async def body(session, url):
        conn = await connect(session, url, headers={"Authorization": "Bearer sk-bad-key-1234567890"})
        return await conn.recv(), await conn.closed(), await sim_log(session, url)

    error, close, log = with_sim(make_scenario(m={**FAST, "auth_failure_style": "error_then_close"}), body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] == "invalid_api_key"
    assert "Incorrect API key provided: sk-bad-k" in error["error"]["message"]
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1008
    assert (log[0]["status"], log[0]["outcome"]) == (101, "auth_error")


def test_auth_close_only():
    async def body(session, url):
        conn = await connect(session, url, headers={"Authorization": "Bearer sk-bad-key"})
        return await conn.closed()

    close = with_sim(make_scenario(m={**FAST, "auth_failure_style": "close_only"}), body)
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1000


def test_subprotocol_key_is_accepted_and_realtime_echoed(caplog):
    async def body(session, url):
        conn = await connect(session, url, headers={}, protocols=("realtime", "openai-insecure-api-key.sk-test"))
        created = await conn.recv()
        protocol = conn.ws.protocol
        await conn.ws.close()
        beta = await connect(session, url, headers={},
                             protocols=("openai-insecure-api-key.sk-secret", "openai-beta.realtime-v1"))
        beta_created = await beta.recv()
        await beta.ws.close()
        refused = await handshake(session, url, headers={
            "Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.sk-bad-1"})
        return created, protocol, beta_created, beta.ws.protocol, refused[0]

    with caplog.at_level(logging.DEBUG):
        created, protocol, beta_created, beta_protocol, refused_status = with_sim(make_scenario(m=FAST), body)
    assert created["type"] == "session.created" and protocol == "realtime"
    assert "modalities" in beta_created["session"] and beta_protocol == "openai-beta.realtime-v1"
    assert refused_status == 401
    assert "sk-secret" not in caplog.text


def test_azure_routes_take_api_key_header_query_or_bearer():
    async def body(session, url):
        results = []
        for path, headers in [
            ("/openai/v1/realtime?model=dep", {"api-key": "az-key"}),
            ("/openai/realtime?api-version=2025-04-01-preview&deployment=dep", {"api-key": "az-key"}),
            ("/openai/realtime?api-version=2025-04-01-preview&deployment=dep&api-key=az-key", {}),
            ("/openai/v1/realtime?model=dep", {"Authorization": "Bearer az-key"}),
        ]:
            conn = await connect(session, url, path, headers=headers)
            results.append((await conn.recv())["type"])
            await conn.ws.close()
        bad = await handshake(session, url, "/openai/v1/realtime?model=dep", headers={"api-key": "other"})
        no_version = await handshake(session, url, "/openai/realtime?deployment=dep", headers={"api-key": "az-key"})
        return results, bad[0], no_version, await sim_log(session, url)

    results, bad, no_version, log = with_sim(make_scenario(keys=["az-key"], dep=FAST), body)
    assert results == ["session.created"] * 4
    assert bad == 401
    assert no_version[0] == 400 and no_version[2]["error"]["param"] == "api-version"
    assert [e["path"] for e in log[:3]] == ["/openai/v1/realtime", "/openai/realtime", "/openai/realtime"]
    assert {e["model"] for e in log} == {"dep"}


def test_plain_get_unknown_model_and_missing_model():
    async def body(session, url):
        async with session.get(f"{url}/v1/realtime?model=m", headers=KEY) as response:
            plain = response.status, await response.json()
        unknown = await handshake(session, url, "/v1/realtime?model=nope")
        missing = await handshake(session, url, "/v1/realtime")
        return plain, unknown, missing

    (plain_status, plain), unknown, missing = with_sim(make_scenario(m=FAST), body)
    assert plain_status == 426 and plain["error"]["message"]
    assert unknown[0] == 404 and unknown[2]["error"]["code"] == "model_not_found"
    assert missing[0] == 400 and missing[2]["error"]["param"] == "model"


@pytest.mark.parametrize(("kind", "status", "code", "error_type"), [
    ("quota_exhausted", 429, "insufficient_quota", "insufficient_quota"),
    ("rate_limited", 429, "rate_limit_exceeded", "tokens"),
    ("server_error", 500, None, "server_error"),
    ("overloaded", 503, "slow_down", "service_unavailable_error"),
])
def test_handshake_errors_use_the_chat_statuses_and_bodies(kind, status, code, error_type):
    async def body(session, url):
        result = await handshake(session, url)
        return result, await sim_log(session, url)

    (got_status, headers, error), log = with_sim(make_scenario(m={**FAST, "error": kind}), body)
    assert got_status == status
    assert error["error"]["code"] == code and error["error"]["type"] == error_type
    assert headers["x-request-id"] == log[0]["request_id"]
    if status in (429, 503) and kind != "quota_exhausted":
        assert headers["retry-after"]
    assert (log[0]["status"], log[0]["outcome"]) == (status, kind)


# ---------------------------------------------------------------- timing and the request log


def test_request_log_timing_matches_the_client_clock():
    async def body(session, url):
        started = time.perf_counter()
        conn = await connect(session, url)
        await conn.until("session.created")
        await conn.send(TEXT_SESSION)
        await conn.send({"type": "response.create"})
        events = await conn.until("response.done")
        first = conn.times[-len(events) + types(events).index("response.output_text.delta")]
        done = conn.times[-1]
        await conn.ws.close()
        return first - started, done - started, await sim_log(session, url)

    scenario = make_scenario(m={"ttfb_ms": 40, "ttft_ms": 80, "inter_token_ms": 10, "tokens": 4})
    client_ttft, client_total, log = with_sim(scenario, body)
    entry = log[0]
    assert entry["injected_ttft_s"] > 0.12  # 40 ms to session.created, then 80 ms after response.create
    assert 0 <= entry["actual_ttft_s"] - entry["injected_ttft_s"] < 0.010
    assert abs(entry["actual_ttft_s"] - client_ttft) < 0.015
    assert abs(entry["actual_duration_s"] - client_total) < 0.015
    # three more deltas, 10 ms apart on the planned timeline (a late first delta does not delay them)
    assert entry["actual_duration_s"] - entry["injected_ttft_s"] >= 0.029


def test_same_seed_gives_same_ids():
    async def body(session, url):
        conn = await connect(session, url)
        created = await conn.recv()
        await conn.ws.close()
        return created["session"]["id"], (await sim_log(session, url))[0]["request_id"]

    assert with_sim(make_scenario(m=FAST), body) == with_sim(make_scenario(m=FAST), body)


# ---------------------------------------------------------------- the official SDK


def test_openai_sdk_ga_realtime_client_completes_a_text_session():
    pytest.importorskip("websockets")

    async def body(session, url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test")
        seen = []
        async with client.realtime.connect(model="m") as connection:
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say OK"}]})
            await connection.response.create()
            async for event in connection:
                seen.append(event)
                if event.type == "response.done":
                    break
        return seen

    seen = with_sim(make_scenario(m=FAST), body)
    assert seen[0].type == "session.created" and seen[0].session.type == "realtime"
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert text == "OK from the"
    done = seen[-1].response
    assert done.status == "completed" and done.usage.output_tokens == 3
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


@pytest.mark.slow
def test_openai_sdk_beta_and_azure_realtime_clients():
    pytest.importorskip("websockets")

    async def body(session, url):
        ws_base = url.replace("http://", "ws://")
        # The beta client always builds wss:// from base_url, so loopback needs websocket_base_url.
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", websocket_base_url=ws_base + "/v1")
        async with client.beta.realtime.connect(model="m") as connection:
            await connection.session.update(session={"modalities": ["text"]})
            await connection.response.create()
            beta = []
            async for event in connection:
                beta.append(event.type)
                if event.type == "response.done":
                    break
        azure = openai.AsyncAzureOpenAI(api_key="sk-az", api_version="2025-04-01-preview", azure_endpoint=url,
                                        websocket_base_url=ws_base + "/openai")
        async with azure.realtime.connect(model="m") as connection:
            azure_first = (await connection.recv()).type
        return beta, azure_first, await sim_log(session, url)

    beta, azure_first, log = with_sim(make_scenario(m=FAST), body)
    assert beta[:2] == ["session.created", "conversation.created"]
    assert beta.count("response.text.delta") == 3 and beta[-1] == "response.done"
    assert azure_first == "session.created"
    assert log[-1]["path"] == "/openai/realtime"


# ---------------------------------------------------------------- scenario keys


@pytest.mark.parametrize(("block", "message"), [
    ("{close_code: 1006}", ": close_code 1006 cannot be sent in a close frame (use drop_after_deltas for 1006)"),
    ("{close_code: 999}", ".close_code: must be greater than or equal to 1000"),
    ("{close_after_events: 3}", ": close_after_events has no effect without close_code"),
    ("{close_reason: bye}", ": close_reason has no effect without close_code or ignore_client_after"),
    ("{realtime_mode: v2}", ".realtime_mode: must be one of ga, beta or beta_retired"),
    ("{auth_failure_style: http_403}", ".auth_failure_style: must be one of http_401, error_then_close or close_only"),
    ("{fail_response_with: 'Not A Code'}",
     ".fail_response_with: must be an error code such as server_error (lowercase letters, digits and _)"),
    ("{audio_chunk_ms: 0}", ".audio_chunk_ms: must be greater than 0"),
    ("{session_max: 3}", ".session_max: unknown key (did you mean 'session_max_s'?)"),
])
def test_realtime_scenario_keys_are_validated(block, message):
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(f"models:\n  m: {block}\n", source="s.yaml")
    assert raised.value.problems == ["s.yaml: models.m" + message]


def test_demo_scenario_has_a_healthy_realtime_model():
    model = default_scenario().models["gpt-4o-mini-realtime-preview"]
    assert model.ttfb_ms == 60 and model.ttft_ms == 250 and model.tokens == 8 and model.inter_token_ms == 20
    assert model.audio_ms == 600 and model.audio_chunk_ms == 100 and model.realtime_mode == "ga"
    assert not model.errors and model.error is None
