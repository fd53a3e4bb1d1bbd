"""Text to speech: ``/v1/audio/speech`` on the simulator (PROTOCOLS.md §8.2).

See ``openai_audio`` for the routes, auth, injected errors and log. The request
is JSON, checked like OpenAI's (400 ``invalid_request_error`` otherwise):
``model`` and ``input`` (at most 4096 characters) required; ``voice`` required,
one of ``VOICES`` or ``{"id": "voice_..."}``; ``response_format`` one of
``mp3`` (default), ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``;
``stream_format`` ``audio`` (default) or ``sse``, which models whose name
starts ``tts-1`` refuse, as they refuse ``instructions``; ``speed`` a number
from 0.25 to 4.0 (validated only: the audio's length stays ``audio_ms``).

The answer is ``audio_ms`` of audio in pieces of ``audio_chunk_ms``: the
first at ``ttft_ms`` (+ jitter) after the request arrived, then one every
``inter_token_ms``, so generation runs faster than real time, as real TTS
does. The headers come at ``ttfb_ms``.

* ``stream_format: audio``: 200 with a chunked raw body (``Transfer-Encoding:
  chunked``, no ``Content-Length``); the first body byte is the first audio.
  Content types by format are ``CONTENT_TYPES``; PROTOCOLS.md §10 lists the
  real ones as unknown (the spec says ``application/octet-stream``), so treat
  them as a best guess. ``pcm`` is PCM16 LE 24 kHz mono (a quiet 400 Hz tone,
  as the realtime APIs speak); ``wav`` the same behind a 44-byte RIFF/WAVE
  header whose sizes are 0xFFFFFFFF, as streaming servers write it; ``mp3``
  silent MPEG-1 Layer III frames (128 kb/s, 44.1 kHz, 417 bytes, zeroed side
  info), which decoders accept. ``opus``, ``aac`` and ``flac`` are
  placeholders: the format's magic bytes (``OggS``, an ADTS sync word,
  ``fLaC``) and zeros at a plausible byte rate, not decodable audio.
* ``stream_format: sse``: data-only SSE, ``{"type": "speech.audio.delta",
  "audio": "<base64 of the same bytes>"}`` per piece, then
  ``{"type": "speech.audio.done", "usage": {"input_tokens", "output_tokens",
  "total_tokens"}}`` (input about four characters a token, output one per 50
  ms of audio, as the realtime simulator counts).

Faults after N pieces: ``disconnect_after`` (TCP reset, or a FIN with
``disconnect_style: close``), ``stall_after``/``stall_ms``, ``interrupt_after``
(the body just ends), and ``midstream_error_after``: in SSE an
``{"type": "error", "error": {...}}`` event (500 ``server_error``'s body) that
ends the stream; in a raw body, where no error can be written, a TCP reset
that cuts it short. SSE also takes ``malformed_after`` (``data: {not json``)
and ``keepalive_every_ms`` (``: keep-alive`` comments before the first
piece). ``content_blocked`` answers 200 with no audio.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import FaultyStream, reset_connection, sleep_until, to_json
from .content import SAMPLE_RATE, SSE_CONTENT_TYPE, pcm_tone, text_tokens
from .openai_http import ERRORS, plain_error

if TYPE_CHECKING:
    from .openai_audio import AudioCall

__all__ = ["CONTENT_TYPES", "MAX_INPUT_CHARS", "MP3_FRAME", "VOICES", "WAV_HEADER", "answer", "audio_bytes", "read"]

MAX_INPUT_CHARS = 4096
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin",
          "cedar")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "application/octet-stream"}
STREAM_FORMATS = ("audio", "sse")
_OUTPUT_AUDIO_MS_PER_TOKEN = 50  # the realtime simulator's output rate [MEM]

# RIFF/WAVE, PCM16 mono 24 kHz; unknown lengths written as 0xFFFFFFFF, as streaming servers do.
WAV_HEADER = (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
              + b"data" + struct.pack("<I", 0xFFFFFFFF))
# MPEG-1 Layer III, 128 kb/s, 44.1 kHz, joint stereo, no CRC: 144 * 128000 / 44100 = 417 bytes, 1152 samples.
MP3_FRAME = b"\xff\xfb\x90\x64" + bytes(413)
_MP3_FRAMES_PER_MS = 44.1 / 1152
# Placeholder formats: (bytes a millisecond, magic bytes that open the stream).
_PLACEHOLDERS = {"opus": (4, b"OggS"), "aac": (8, b"\xff\xf1\x50\x80"), "flac": (30, b"fLaC")}


def read_problem(body: Any) -> tuple[str, str | None, str | None] | None:
    """Check a speech request like OpenAI; (message, param, code) of its 400, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter", None, None
    for name in ("input", "voice"):
        if name not in body:
            return f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
    text = body["input"]
    if not isinstance(text, str):
        return f"Invalid type for 'input': expected a string, but got {type(text).__name__} instead.", "input", \
            "invalid_type"
    if len(text) > MAX_INPUT_CHARS:
        return (f"Invalid 'input': string too long. Expected a string with maximum length {MAX_INPUT_CHARS}, but "
                f"got a string with length {len(text)} instead.", "input", "string_above_max_length")
    voice = body["voice"]
    custom = isinstance(voice, dict) and isinstance(voice.get("id"), str)
    if not (custom or isinstance(voice, str) and voice in VOICES):
        return _invalid_value(voice, "voice", VOICES)
    for name, allowed in (("response_format", tuple(CONTENT_TYPES)), ("stream_format", STREAM_FORMATS)):
        if name in body and body[name] not in allowed:
            return _invalid_value(body[name], name, allowed)
    return _model_problem(body) or _speed_problem(body.get("speed"))


def _invalid_value(value: Any, param: str, allowed: tuple[str, ...]) -> tuple[str, str, str]:
    supported = ", ".join(f"'{name}'" for name in allowed)
    return f"Invalid value: '{value}'. Supported values are: {supported}.", param, "invalid_value"


def _model_problem(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """What tts-1 and tts-1-hd refuse: SSE streaming and instructions."""
    if not body["model"].startswith("tts-1"):
        return None
    if body.get("stream_format") == "sse":
        return "Unsupported value: 'stream_format' does not support 'sse' with this model.", "stream_format", \
            "unsupported_value"
    if body.get("instructions") is not None:
        return "Unsupported parameter: 'instructions' is not supported with this model.", "instructions", \
            "unsupported_parameter"
    return None


def _speed_problem(speed: Any) -> tuple[str, str, str] | None:
    if speed is None:
        return None
    if not isinstance(speed, int | float) or isinstance(speed, bool):
        return f"Invalid type for 'speed': expected a number, but got {type(speed).__name__} instead.", "speed", \
            "invalid_type"
    if speed < 0.25:
        return (f"Invalid 'speed': decimal below minimum value. Expected a value >= 0.25, but got {speed} instead.",
                "speed", "decimal_below_min_value")
    if speed > 4.0:
        return (f"Invalid 'speed': decimal above maximum value. Expected a value <= 4, but got {speed} instead.",
                "speed", "decimal_above_max_value")
    return None


async def read(call: AudioCall) -> web.Response | None:
    """Parse the JSON body into ``call.params``; the 400 answer if it is refused."""
    try:
        body = await call.request.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        call.use_model(body["model"] if isinstance(body.get("model"), str) else "")
    call.record.log_options(body)
    problem = read_problem(body)
    if problem is not None:
        message, param, code = problem
        return plain_error(400, message, code=code, param=param)
    call.params = {"format": body.get("response_format", "mp3"), "sse": body.get("stream_format") == "sse",
                   "input_tokens": text_tokens(body["input"]) + text_tokens(body.get("instructions") or "")}
    return None


def audio_bytes(fmt: str, start_ms: float, end_ms: float) -> bytes:
    """The bytes of ``fmt`` audio from ``start_ms`` to ``end_ms`` (from 0: with the format's header)."""
    if fmt in ("pcm", "wav"):
        first, last = round(start_ms * SAMPLE_RATE / 1000), round(end_ms * SAMPLE_RATE / 1000)
        data = pcm_tone(first, last - first)
        return WAV_HEADER + data if fmt == "wav" and start_ms == 0 else data
    if fmt == "mp3":
        return MP3_FRAME * (_mp3_frames(end_ms) - _mp3_frames(start_ms))
    per_ms, magic = _PLACEHOLDERS[fmt]
    size = round(end_ms * per_ms) - round(start_ms * per_ms)
    return magic + bytes(max(0, size - len(magic))) if start_ms == 0 else bytes(size)


def _mp3_frames(ms: float) -> int:
    """Whole frames needed to cover ``ms`` of audio."""
    return math.ceil(ms * _MP3_FRAMES_PER_MS - 1e-9)


async def answer(call: AudioCall, headers: dict[str, str]) -> web.StreamResponse:
    """Stream ``audio_ms`` of audio, raw or as SSE."""
    return await _SpeechStream(call, headers).run()


class _SpeechStream(FaultyStream):
    """The audio in ``audio_chunk_ms`` pieces, raw or SSE, with the scenario's faults."""

    def __init__(self, call: AudioCall, headers: dict[str, str]) -> None:
        self.call = self.exchange = call
        self.sse, self.format = call.params["sse"], call.params["format"]
        behaviour = call.behaviour
        # A raw body has no place for broken JSON or comments.
        self.behaviour = behaviour if self.sse else behaviour.model_copy(
            update={"malformed_after": None, "keepalive_every_ms": None})
        self.audio_ms = 0.0 if call.record.outcome == "content_blocked" else behaviour.audio_ms
        self.count = math.ceil(self.audio_ms / behaviour.audio_chunk_ms)
        self.first_at = call.first_at
        self.headers = headers

    async def run(self) -> web.StreamResponse:
        """Send the whole answer; returns early when a fault ends it."""
        call = self.call
        await sleep_until(call.t0_loop + self.behaviour.ttfb_ms / 1000)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE if self.sse else CONTENT_TYPES[self.format]
        response.headers["Cache-Control"] = "no-cache"
        response.headers["openai-processing-ms"] = str(round(call.elapsed_s() * 1000))
        response.enable_chunked_encoding()
        call.response = response
        call.record.status = 200
        await response.prepare(call.request)
        await self.keepalive_until(self.first_at)
        if not await self.stream_deltas(self.count):
            return response
        await sleep_until(self.first_at)  # with no audio the verdict still takes until ttft
        call.finish()
        if self.sse:
            usage_out = math.ceil(self.audio_ms / _OUTPUT_AUDIO_MS_PER_TOKEN)
            usage_in = call.params["input_tokens"]
            await self._send({"type": "speech.audio.done", "usage": {
                "input_tokens": usage_in, "output_tokens": usage_out, "total_tokens": usage_in + usage_out}})
        await response.write_eof()
        return response

    async def send_delta(self, index: int, count: int) -> None:
        chunk_ms = self.behaviour.audio_chunk_ms
        data = audio_bytes(self.format, index * chunk_ms, min((index + 1) * chunk_ms, self.audio_ms))
        if not data:
            return  # an mp3 piece shorter than a frame; an empty write would end a chunked body
        if self.sse:
            await self._send({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            return
        if index == count - 1:
            self.call.finish()  # the raw body's last byte goes out now
        await self.call.response.write(data)

    async def send_malformed(self) -> None:
        await self.call.response.write(b"data: {not json\n\n")

    async def send_midstream_error(self, index: int) -> None:
        if not self.sse:
            reset_connection(self.call.request.transport)
            return
        spec = ERRORS["server_error"]
        await self._send({"type": "error", "error": {"message": spec.message, "type": spec.type, "param": None,
                                                     "code": spec.code}})
        await self.call.response.write_eof()

    async def send_keepalive(self) -> None:
        await self.call.response.write(b": keep-alive\n\n")

    async def _send(self, event: dict[str, Any]) -> None:
        await self.call.response.write(f"data: {to_json(event)}\n\n".encode())
