"""The simulator's ``/v1/audio/speech`` (text to speech), over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``openai`` SDK; nothing is mocked.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import wave

import aiohttp
import openai
import pytest

from audio_helpers import KEY, make_scenario, sim_log, sse_data
from conftest import with_sim

FAST = {"ttfb_ms": 0, "ttft_ms": 10, "inter_token_ms": 2, "audio_ms": 300, "audio_chunk_ms": 100}
PCM_BYTES_PER_MS = 48  # PCM16 mono at 24 kHz


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


async def post_speech(session, url, *, model="tts", headers=KEY, **fields) -> tuple[int, dict, bytes]:
    """POST a speech request; returns (status, headers, body bytes)."""
    body = {"model": model, "input": "Say OK.", "voice": "alloy", **fields}
    async with session.post(url + "/v1/audio/speech", json=body, headers=headers) as response:
        return response.status, response.headers, await response.read()


# ---------------------------------------------------------------- the official SDK


def test_sdk_streams_pcm_speech_bytes():
    async def body(session, url):
        chunks = []
        async with sdk(url).audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts", input="Say OK.", voice="coral", response_format="pcm") as response:
            headers = response.headers
            async for chunk in response.iter_bytes():
                chunks.append(chunk)
        return headers, b"".join(chunks), await sim_log(session, url)

    headers, audio, log = with_sim(make_scenario(**{"gpt-4o-mini-tts": FAST}), body)
    assert headers["content-type"] == "application/octet-stream"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert len(audio) == 300 * PCM_BYTES_PER_MS
    samples = struct.unpack(f"<{len(audio) // 2}h", audio)
    assert max(samples) > 500 and min(samples) < -500  # a tone, not silence
    assert log[0]["status"] == 200 and log[0]["outcome"] == "ok"


def test_sdk_streams_sse_speech_to_its_done_event():
    async def body(session, url):
        events = []
        async with sdk(url).audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts", input="Say OK, please.", voice={"id": "voice_1234"},
                response_format="pcm", stream_format="sse") as response:
            content_type = response.headers["content-type"]
            async for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
        return content_type, events

    content_type, events = with_sim(make_scenario(**{"gpt-4o-mini-tts": FAST}), body)
    assert content_type.startswith("text/event-stream")
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == 300 * PCM_BYTES_PER_MS
    assert events[-1]["usage"] == {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}


def test_sdk_reads_a_whole_wav_answer():
    async def body(session, url):
        response = await sdk(url).audio.speech.create(model="tts-1", input="Hi", voice="nova", response_format="wav")
        return response.read()

    audio = with_sim(make_scenario(**{"tts-1": FAST}), body)
    assert audio[:4] == b"RIFF" and audio[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", audio, 40)[0] == 0xFFFFFFFF  # streaming: length unknown
    with wave.open(io.BytesIO(audio[:40] + struct.pack("<I", len(audio) - 44) + audio[44:])) as decoded:
        assert (decoded.getnchannels(), decoded.getsampwidth(), decoded.getframerate()) == (1, 2, 24_000)
        assert decoded.getnframes() == 300 * 24


# ---------------------------------------------------------------- formats


def test_mp3_is_whole_silent_mpeg_frames():
    async def body(session, url):
        return await post_speech(session, url)  # mp3 is the default

    status, headers, audio = with_sim(make_scenario(tts={**FAST, "audio_ms": 1000, "audio_chunk_ms": 10}), body)
    assert status == 200 and headers["Content-Type"] == "audio/mpeg"
    assert len(audio) % 417 == 0 and len(audio) // 417 == 39  # 1 s of 26.12 ms frames, rounded up
    frames = [audio[i:i + 417] for i in range(0, len(audio), 417)]
    assert all(frame[:4] == b"\xff\xfb\x90\x64" and not any(frame[4:]) for frame in frames)


@pytest.mark.parametrize(("fmt", "content_type", "magic"), [
    ("opus", "audio/opus", b"OggS"), ("aac", "audio/aac", b"\xff\xf1"), ("flac", "audio/flac", b"fLaC"),
])
def test_placeholder_formats_carry_their_magic_and_content_type(fmt, content_type, magic):
    async def body(session, url):
        return await post_speech(session, url, response_format=fmt)

    status, headers, audio = with_sim(make_scenario(tts=FAST), body)
    assert status == 200 and headers["Content-Type"] == content_type
    assert audio.startswith(magic) and len(audio) > 300


# ---------------------------------------------------------------- timing


def test_first_audio_byte_arrives_at_the_injected_ttft_and_faster_than_real_time():
    async def body(session, url):
        start = time.perf_counter()
        async with session.post(url + "/v1/audio/speech", headers=KEY, json={
                "model": "tts", "input": "Hi", "voice": "alloy", "response_format": "pcm"}) as response:
            headers_at = time.perf_counter() - start
            first = await response.content.readany()
            first_at = time.perf_counter() - start
            rest = await response.read()
            done_at = time.perf_counter() - start
        return headers_at, first_at, done_at, len(first) + len(rest), await sim_log(session, url)

    scenario = make_scenario(tts={"ttfb_ms": 20, "ttft_ms": 70, "inter_token_ms": 10, "audio_ms": 1000,
                                  "audio_chunk_ms": 250})
    headers_at, first_at, done_at, size, log = with_sim(scenario, body)
    assert 0.020 <= headers_at < 0.060
    assert 0.070 <= first_at < 0.085
    assert size == 1000 * PCM_BYTES_PER_MS and done_at < 0.2  # 1 s of audio in about 100 ms
    entry = log[0]
    assert entry["injected_ttft_s"] == pytest.approx(0.070)
    assert 0.070 <= entry["actual_ttft_s"] <= 0.078
    assert entry["actual_duration_s"] >= 0.070 + 3 * 0.010


def test_jitter_moves_the_first_byte_within_bounds():
    async def body(session, url):
        for _ in range(5):
            await post_speech(session, url, response_format="pcm")
        return await sim_log(session, url)

    log = with_sim(make_scenario(tts={**FAST, "ttft_ms": 40, "jitter_ms": 20}), body)
    injected = [entry["injected_ttft_s"] for entry in log]
    assert all(0.020 <= t <= 0.060 for t in injected) and len(set(injected)) == 5
    assert all(e["actual_ttft_s"] >= e["injected_ttft_s"] for e in log)


# ---------------------------------------------------------------- faults


def test_disconnect_after_resets_the_raw_body():
    async def body(session, url):
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(url + "/v1/audio/speech", headers=KEY, json={
                    "model": "tts", "input": "Hi", "voice": "alloy", "response_format": "pcm"}) as response:
                async for chunk in response.content.iter_any():
                    received += chunk
        return len(received), await sim_log(session, url)

    received, log = with_sim(make_scenario(tts={**FAST, "disconnect_after": 1}), body)
    assert received == 100 * PCM_BYTES_PER_MS and log[0]["outcome"] == "disconnect"


def test_midstream_error_cuts_a_raw_body_and_ends_sse_with_an_error_event():
    async def body(session, url):
        with pytest.raises(aiohttp.ClientPayloadError):
            await post_speech(session, url, response_format="pcm")
        sse = await post_speech(session, url, stream_format="sse")
        return sse, await sim_log(session, url)

    (status, _, text), log = with_sim(make_scenario(tts={**FAST, "midstream_error_after": 2}), body)
    events = [json.loads(p) for p in sse_data(text.decode())]
    assert status == 200 and [e["type"] for e in events] == ["speech.audio.delta"] * 2 + ["error"]
    assert events[-1]["error"]["type"] == "server_error"
    assert [e["outcome"] for e in log] == ["midstream_error", "midstream_error"]


def test_stall_and_malformed_faults():
    async def body(session, url):
        start = time.perf_counter()
        stalled = await post_speech(session, url, model="slow", response_format="pcm")
        stalled_s = time.perf_counter() - start
        junk = await post_speech(session, url, model="junk", stream_format="sse")
        raw = await post_speech(session, url, model="junk", response_format="pcm")
        return stalled, stalled_s, junk, raw, await sim_log(session, url)

    scenario = make_scenario(slow={**FAST, "stall_after": 1, "stall_ms": 80}, junk={**FAST, "malformed_after": 1})
    stalled, stalled_s, junk, raw, log = with_sim(scenario, body)
    assert len(stalled[2]) == 300 * PCM_BYTES_PER_MS and stalled_s >= 0.090
    assert sse_data(junk[2].decode())[1] == "{not json"
    assert len(raw[2]) == 300 * PCM_BYTES_PER_MS  # a raw body has no place for broken JSON
    assert [e["outcome"] for e in log] == ["stall", "malformed", "ok"]


def test_content_blocked_answers_without_audio():
    async def body(session, url):
        return await post_speech(session, url, response_format="pcm"), await post_speech(session, url,
                                                                                         stream_format="sse")

    (raw_status, _, raw), (sse_status, _, sse) = with_sim(make_scenario(tts={**FAST, "error": "content_blocked"}),
                                                          body)
    assert (raw_status, raw) == (200, b"")
    events = [json.loads(p) for p in sse_data(sse.decode())]
    assert sse_status == 200 and [e["type"] for e in events] == ["speech.audio.done"]
    assert events[0]["usage"]["output_tokens"] == 0


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(("model", "fields", "param", "code"), [
    ("tts", {"input": "x" * 4097}, "input", "string_above_max_length"),
    ("tts", {"input": None}, "input", "invalid_type"),
    ("tts", {"voice": "robot"}, "voice", "invalid_value"),
    ("tts", {"voice": {"name": "x"}}, "voice", "invalid_value"),
    ("tts", {"response_format": "ogg"}, "response_format", "invalid_value"),
    ("tts", {"stream_format": "ws"}, "stream_format", "invalid_value"),
    ("tts", {"speed": 4.5}, "speed", "decimal_above_max_value"),
    ("tts", {"speed": 0.1}, "speed", "decimal_below_min_value"),
    ("tts-1", {"stream_format": "sse"}, "stream_format", "unsupported_value"),
    ("tts-1-hd", {"stream_format": "sse"}, "stream_format", "unsupported_value"),
    ("tts-1", {"instructions": "Whisper."}, "instructions", "unsupported_parameter"),
])
def test_bad_speech_requests_get_openai_400s(model, fields, param, code):
    async def body(session, url):
        return await post_speech(session, url, model=model, **fields)

    status, _, text = with_sim(make_scenario(tts=FAST, **{"tts-1": FAST, "tts-1-hd": FAST}), body)
    error = json.loads(text)["error"]
    assert (status, error["type"], error["param"], error["code"]) == (400, "invalid_request_error", param, code)


def test_missing_fields_and_non_json_bodies_are_400s():
    async def body(session, url):
        out = []
        for payload in ({"model": "tts", "input": "Hi"}, {"model": "tts", "voice": "alloy"}, {"input": "Hi"}):
            async with session.post(url + "/v1/audio/speech", json=payload, headers=KEY) as response:
                out.append((response.status, (await response.json())["error"]["param"]))
        async with session.post(url + "/v1/audio/speech", data=b"{nope", headers=KEY) as response:
            out.append((response.status, (await response.json())["error"]["param"]))
        return out

    assert with_sim(make_scenario(tts=FAST), body) == [(400, "voice"), (400, "input"), (400, None), (400, None)]


def test_the_limits_are_inclusive():
    async def body(session, url):
        return [(await post_speech(session, url, **fields))[0] for fields in (
            {"input": "x" * 4096}, {"speed": 0.25}, {"speed": 4}, {"instructions": "Calm."})]

    assert with_sim(make_scenario(tts=FAST), body) == [200, 200, 200, 200]
