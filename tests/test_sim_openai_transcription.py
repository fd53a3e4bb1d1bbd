"""The simulator's ``/v1/audio/transcriptions`` (speech to text), over real loopback sockets.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``openai`` SDK; nothing is mocked.
"""

from __future__ import annotations

import json
import struct
import time

import aiohttp
import openai
import pytest

from audio_helpers import (KEY, make_scenario, post_transcription, sim_log, sse_data, transcription_form,
                           wav_bytes)
from conftest import with_sim
from modelwatch.sim.openai_audio_transcribe import audio_duration_s, transcript_pieces

FAST = {"ttfb_ms": 0, "ttft_ms": 10, "inter_token_ms": 2, "tokens": 3, "transcript": "Hello there, world."}


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


# ---------------------------------------------------------------- the official SDK


def test_sdk_streams_a_transcription_to_its_done_event():
    async def body(session, url):
        stream = await sdk(url).audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("probe.wav", wav_bytes(2.0)), stream=True)
        return [event async for event in stream], await sim_log(session, url)

    events, log = with_sim(make_scenario(**{"gpt-4o-mini-transcribe": FAST}), body)
    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert [e.delta for e in events[:3]] == ["Hello", " there,", " world."]
    done = events[-1]
    assert done.text == "Hello there, world."
    assert done.usage.type == "tokens"
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (20, 3, 23)
    assert done.usage.input_token_details.audio_tokens == 20  # two seconds, ten tokens a second
    assert log[0]["status"] == 200 and log[0]["outcome"] == "ok"


def test_sdk_non_stream_json_text_and_verbose_json():
    async def body(session, url):
        client = sdk(url)
        as_json = await client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav_bytes()))
        as_text = await client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", wav_bytes()),
                                                           response_format="text")
        verbose = await client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", wav_bytes(1.5)),
                                                           response_format="verbose_json", language="de")
        whisper = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(1.2)))
        return as_json, as_text, verbose, whisper

    scenario = make_scenario(**{"gpt-4o-transcribe": FAST, "whisper-1": FAST})
    as_json, as_text, verbose, whisper = with_sim(scenario, body)
    assert as_json.text == "Hello there, world." and as_json.usage.type == "tokens"
    assert as_json.usage.input_tokens == 10 and as_json.usage.output_tokens == 3
    assert as_text == "Hello there, world.\n"
    assert verbose.task == "transcribe" and verbose.language == "german" and verbose.duration == 1.5
    assert verbose.text == "Hello there, world." and verbose.segments[0].end == 1.5
    assert verbose.usage.type == "duration" and verbose.usage.seconds == 2
    assert whisper.usage.type == "duration" and whisper.usage.seconds == 2  # whole seconds, rounded up


def test_srt_and_vtt_are_plain_text_cues_over_the_audio():
    async def body(session, url):
        out = {}
        for fmt in ("srt", "vtt"):
            out[fmt] = await post_transcription(session, url, transcription_form(
                "whisper-1", wav_bytes(61.25), response_format=fmt))
        return out

    out = with_sim(make_scenario(**{"whisper-1": FAST}), body)
    assert out["srt"][0] == 200 and out["srt"][1]["Content-Type"].startswith("text/plain")
    assert out["srt"][2] == "1\n00:00:00,000 --> 00:01:01,250\nHello there, world.\n\n"
    assert out["vtt"][2] == "WEBVTT\n\n00:00:00.000 --> 00:01:01.250\nHello there, world.\n\n"


def test_whisper_ignores_stream_and_answers_whole_json():
    async def body(session, url):
        return await post_transcription(session, url, transcription_form("whisper-1", stream="true"))

    status, headers, text = with_sim(make_scenario(**{"whisper-1": FAST}), body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(text) == {"text": "Hello there, world.", "usage": {"type": "duration", "seconds": 1}}


def test_raw_stream_is_data_only_sse_without_done_marker():
    async def body(session, url):
        return await post_transcription(session, url, transcription_form("m", stream="true"))

    status, headers, text = with_sim(make_scenario(m={**FAST, "keepalive_every_ms": 3, "ttft_ms": 20}), body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert text.startswith(": keep-alive\n\n")
    events = [json.loads(payload) for payload in sse_data(text)]
    assert events[-1]["type"] == "transcript.text.done" and "[DONE]" not in text
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"]


# ---------------------------------------------------------------- timing


def test_first_delta_and_whole_answer_come_at_the_injected_ttft():
    async def body(session, url):
        arrivals = []
        for stream in ("true", "false"):
            start = time.perf_counter()
            async with session.post(url + "/v1/audio/transcriptions", headers=KEY,
                                    data=transcription_form("m", stream=stream)) as response:
                async for _ in response.content.iter_any():
                    arrivals.append(time.perf_counter() - start)
                    break
                await response.read()
        return arrivals, await sim_log(session, url)

    arrivals, log = with_sim(make_scenario(m={**FAST, "ttfb_ms": 10, "ttft_ms": 60, "inter_token_ms": 5}), body)
    assert all(0.060 <= t < 0.090 for t in arrivals), arrivals
    for entry in log:
        assert entry["injected_ttft_s"] == pytest.approx(0.060)
        assert 0.060 <= entry["actual_ttft_s"] <= 0.070
    assert log[0]["actual_duration_s"] >= 0.060 + 2 * 0.005  # two more deltas, 5 ms apart


# ---------------------------------------------------------------- faults


def test_midstream_error_event_ends_the_stream_and_the_sdk_raises():
    async def body(session, url):
        raw = await post_transcription(session, url, transcription_form("m", stream="true"))
        stream = await sdk(url).audio.transcriptions.create(model="m", file=("a.wav", wav_bytes()), stream=True)
        seen = []
        with pytest.raises(openai.APIError) as caught:
            async for event in stream:
                seen.append(event.type)
        return raw, seen, caught.value, await sim_log(session, url)

    raw, seen, error, log = with_sim(make_scenario(m={**FAST, "midstream_error_after": 2}), body)
    events = [json.loads(p) for p in sse_data(raw[2])]
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.delta", "error"]
    assert events[-1]["error"]["type"] == "server_error"
    assert seen == ["transcript.text.delta"] * 2 and error.body["type"] == "server_error"
    assert [e["outcome"] for e in log] == ["midstream_error", "midstream_error"]


def test_disconnect_and_malformed_faults():
    async def body(session, url):
        with pytest.raises(aiohttp.ClientError):
            await post_transcription(session, url, transcription_form("cut", stream="true"))
        malformed = await post_transcription(session, url, transcription_form("junk", stream="true"))
        return malformed, await sim_log(session, url)

    scenario = make_scenario(cut={**FAST, "disconnect_after": 1}, junk={**FAST, "malformed_after": 1})
    malformed, log = with_sim(scenario, body)
    payloads = sse_data(malformed[2])
    assert payloads[1] == "{not json" and json.loads(payloads[-1])["type"] == "transcript.text.done"
    assert [e["outcome"] for e in log] == ["disconnect", "malformed"]


def test_stall_delays_the_rest_of_the_stream():
    async def body(session, url):
        start = time.perf_counter()
        status, _, text = await post_transcription(session, url, transcription_form("m", stream="true"))
        return status, time.perf_counter() - start, text

    status, elapsed, text = with_sim(make_scenario(m={**FAST, "stall_after": 1, "stall_ms": 80}), body)
    assert status == 200 and elapsed >= 0.090 and "transcript.text.done" in text


def test_content_blocked_returns_an_empty_transcript():
    async def body(session, url):
        return await post_transcription(session, url, transcription_form("m"))

    status, _, text = with_sim(make_scenario(m={**FAST, "error": "content_blocked"}), body)
    assert status == 200 and json.loads(text)["text"] == ""


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(("form_args", "status", "code"), [
    ({"filename": None}, 400, "missing_required_parameter"),  # no filename: not a file upload
    ({"filename": "probe"}, 400, "invalid_value"),  # no extension to detect the format from
    ({"filename": "probe.txt"}, 400, "invalid_value"),
    ({"model": None}, 400, None),
    ({"response_format": "yaml"}, 400, "invalid_value"),
    ({"model": "gpt-4o-transcribe", "response_format": "verbose_json"}, 400, "unsupported_value"),
    ({"stream": "maybe"}, 400, "invalid_type"),
    ({"audio": wav_bytes(0.05)}, 400, "audio_too_short"),
    ({"audio": b"RIFF\0\0\0\0WAVEjunk"}, 400, "invalid_value"),
])
def test_bad_transcription_requests_get_openai_400s(form_args, status, code):
    async def body(session, url):
        return await post_transcription(session, url, transcription_form(**{"model": "m", **form_args}))

    got_status, headers, text = with_sim(make_scenario(m=FAST, **{"gpt-4o-transcribe": FAST}), body)
    error = json.loads(text)["error"]
    assert (got_status, error["type"], error["code"]) == (status, "invalid_request_error", code)
    assert headers["x-request-id"].startswith("req_")


def test_a_json_body_and_an_oversized_upload_are_refused():
    async def body(session, url):
        async with session.post(url + "/v1/audio/transcriptions", json={"model": "m"}, headers=KEY) as response:
            as_json = response.status, await response.json()
        too_big = await post_transcription(session, url, transcription_form(audio=bytes(25 * 1024 * 1024 + 2)))
        return as_json, too_big, await sim_log(session, url)

    as_json, too_big, log = with_sim(make_scenario(m=FAST), body)
    assert as_json[0] == 400 and "multipart/form-data" in as_json[1]["error"]["message"]
    assert too_big[0] == 413 and "26214400" in json.loads(too_big[2])["error"]["message"]
    assert [e["status"] for e in log] == [400, 413]


# ---------------------------------------------------------------- pure helpers


def test_audio_duration_from_wav_header_or_raw_pcm():
    assert audio_duration_s(wav_bytes(1.5, rate=8000)) == pytest.approx(1.5)
    assert audio_duration_s(bytes(48_000)) == pytest.approx(1.0)  # PCM16 24 kHz mono
    streaming = bytearray(wav_bytes(0.5))
    struct.pack_into("<I", streaming, 40, 0xFFFFFFFF)  # a streaming writer's unknown data size
    assert audio_duration_s(bytes(streaming)) == pytest.approx(0.5)
    assert audio_duration_s(b"RIFF\0\0\0\0WAVE") is None


@pytest.mark.parametrize(("text", "count", "pieces"), [
    ("Hello there, world.", 3, ["Hello", " there,", " world."]),
    ("Hello there, world.", 2, ["Hello there,", " world."]),
    ("Say OK.", 4, ["S", "ay", " O", "K."]),
    ("Say OK.", 8, ["S", "a", "y", " ", "O", "K", "."]),  # at most one piece a character
    ("Say OK.", 0, []),
    (" a b ", 2, [" a", " b "]),
])
def test_transcript_pieces_rejoin_to_the_transcript(text, count, pieces):
    assert transcript_pieces(text, count) == pieces
    if pieces:
        assert "".join(pieces) == text
