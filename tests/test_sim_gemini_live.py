"""The simulator's Gemini Live endpoint, over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp's WebSocket
client or the official ``google-genai`` SDK; nothing is mocked. The SDK always turns
``base_url`` into ``wss://``, so its tests serve the simulator's app over TLS with a
throwaway self-signed certificate.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl
import time
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from google import genai

from conftest import with_sim
from modelwatch.sim import ScenarioError, create_app, parse_scenario
from modelwatch.sim.scenario import Scenario

PATH = "/ws/google.ai.generativelanguage.{}.GenerativeService.BidiGenerateContent"
KEY = {"x-goog-api-key": "AIzaSyLiveSimKey"}
FAST = {"ttfb_ms": 5, "ttft_ms": 30, "inter_token_ms": 2, "tokens": 3, "audio_ms": 150, "audio_chunk_ms": 50}
TEXT_SETUP = {"setup": {"model": "models/m", "generationConfig": {"responseModalities": ["TEXT"]}}}
TURN = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Say OK"}]}], "turnComplete": True}}
WAIT_S = 3.0


def scenario(default: dict | None = None, **models: dict) -> Scenario:
    return Scenario.model_validate({"seed": 1, "models": models, "default": default})


class Conn:
    """An aiohttp WebSocket with JSON helpers; server frames may be text or binary."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[aiohttp.WSMessage] = []

    async def recv(self) -> dict | aiohttp.WSMessage:
        """The next message as a dict, or the raw message if it is a close or an error."""
        msg = await asyncio.wait_for(self.ws.receive(), WAIT_S)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self.frames.append(msg)
            return json.loads(msg.data)
        return msg

    async def until_turn_complete(self) -> list[dict]:
        messages = []
        while True:
            message = await self.recv()
            assert isinstance(message, dict), f"socket ended early: {message}"
            messages.append(message)
            if message.get("serverContent", {}).get("turnComplete"):
                return messages

    async def send(self, message: dict) -> None:
        await self.ws.send_str(json.dumps(message))

    async def closed(self) -> aiohttp.WSMessage:
        """The close that must come next (after any frames listed before it)."""
        while isinstance(msg := await self.recv(), dict):
            pass
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return msg


async def connect(session, url, version="v1beta", headers=KEY, query="") -> Conn:
    ws = await session.ws_connect(url.replace("http://", "ws://") + PATH.format(version) + query, headers=headers)
    return Conn(ws)


async def sim_log(session, url) -> list[dict]:
    async with session.get(f"{url}/_sim/requests") as response:
        return await response.json()


def parts(messages: list[dict]) -> list[dict]:
    return [p for m in messages for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])]


# ---------------------------------------------------------------- sessions


def test_text_turn_shapes_order_usage_and_log():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        setup = await conn.recv()
        await conn.send(TURN)
        messages = await conn.until_turn_complete()
        await conn.ws.close()
        return setup, messages, conn.frames, await sim_log(session, url)

    setup, messages, frames, log = with_sim(scenario(m=FAST), body)
    assert setup == {"setupComplete": {"sessionId": log[-1]["request_id"]}}
    assert [p["text"] for p in parts(messages)] == ["OK", " from", " the"]
    assert messages[-2] == {"serverContent": {"generationComplete": True}}
    usage = messages[-1]["usageMetadata"]
    assert messages[-1]["serverContent"] == {"turnComplete": True}
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["responseTokenCount"]
    assert usage["responseTokenCount"] == 3 == sum(d["tokenCount"] for d in usage["responseTokensDetails"])
    assert usage["promptTokenCount"] == sum(d["tokenCount"] for d in usage["promptTokensDetails"])
    # default frames: pretty-printed JSON in binary frames
    assert all(f.type is aiohttp.WSMsgType.BINARY and b"\n  " in f.data for f in frames)
    entry = log[-1]
    assert (entry["status"], entry["outcome"], entry["model"]) == (101, "ok", "m")
    assert entry["injected_ttft_s"] >= 0.030 and entry["actual_ttft_s"] >= entry["injected_ttft_s"]
    assert entry["actual_duration_s"] >= entry["actual_ttft_s"] + 0.003 and not entry["client_disconnected"]


def test_first_part_comes_ttft_after_the_turn_and_output_is_capped():
    async def body(session, url):
        conn = await connect(session, url)
        setup = {"setup": {**TEXT_SETUP["setup"], "generationConfig": {"responseModalities": ["TEXT"],
                                                                       "maxOutputTokens": 2}}}
        await conn.send(setup)
        await conn.recv()
        await conn.send(TURN)
        sent = time.perf_counter()
        first = await conn.recv()
        waited = time.perf_counter() - sent
        rest = await conn.until_turn_complete()
        return waited, [first, *rest]

    waited, messages = with_sim(scenario(m={**FAST, "ttft_ms": 120, "tokens": 5}), body)
    assert 0.118 <= waited < 0.2
    assert len(parts(messages)) == 2 and messages[-1]["usageMetadata"]["responseTokenCount"] == 2


def test_compact_text_frames_when_asked():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        await conn.recv()
        return conn.frames[0]

    frame = with_sim(scenario(m={**FAST, "binary_frames": False}), body)
    assert frame.type is aiohttp.WSMsgType.TEXT and frame.data.startswith('{"setupComplete":{"sessionId":')


def test_snake_case_audio_turn_with_media_chunks_and_activity_marks():
    audio = base64.b64encode(b"\0\0" * 16000).decode()  # one second at 16 kHz

    async def body(session, url):
        conn = await connect(session, url, query="?key=AIzaSyQueryKey")  # the raw-WebSocket way
        await conn.send({"setup": {"model": "m", "generation_config": {"response_modalities": ["AUDIO"]},
                                   "output_audio_transcription": {},
                                   "realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}})
        await conn.recv()
        await conn.send({"realtime_input": {"activity_start": {}}})
        await conn.send({"realtime_input": {"media_chunks": [{"data": audio, "mime_type": "audio/pcm;rate=16000"}]}})
        await conn.send({"realtime_input": {"activity_end": {}}})
        return await conn.until_turn_complete()

    messages = with_sim(scenario(m=FAST), body)
    blobs = [p["inlineData"] for p in parts(messages)]
    assert len(blobs) == 3 and {b["mimeType"] for b in blobs} == {"audio/pcm;rate=24000"}
    assert len(base64.b64decode(blobs[0]["data"])) == 2400  # 50 ms of PCM16 at 24 kHz
    transcript = [m["serverContent"]["outputTranscription"]["text"] for m in messages
                  if "outputTranscription" in m.get("serverContent", {})]
    assert transcript == ["OK", " from", " the"]
    assert "inlineData" in parts(messages[:1])[0]  # audio before its transcript
    details = {d["modality"]: d["tokenCount"] for d in messages[-1]["usageMetadata"]["promptTokensDetails"]}
    assert details["AUDIO"] == 32  # one second of input audio
    assert messages[-1]["usageMetadata"]["responseTokensDetails"] == [{"modality": "AUDIO", "tokenCount": 5}]


def test_a_new_turn_interrupts_the_answer_in_progress():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        await conn.recv()
        await conn.send(TURN)
        first = await conn.recv()
        await conn.send(TURN)
        return first, await conn.until_turn_complete()

    first, messages = with_sim(scenario(m={**FAST, "inter_token_ms": 50}), body)
    assert parts([first])[0]["text"] == "OK"
    assert messages[0] == {"serverContent": {"interrupted": True}}
    assert [p["text"] for p in parts(messages)] == ["OK", " from", " the"]


# ---------------------------------------------------------------- refusals and closes


async def handshake(session, url, headers) -> tuple[int, dict]:
    """A raw upgrade request, to read a refused handshake's status and body."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
    async with session.get(url + PATH.format("v1"), headers={**upgrade, **headers}) as response:
        return response.status, json.loads(await response.text())


def test_refused_handshakes_carry_googles_error_bodies():
    async def body(session, url):
        async with session.get(url + PATH.format("v1beta"), headers=KEY) as plain:
            not_ws = plain.status, await plain.json()
        return not_ws, await handshake(session, url, {}), await handshake(session, url, {"x-goog-api-key": "sk-bad-1"})

    not_ws, missing, bad = with_sim(scenario(m=FAST), body)
    assert not_ws[0] == 400 and not_ws[1]["error"]["status"] == "INVALID_ARGUMENT"
    assert missing[0] == 403 and missing[1]["error"]["status"] == "PERMISSION_DENIED"
    assert bad[0] == 400 and bad[1]["error"]["message"] == "API key not valid. Please pass a valid API key."
    assert bad[1]["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("style", ["close_only", "error_then_close"])
def test_a_refused_key_can_be_closed_after_setup(style):
    async def body(session, url):
        conn = await connect(session, url, headers={"x-goog-api-key": "sk-bad-2"})
        await conn.send(TEXT_SETUP)
        first = await conn.recv()
        return first, (first if not isinstance(first, dict) else await conn.closed())

    first, close = with_sim(scenario(default={**FAST, "auth_failure_style": style}), body)
    assert (close.data, close.extra) == (1008, "API key not valid. Please pass a valid API key.")
    if style == "error_then_close":
        assert first["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("first,reason", [
    (TURN, "Request contains an invalid argument."),
    ({"setup": {"model": "models/m", "bogus": 1}}, "Invalid JSON payload received. Unknown name \"bogus\" at "
                                                   "'setup': Cannot find field."),
    ({"setup": {"model": "models/m"}, "clientContent": {}}, "Request contains an invalid argument."),
])
def test_the_first_message_must_be_a_valid_setup(first, reason):
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(first)
        return await conn.closed()

    close = with_sim(scenario(m=FAST), body)
    assert (close.data, close.extra) == (1007, reason)


@pytest.mark.parametrize("then", [TEXT_SETUP, {"realtimeInput": {"activityStart": {}}}, {"noSuchThing": {}}])
def test_bad_messages_after_setup_close_1007(then):
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)  # automatic activity detection on: activity marks are refused
        await conn.recv()
        await conn.send(then)
        return await conn.closed()

    assert with_sim(scenario(m=FAST), body).data == 1007


def test_unknown_model_closes_1008_not_found():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send({"setup": {"model": "models/nope"}})
        return await conn.closed(), await sim_log(session, url)

    close, log = with_sim(scenario(m=FAST), body)
    assert (close.data, close.extra) == (1008, "Requested entity was not found.")
    assert (log[-1]["outcome"], log[-1]["model"], log[-1]["status"]) == ("model_unavailable", "nope", 101)


@pytest.mark.parametrize("kind,code,reason", [
    ("quota_exhausted", 1011, "You exceeded your current quota, please check your plan and billing details."),
    ("overloaded", 1011, "The service is currently unavailable."),
    ("server_error", 1011, "Internal error occurred."),
    ("auth_error", 1008, "API key not valid. Please pass a valid API key."),
    ("bad_request", 1007, "Request contains an invalid argument."),
])
def test_error_kinds_close_where_setup_complete_was_due(kind, code, reason):
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        return await conn.closed(), conn.frames

    close, frames = with_sim(scenario(m={**FAST, "error": kind}), body)
    assert (close.data, close.extra, frames) == (code, reason, [])


def test_content_blocked_ends_the_turn_without_output():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        await conn.recv()
        await conn.send(TURN)
        return await conn.until_turn_complete()

    messages = with_sim(scenario(m={**FAST, "error": "content_blocked"}), body)
    assert len(messages) == 1 and not parts(messages)
    assert messages[0]["serverContent"] == {"turnComplete": True, "turnCompleteReason": "PROHIBITED_INPUT_CONTENT"}


def test_go_away_then_close_1000_when_the_time_is_up():
    async def body(session, url):
        conn = await connect(session, url)
        start = time.perf_counter()
        await conn.send(TEXT_SETUP)
        await conn.recv()
        go_away = await conn.recv()
        close = await conn.closed()
        return go_away, close, time.perf_counter() - start

    go_away, close, elapsed = with_sim(scenario(m={**FAST, "goaway_after_s": 0.05, "session_max_s": 0.2}), body)
    assert go_away == {"goAway": {"timeLeft": "0.150s"}}
    assert close.data == 1000 and 0.19 <= elapsed < 0.5


def test_session_max_without_go_away_closes_1011_deadline_expired():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        return await conn.closed(), await sim_log(session, url)

    close, log = with_sim(scenario(m={**FAST, "session_max_s": 0.1}), body)
    assert (close.data, close.extra) == (1011, "Deadline expired before operation could complete.")
    assert log[-1]["outcome"] == "session_expired"


def test_close_after_events_counts_server_messages():
    async def body(session, url):
        conn = await connect(session, url)
        await conn.send(TEXT_SETUP)
        await conn.recv()
        await conn.send(TURN)
        return await conn.closed(), conn.frames

    close, frames = with_sim(scenario(m={**FAST, "close_code": 1011, "close_reason": "Internal error occurred.",
                                         "close_after_events": 2}), body)
    assert close.data == 1011 and len(frames) == 2  # setupComplete and the first part


def test_goaway_must_come_before_the_session_ends():
    with pytest.raises(ScenarioError, match="goaway_after_s"):
        parse_scenario("models:\n  m: {goaway_after_s: 5, session_max_s: 5}\n")


# ---------------------------------------------------------------- the official SDK


def tls_contexts(directory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the server's context and one that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return tls_contexts(tmp_path_factory.mktemp("tls"))


@asynccontextmanager
async def tls_sim(scenario_: Scenario, server_ctx: ssl.SSLContext):
    """The simulator's app on an ``https://`` port 0 (the SDK's Live client only speaks ``wss://``)."""
    runner = web.AppRunner(create_app(scenario_), handler_cancellation=True, shutdown_timeout=0.25)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sdk_client(url: str, client_ctx: ssl.SSLContext, version: str | None = None,
               key: str = "AIzaSySdkKey") -> genai.Client:
    options = genai.types.HttpOptions(base_url=url, async_client_args={"ssl": client_ctx},
                                      **({"api_version": version} if version else {}))
    return genai.Client(api_key=key, http_options=options)


@pytest.mark.parametrize("version", ["v1beta", None])  # None: the SDK's default (v1)
def test_sdk_completes_a_text_turn(tls, version):
    async def main():
        async with tls_sim(scenario(m=FAST), tls[0]) as url:
            client = sdk_client(url, tls[1], version)
            async with client.aio.live.connect(model="m", config={"response_modalities": ["TEXT"]}) as live:
                await live.send_client_content(turns={"role": "user", "parts": [{"text": "Say OK"}]})
                messages = [msg async for msg in live.receive()]
                return live.session_id, messages

    session_id, messages = asyncio.run(asyncio.wait_for(main(), WAIT_S))
    assert session_id.startswith("req_")
    assert "".join(m.text or "" for m in messages) == "OK from the"
    assert messages[-1].server_content.turn_complete and messages[-1].usage_metadata.response_token_count == 3


def test_sdk_completes_an_audio_turn_from_realtime_input(tls):
    async def main():
        async with tls_sim(scenario(m=FAST), tls[0]) as url:
            config = {"response_modalities": ["AUDIO"], "output_audio_transcription": {}}
            async with sdk_client(url, tls[1]).aio.live.connect(model="m", config=config) as live:
                await live.send_realtime_input(audio=genai.types.Blob(data=b"\0\0" * 8000,
                                                                      mime_type="audio/pcm;rate=16000"))
                await live.send_realtime_input(audio_stream_end=True)
                return [msg async for msg in live.receive()]

    messages = asyncio.run(asyncio.wait_for(main(), WAIT_S))
    audio = b"".join(m.data for m in messages if m.data)
    assert len(audio) == 150 * 48  # 150 ms of PCM16 at 24 kHz
    transcript = "".join(m.server_content.output_transcription.text for m in messages
                         if m.server_content and m.server_content.output_transcription)
    assert transcript == "OK from the" and messages[-1].server_content.turn_complete


@pytest.mark.parametrize("style,model,key,reason", [
    (None, "nope", "AIzaSySdkKey", "Requested entity was not found."),
    ("close_only", "m", "sk-bad-sdk", "API key not valid. Please pass a valid API key."),
    ("error_then_close", "m", "sk-bad-sdk", "API key not valid. Please pass a valid API key."),
])
def test_sdk_raises_api_error_1008(tls, style, model, key, reason):
    default = {**FAST, "auth_failure_style": style} if style else None  # a refused key's style comes from here

    async def main():
        async with tls_sim(scenario(m=FAST, default=default), tls[0]) as url:
            client = sdk_client(url, tls[1], key=key)
            with pytest.raises(genai.errors.APIError) as info:
                async with client.aio.live.connect(model=model) as live:
                    async for _ in live.receive():
                        pass
            return info.value

    error = asyncio.run(asyncio.wait_for(main(), WAIT_S))
    assert error.code == 1008 and reason in str(error)
