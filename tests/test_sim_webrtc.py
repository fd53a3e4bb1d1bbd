"""The simulator's OpenAI Realtime WebRTC calls, over real loopback with a raw aiortc client peer.

Every test starts the simulator on port 0, signals with aiohttp (or the
official ``openai`` SDK) and connects an aiortc peer gathering on 127.0.0.1
only, with no STUN server. RTP is tapped on the client side by wrapping the
audio receiver's ``_handle_rtp_packet`` (each packet's arrival time, Opus
payload size and ``ssrc-audio-level`` header extension), so the test sees
every packet, silence included, before any jitter buffer or decoder.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from modelwatch import ice
from modelwatch.sim import start_sim
from modelwatch.sim.openai_webrtc_peer import corrupt_fingerprint, strip_candidates
from modelwatch.sim.scenario import Scenario

KEY = {"Authorization": "Bearer sk-test"}
FAST = {"ttfb_ms": 0, "ttft_ms": 60, "inter_token_ms": 2, "tokens": 3, "audio_ms": 200}
WAIT_S = 3.0
SILENCE_MAX_BYTES = 10  # digital silence: 3-byte Opus packets
TONE_MIN_BYTES = 200  # the tone: 285-440 bytes
USER_ITEM = {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say OK"}]}}
TEXT = {"type": "realtime", "model": "m", "output_modalities": ["text"]}


def scenario(keys: list[str] | None = None, **models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 1, "keys": keys or [], "models": models})


@dataclass
class Client:
    """A raw aiortc client peer: an ``oai-events`` channel, a recvonly audio transceiver, tapped RTP."""

    pc: RTCPeerConnection
    channel: Any
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    packets: list[tuple[float, int, int | None]] = field(default_factory=list)  # (perf time, bytes, -dBov)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def offer(cls, direction: str = "recvonly") -> Client:
        with ice.host_addresses(ice.LOOPBACK):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            client = cls(pc, pc.createDataChannel("oai-events"))
            transceiver = pc.addTransceiver("audio", direction=direction)
            client.channel.on("open", client.opened.set)
            client.channel.on("message", lambda m: client.events.put_nowait((time.perf_counter(), json.loads(m))))
            handle = transceiver.receiver._handle_rtp_packet

            async def tap(packet: Any, arrival_time_ms: int) -> None:
                level = packet.extensions.audio_level
                client.packets.append((time.perf_counter(), len(packet.payload), level[1] if level else None))
                await handle(packet, arrival_time_ms)

            transceiver.receiver._handle_rtp_packet = tap
            await pc.setLocalDescription(await pc.createOffer())
        return client

    @property
    def sdp(self) -> str:
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    def send(self, event: dict) -> float:
        self.channel.send(json.dumps(event))
        return time.perf_counter()

    async def recv(self, timeout: float = WAIT_S) -> tuple[float, dict]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def until(self, kind: str, timeout: float = WAIT_S) -> list[tuple[float, dict]]:
        """Events up to and including the first of type ``kind``."""
        seen = []
        while True:
            seen.append(await self.recv(timeout))
            if seen[-1][1]["type"] == kind:
                return seen

    async def close(self) -> None:
        await self.pc.close()


async def call(session: aiohttp.ClientSession, url: str, client: Client, *, model_session: dict | None = None,
               headers: dict | None = None, path: str = "/v1/realtime/calls") -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("sdp", client.sdp, content_type="application/sdp")
    form.add_field("session", json.dumps(model_session or {"type": "realtime", "model": "m"}),
                   content_type="application/json")
    response = await session.post(url + path, data=form, headers=KEY if headers is None else headers)
    await response.read()
    return response


async def connected(session: aiohttp.ClientSession, url: str, model_session: dict | None = None,
                    direction: str = "recvonly") -> Client:
    """A client with its call answered, its channel open and ``session.created`` read."""
    client = await Client.offer(direction)
    response = await call(session, url, client, model_session=model_session)
    assert response.status == 201, await response.text()
    await client.accept(await response.text())
    _, created = await client.recv()
    assert created["type"] == "session.created"
    return client


async def log(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url + "/_sim/requests") as response:
        return await response.json()


def run(sc: Scenario, body: Any, **options: Any) -> Any:
    async def main() -> Any:
        server = await start_sim(sc, **options)
        try:
            async with aiohttp.ClientSession() as session:
                return await asyncio.wait_for(body(session, server.url), 15)
        finally:
            started = time.perf_counter()
            await server.close()
            assert time.perf_counter() - started < 5, "the simulator was slow to shut down its calls"
    return asyncio.run(main())


def audible(client: Client, after: float = 0.0) -> list[tuple[float, int, int | None]]:
    return [p for p in client.packets if p[0] >= after and p[1] > SILENCE_MAX_BYTES]


# ---------------------------------------------------------------- signalling


def test_multipart_call_answers_201_with_loopback_candidates_location_and_a_text_turn():
    async def body(session, url):
        client = await Client.offer()
        response = await call(session, url, client, model_session=TEXT)
        assert response.status == 201
        assert response.content_type == "application/sdp"
        location = response.headers["Location"]
        assert re.fullmatch(r"/v1/realtime/calls/rtc_\w+", location)
        answer = await response.text()
        candidates = [line for line in answer.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(line.split()[4] == "127.0.0.1" for line in candidates)
        assert "a=sendonly" in answer  # the offer's recvonly audio, answered with our track
        await client.accept(answer)
        _, created = await client.recv()
        assert created["type"] == "session.created"
        assert created["session"]["output_modalities"] == ["text"]
        client.send(USER_ITEM)
        sent = client.send({"type": "response.create"})
        events = await client.until("response.done")
        types = [e["type"] for _, e in events]
        first = next(t for t, e in events if e["type"] == "response.output_text.delta")
        assert 0.055 <= first - sent < 0.2
        assert "".join(e["delta"] for _, e in events if e["type"] == "response.output_text.delta") == \
            "OK from the"
        assert not any(t.startswith(("response.output_audio", "output_audio_buffer")) for t in types)
        assert not audible(client)  # text answers are silent on the track
        hangup = await session.post(url + location + "/hangup", headers=KEY)
        assert hangup.status == 200
        await asyncio.wait_for(_closed(client), WAIT_S)
        again = await session.post(url + location + "/hangup", headers=KEY)
        assert again.status == 404 and (await again.json())["error"]["message"]
        await client.close()
        entry = (await log(session, url))[0]
        assert (entry["path"], entry["status"], entry["model"], entry["outcome"]) == \
            ("/v1/realtime/calls", 201, "m", "ok")
        assert abs(entry["injected_ttft_s"] - 0.06) < 0.001
        assert 0.06 <= entry["actual_ttft_s"] < 0.1
        assert entry["turns"][0]["outcome"] == "ok"
    run(scenario(m=FAST), body)


async def _closed(client: Client) -> None:
    while client.channel.readyState == "open":
        await asyncio.sleep(0.02)


def test_client_secret_then_raw_sdp_with_the_ephemeral_key():
    async def body(session, url):
        async with session.post(url + "/v1/realtime/client_secrets", headers=KEY, json={
                "expires_after": {"anchor": "created_at", "seconds": 60},
                "session": {"type": "realtime", "model": "m", "output_modalities": ["text"]}}) as response:
            assert response.status == 200
            secret = await response.json()
        assert secret["value"].startswith("ek_")
        assert secret["expires_at"] - time.time() == pytest.approx(60, abs=2)
        assert secret["session"]["object"] == "realtime.session" and secret["session"]["id"].startswith("sess_")
        assert secret["session"]["model"] == "m" and secret["session"]["output_modalities"] == ["text"]
        client = await Client.offer()
        async with session.post(url + "/v1/realtime/calls", data=client.sdp, headers={
                "Authorization": f"Bearer {secret['value']}", "Content-Type": "application/sdp"}) as response:
            assert response.status == 201, await response.text()
            await client.accept(await response.text())
        _, created = await client.recv()
        assert created["session"]["model"] == "m" and created["session"]["output_modalities"] == ["text"]
        await client.close()
        entries = await log(session, url)
        assert [(e["path"], e["status"], e["outcome"]) for e in entries] == [
            ("/v1/realtime/client_secrets", 200, "ok"), ("/v1/realtime/calls", 201, "ok")]
        assert entries[0]["options"]["expires_after"] == {"anchor": "created_at", "seconds": 60}
    run(scenario(m=FAST), body)


def test_signalling_refusals_look_like_the_websocket_handshake():
    clock = [0.0]

    async def body(session, url):
        client = await Client.offer()

        async def status(path: str = "/v1/realtime/calls", **kwargs: Any) -> tuple[int, Any]:
            response = await call(session, url, client, path=path, **kwargs)
            text = await response.text()
            return response.status, json.loads(text) if text.startswith(("{", "[")) else text

        code, bad = await status(headers={"Authorization": "Bearer sk-bad-key-0000000000"})
        assert code == 401 and bad["error"]["code"] == "invalid_api_key"
        code, missing = await status(headers={})
        assert code == 401 and missing["error"]["message"].startswith("Missing bearer")
        code, unknown = await status(model_session={"type": "realtime", "model": "nope"})
        assert code == 404 and unknown["error"]["code"] == "model_not_found"
        code, limited = await status(model_session={"type": "realtime", "model": "limited"})
        assert code == 429 and limited["error"]["code"] == "rate_limit_exceeded"
        code, down = await status(model_session={"type": "realtime", "model": "down"})
        assert code == 503 and down["error"]["type"] == "service_unavailable_error"
        code, typo = await status(model_session={"type": "realtime", "model": "m", "modalities": ["text"]})
        assert code == 400 and typo["error"]["code"] == "unknown_parameter"
        code, azure = await status(path="/openai/v1/realtime/calls", headers={"api-key": "sk-test"})
        assert code == 201 and azure.startswith("v=0")
        async with session.post(url + "/v1/realtime/calls", data=client.sdp, headers={
                **KEY, "Content-Type": "application/sdp"}) as response:  # API key, no model anywhere
            assert response.status == 400 and (await response.json())["error"]["param"] == "session.model"
        async with session.post(url + "/v1/realtime/client_secrets", headers=KEY,
                                json={"session": {"type": "realtime", "model": "m"}}) as response:
            ek = (await response.json())["value"]
        raw = {"Content-Type": "application/sdp"}
        async with session.post(url + "/v1/realtime/calls", data=client.sdp,
                                headers={**raw, "Authorization": "Bearer ek_neverissued"}) as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == "invalid_api_key"
        clock[0] += 601  # past the default 600 s
        async with session.post(url + "/v1/realtime/calls", data=client.sdp,
                                headers={**raw, "Authorization": f"Bearer {ek}"}) as response:
            body = await response.json()
            assert response.status == 401 and "expired" in body["error"]["message"]
        async with session.post(url + "/v1/realtime/client_secrets", headers={"Authorization": "Bearer sk-bad"},
                                json={"session": {"type": "realtime", "model": "m"}}) as response:
            assert response.status == 401
        await client.close()
        outcomes = [(e["status"], e["outcome"]) for e in await log(session, url)]
        assert outcomes[:5] == [(401, "auth_error"), (401, "auth_error"), (404, "model_unavailable"),
                                (429, "rate_limited"), (503, "overloaded")]
    run(scenario(m=FAST, limited={**FAST, "error": "rate_limited"}, down={**FAST, "error": "overloaded"}), body,
        clock=lambda: clock[0])


def test_the_openai_sdk_creates_a_client_secret_and_a_call():
    async def body(session, url):
        client = await Client.offer()
        sdk = openai.AsyncOpenAI(api_key="sk-test", base_url=url + "/v1", max_retries=0)
        secret = await sdk.realtime.client_secrets.create(session={"type": "realtime", "model": "m"})
        assert secret.value.startswith("ek_") and secret.session.model == "m"
        answer = await sdk.realtime.calls.create(sdp=client.sdp, session={"type": "realtime", "model": "m"})
        assert answer.response.status_code == 201 and answer.text.startswith("v=0")
        ephemeral = openai.AsyncOpenAI(api_key=secret.value, base_url=url + "/v1", max_retries=0)
        other = await Client.offer()
        raw = await ephemeral.realtime.calls.create(sdp=other.sdp)  # no session: a raw application/sdp body
        assert raw.response.status_code == 201
        call_id = raw.response.headers["Location"].rsplit("/", 1)[1]
        await sdk.realtime.calls.hangup(call_id)
        await client.close()
        await other.close()
        await sdk.close()
        await ephemeral.close()
    run(scenario(m=FAST), body)


# ---------------------------------------------------------------- audio


def test_audio_turn_plays_the_tone_as_rtp_at_the_injected_ttft_without_audio_delta_events():
    async def body(session, url):
        client = await connected(session, url)
        client.send(USER_ITEM)
        sent = client.send({"type": "response.create"})
        events = await client.until("output_audio_buffer.stopped")
        types = [e["type"] for _, e in events]
        assert "response.output_audio.delta" not in types and "response.audio.delta" not in types
        assert types.index("output_audio_buffer.started") > types.index("response.content_part.added")
        assert types.index("output_audio_buffer.stopped") > types.index("response.done")
        assert "response.output_audio_transcript.delta" in types and "response.output_audio.done" in types
        silent_before = [p for p in client.packets if p[0] < sent + 0.05]
        assert silent_before and all(size <= SILENCE_MAX_BYTES and level == 127 for _, size, level in silent_before)
        await asyncio.sleep(0.1)
        tone = audible(client, sent)
        first = tone[0][0] - sent
        assert 0.06 <= first < 0.06 + 0.015, first
        assert all(size >= TONE_MIN_BYTES for _, size, _ in tone[:8])
        assert 9 <= len(tone) <= 13  # 200 ms is 10 frames of 20 ms (+ the encoder's tail)
        assert all(size <= SILENCE_MAX_BYTES for t, size, _ in client.packets if t > tone[-1][0] + 0.001)
        entry = (await log(session, url))[0]
        assert abs(entry["injected_ttft_s"] - 0.06) < 0.001
        assert 0.06 <= entry["actual_ttft_s"] < first + 0.001
        await client.close()
    run(scenario(m=FAST), body)


def test_cancel_and_clear_send_output_audio_buffer_cleared_and_stop_the_tone():
    async def body(session, url):
        client = await connected(session, url)
        client.send({"type": "response.create"})
        await client.until("output_audio_buffer.started")
        cancelled = client.send({"type": "response.cancel"})
        events = await client.until("output_audio_buffer.cleared")
        done = next(e for _, e in events if e["type"] == "response.done")
        assert done["response"]["status"] == "cancelled"
        await asyncio.sleep(0.1)
        assert not audible(client, cancelled + 0.06)  # a frame in flight and the encoder's tail at most
        client.send({"type": "output_audio_buffer.clear"})
        _, cleared = await client.recv()
        assert cleared["type"] == "output_audio_buffer.cleared"
        await client.close()
    run(scenario(m={**FAST, "audio_ms": 1000}), body)


# ---------------------------------------------------------------- faults


def test_no_candidates_answer_has_no_candidate_and_ice_never_connects():
    async def body(session, url):
        client = await Client.offer()
        response = await call(session, url, client)
        answer = await response.text()
        assert response.status == 201 and "a=candidate" not in answer
        await client.accept(answer)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.opened.wait(), 1.5)
        assert client.pc.iceConnectionState != "completed"
        assert (await log(session, url))[0]["outcome"] == "no_candidates"
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "no_candidates"}), body)


def test_no_datachannel_connects_ice_and_dtls_but_never_opens_the_channel():
    async def body(session, url):
        client = await Client.offer()
        await client.accept(await (await call(session, url, client)).text())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.opened.wait(), 1.5)
        assert client.pc.connectionState == "connected" and client.events.empty()
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "no_datachannel"}), body)


def test_no_media_sends_events_but_no_rtp():
    async def body(session, url):
        client = await connected(session, url)
        client.send({"type": "response.create"})
        types = [e["type"] for _, e in await client.until("output_audio_buffer.stopped")]
        assert "output_audio_buffer.started" in types and "response.done" in types
        assert client.packets == []
        entry = (await log(session, url))[0]
        assert entry["outcome"] == "no_media" and entry["actual_ttft_s"] is None
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "no_media"}), body)


def test_events_without_audio_sends_only_silence():
    async def body(session, url):
        client = await connected(session, url)
        client.send({"type": "response.create"})
        types = [e["type"] for _, e in await client.until("output_audio_buffer.stopped")]
        assert "output_audio_buffer.started" in types
        assert len(client.packets) > 10 and not audible(client)
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "events_without_audio"}), body)


def test_media_stops_after_ms_cuts_all_rtp_mid_answer():
    async def body(session, url):
        client = await connected(session, url)
        sent = client.send({"type": "response.create"})
        await client.until("output_audio_buffer.stopped")
        tone = audible(client, sent)
        assert 3 <= len(tone) <= 6  # 100 ms of a 1000 ms answer: 5 frames (+ timing slack)
        last = client.packets[-1][0]
        assert last - (sent + 0.06) < 0.15  # nothing at all, not even silence, after the cut
        await client.close()
    run(scenario(m={**FAST, "audio_ms": 1000, "media_stops_after_ms": 100}), body)


def test_kill_peer_goes_silent_without_any_close_signal():
    async def body(session, url):
        client = await connected(session, url)
        client.send({"type": "response.create"})
        await asyncio.sleep(0.4)
        assert client.events.empty()  # no response.created: the peer died on the response.create
        packets = len(client.packets)
        await asyncio.sleep(0.3)
        assert len(client.packets) == packets  # and no RTP since
        assert client.channel.readyState == "open"  # no SCTP ABORT, no DTLS close_notify reached us
        assert client.pc.connectionState == "connected"
        assert (await log(session, url))[0]["outcome"] == "kill_peer"
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "kill_peer"}), body)


def test_kill_peer_after_ms_counts_from_session_created():
    async def body(session, url):
        client = await connected(session, url)
        created = time.perf_counter()
        await asyncio.sleep(0.4)
        last = client.packets[-1][0]
        assert 0.1 < last - created < 0.2
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "kill_peer", "kill_peer_after_ms": 150}), body)


def test_dtls_fail_corrupts_the_fingerprint_so_the_client_refuses_the_peer():
    async def body(session, url):
        client = await Client.offer()
        answer = await (await call(session, url, client)).text()
        assert re.search(r"a=fingerprint:sha-256 [0-9A-F:]+", answer)
        await client.accept(answer)
        for _ in range(100):
            if client.pc.connectionState == "failed":
                break
            await asyncio.sleep(0.02)
        assert client.pc.connectionState == "failed" and not client.opened.is_set()
        await client.close()
    run(scenario(m={**FAST, "webrtc_fault": "dtls_fail"}), body)


def test_sdp_rewrites():
    sdp = "v=0\r\na=fingerprint:sha-256 0A:F1\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"
    assert strip_candidates(sdp) == "v=0\r\na=fingerprint:sha-256 0A:F1\r\n"
    assert "a=fingerprint:sha-256 F5:0E\r\n" in corrupt_fingerprint(sdp)


def test_the_simulator_survives_clients_that_vanish():
    async def body(session, url):
        gone = await connected(session, url)
        gone.send({"type": "response.create"})
        await gone.until("output_audio_buffer.started")
        # Vanish: close the client's sockets under it, no DTLS alert, no SCTP ABORT.
        connection = gone.pc.getTransceivers()[0].receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.transport.close()
        offered = await Client.offer()  # and another that never answers the call's SDP
        assert (await call(session, url, offered)).status == 201
        await offered.close()
        client = await connected(session, url, model_session=TEXT)
        client.send({"type": "response.create"})
        assert (await client.until("response.done"))[-1][1]["response"]["status"] == "completed"
        await client.close()
        await gone.close()
    run(scenario(m=FAST), body)
