"""Speech to text: ``/v1/audio/transcriptions`` on the simulator (PROTOCOLS.md §8.1).

See ``openai_audio`` for the routes, auth, injected errors and log. The request
is ``multipart/form-data`` (anything else: 400): ``file`` (required, with a
filename whose extension is one of ``AUDIO_EXTENSIONS``, else 400 "Unrecognized
file format"; at most 25 MiB, else 413), ``model`` (required), ``response_format``
(``json`` default, ``text``, ``srt``, ``verbose_json``, ``vtt``; ``diarized_json``
is not simulated and gets a 400 like any unknown value; names starting
``gpt-4o`` with ``transcribe`` and without ``diarize`` take only ``json`` and
``text``, the others get OpenAI's 400 "... is not compatible with model ..."
[OBS]), ``language``, ``prompt`` (counted as text input tokens) and ``stream``
(``true``/``false``). Other fields are accepted and logged.

The audio's length is read from the upload: a RIFF/WAVE file by its ``fmt``
and ``data`` chunks (a streaming size 0xFFFFFFFF, or one past the end, means
"the rest of the file"), anything else as raw PCM16 24 kHz mono. Under 0.1 s
gets 400 ``audio_too_short``, a RIFF file without ``fmt``/``data`` 400 "Audio
file might be corrupted or unsupported".

The answer's text is the model's ``transcript`` split into ``tokens`` pieces
(words, or smaller pieces when there are fewer words than tokens, at most
one a character; none for ``tokens: 0`` or ``content_blocked``). Usage is
``{"type": "tokens", "input_tokens", "input_token_details": {"text_tokens",
"audio_tokens"}, "output_tokens", "total_tokens"}`` (about ten audio tokens a
second, one output token a piece), or for models whose name starts
``whisper`` (billed by time) ``{"type": "duration", "seconds"}`` (whole
seconds, rounded up). ``verbose_json`` always reports duration usage.

* Not streamed (or any whisper model, which ignores ``stream``): the whole
  body at ``ttft_ms`` (+ jitter): ``json`` ``{"text", "usage"}``;
  ``text``, ``srt`` and ``vtt`` as ``text/plain``; ``verbose_json``
  ``{"task", "language", "duration", "text", "segments", "usage"}``.
* ``stream=true``: headers at ``ttfb_ms``, ``: keep-alive`` comments every
  ``keepalive_every_ms`` until the first delta, data-only SSE
  ``{"type": "transcript.text.delta", "delta"}`` from ``ttft_ms``, one every
  ``inter_token_ms``, then ``{"type": "transcript.text.done", "text", "usage"}``
  and the end of the body (no ``[DONE]``). Faults: ``midstream_error_after`` N
  ends after N deltas with ``{"type": "error", "error": {...}}`` (500
  ``server_error``'s body); ``disconnect_after``, ``stall_after``/``stall_ms``,
  ``malformed_after`` (``data: {not json``) and ``interrupt_after`` (the body
  just ends) as in chat.
"""

from __future__ import annotations

import math
import re
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import FaultyStream, sleep_until, to_json
from .content import SAMPLE_RATE, SSE_CONTENT_TYPE, text_tokens
from .openai_http import ERRORS, plain_error

if TYPE_CHECKING:
    from .openai_audio import AudioCall

__all__ = ["AUDIO_EXTENSIONS", "MAX_FILE_BYTES", "audio_duration_s", "answer", "read", "transcript_pieces"]

MAX_FILE_BYTES = 25 * 1024 * 1024
_MAX_FIELD_BYTES = 64 * 1024
AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_TOKEN_FORMATS = ("json", "text")  # all the gpt-4o transcribe models take
_MIN_AUDIO_S = 0.1
_AUDIO_MS_PER_TOKEN = 100  # the realtime simulator's input rate [MEM]
_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "ja": "japanese"}
_RAW_BYTES_PER_S = SAMPLE_RATE * 2


class _Refused(Exception):
    """A request the endpoint answers with an error before any behaviour applies."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def read(call: AudioCall) -> web.Response | None:
    """Parse the multipart form into ``call.params``; the 400/413 answer if it is refused."""
    try:
        fields, upload = await _read_form(call.request)
        call.use_model(fields.get("model", "") if isinstance(fields.get("model"), str) else "")
        options = {key: value for key, value in fields.items() if key != "prompt"}
        if upload is not None:
            options["file"] = {"filename": upload[0], "bytes": len(upload[1])}
        call.record.log_options(options)
        call.params = _validated(call.model, fields, upload)
    except _Refused as refused:
        return refused.response
    return None


async def _read_form(request: web.Request) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """The form's text fields (repeated names as lists) and its ``file`` part as (filename, bytes)."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _Refused(plain_error(400, f"Invalid Content-Type header ({content_type or 'none'}), expected "
                                        "multipart/form-data."))
    if (request.content_length or 0) > MAX_FILE_BYTES + _MAX_FIELD_BYTES:
        raise _Refused(_too_large(request.content_length))
    try:
        reader = await request.multipart()
        fields: dict[str, Any] = {}
        upload = None
        async for part in reader:
            if part.name == "file" and part.filename is not None:
                upload = (part.filename, await _read_part(part, MAX_FILE_BYTES))
                continue
            value = (await _read_part(part, _MAX_FIELD_BYTES)).decode("utf-8", "replace")
            if part.name in fields:
                previous = fields[part.name]
                fields[part.name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            elif part.name:
                fields[part.name] = value
    except ValueError:
        raise _Refused(plain_error(400, "Could not parse multipart form")) from None
    return fields, upload


async def _read_part(part: Any, limit: int) -> bytes:
    """A part's bytes, refusing more than ``limit`` (413) without holding more."""
    data = bytearray()
    while chunk := await part.read_chunk(65536):
        data += chunk
        if len(data) > limit:
            raise _Refused(_too_large(len(data)))
    return bytes(data)


def _too_large(size: int | None) -> web.Response:
    return plain_error(413, f"Maximum content size limit ({MAX_FILE_BYTES}) exceeded ({size} bytes read)")


def _validated(model: str, fields: dict[str, Any], upload: tuple[str, bytes] | None) -> dict[str, Any]:
    """The request's settings, or _Refused with OpenAI's 400."""
    if upload is None:
        raise _Refused(plain_error(400, "Missing required parameter: 'file'.", code="missing_required_parameter",
                                   param="file"))
    filename, audio = upload
    extension = filename.rpartition(".")[2].lower() if "." in filename else ""
    if extension not in AUDIO_EXTENSIONS:
        raise _Refused(plain_error(400, f"Unrecognized file format. Supported formats: {list(AUDIO_EXTENSIONS)}",
                                   code="invalid_value", param="file"))
    if not model:
        raise _Refused(plain_error(400, "you must provide a model parameter"))
    response_format = fields.get("response_format", "json")
    if response_format not in FORMATS:
        supported = ", ".join(f"'{name}'" for name in FORMATS)
        raise _Refused(plain_error(400, f"Invalid value: '{response_format}'. Supported values are: {supported}.",
                                   code="invalid_value", param="response_format"))
    if _token_billed_4o(model) and response_format not in _TOKEN_FORMATS:
        raise _Refused(plain_error(400, f"response_format '{response_format}' is not compatible with model "
                                        f"'{model}'. Use 'json' or 'text' instead.",
                                   code="unsupported_value", param="response_format"))
    stream = str(fields.get("stream", "false")).lower()
    if stream not in ("true", "false"):
        raise _Refused(plain_error(400, f"Invalid type for 'stream': expected a boolean, but got '{stream}' instead.",
                                   code="invalid_type", param="stream"))
    duration_s = audio_duration_s(audio)
    if duration_s is None:
        raise _Refused(plain_error(400, "Audio file might be corrupted or unsupported", code="invalid_value",
                                   param="file"))
    if duration_s < _MIN_AUDIO_S:
        raise _Refused(plain_error(400, f"Audio file is too short. Minimum audio length is {_MIN_AUDIO_S} seconds.",
                                   code="audio_too_short", param="file"))
    prompt = fields.get("prompt")
    return {"response_format": response_format, "stream": stream == "true", "duration_s": duration_s,
            "language": fields.get("language") if isinstance(fields.get("language"), str) else None,
            "prompt_tokens": text_tokens(prompt) if isinstance(prompt, str) else 0}


def _token_billed_4o(model: str) -> bool:
    return model.startswith("gpt-4o") and "transcribe" in model and "diarize" not in model


def audio_duration_s(audio: bytes) -> float | None:
    """Seconds of audio in a RIFF/WAVE file (None if its header is broken), else of raw PCM16 24 kHz mono."""
    if not audio.startswith(b"RIFF"):
        return len(audio) / _RAW_BYTES_PER_S
    if audio[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, None
    while offset + 8 <= len(audio):
        chunk_id, size = audio[offset:offset + 4], struct.unpack_from("<I", audio, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(audio):
            byte_rate = struct.unpack_from("<I", audio, body + 8)[0]
        elif chunk_id == b"data":
            if not byte_rate:
                return None
            return min(size, len(audio) - body) / byte_rate
        offset = body + size + (size & 1)  # chunks are padded to even sizes
    return None


def transcript_pieces(text: str, count: int) -> list[str]:
    """``text`` in ``count`` non-empty pieces (words grouped, or split when too few; at most one a character)."""
    if count <= 0 or not text:
        return []
    words = re.findall(r"\s*\S+", text) or [text]
    words[-1] += text[len("".join(words)):]  # trailing blanks stay with the last word
    if len(words) >= count:
        bounds = [round(i * len(words) / count) for i in range(count + 1)]
        return ["".join(words[bounds[i]:bounds[i + 1]]) for i in range(count)]
    pieces = words
    while len(pieces) < count:
        longest = max(range(len(pieces)), key=lambda i: len(pieces[i]))
        piece = pieces[longest]
        if len(piece) < 2:
            break
        pieces[longest:longest + 1] = [piece[:len(piece) // 2], piece[len(piece) // 2:]]
    return pieces


def _plan(call: AudioCall) -> list[str]:
    """The transcript's pieces for this request (none for ``content_blocked``)."""
    if call.record.outcome == "content_blocked":
        return []
    return transcript_pieces(call.behaviour.transcript, call.behaviour.tokens)


def _usage(call: AudioCall, pieces: int, *, duration: bool) -> dict[str, Any]:
    """Token usage (audio in, pieces out) or, for time-billed models, whole seconds."""
    seconds = call.params["duration_s"]
    if duration:
        return {"type": "duration", "seconds": math.ceil(seconds)}
    audio = math.ceil(seconds * 1000 / _AUDIO_MS_PER_TOKEN)
    text = call.params["prompt_tokens"]
    return {"type": "tokens", "input_tokens": audio + text,
            "input_token_details": {"text_tokens": text, "audio_tokens": audio},
            "output_tokens": pieces, "total_tokens": audio + text + pieces}


async def answer(call: AudioCall, headers: dict[str, str]) -> web.StreamResponse:
    """Stream the transcript (``stream=true``, not whisper) or send it whole at ``ttft_ms``."""
    if call.params["stream"] and not call.model.startswith("whisper"):
        return await _TranscriptStream(call, headers).run()
    await sleep_until(call.first_at)
    pieces = _plan(call)
    response = _whole(call, "".join(pieces), len(pieces))
    response.headers.update(headers)
    response.headers["openai-processing-ms"] = str(round(call.elapsed_s() * 1000))
    call.record.actual_ttft_s = call.elapsed_s()
    call.finish(200)
    return response


def _whole(call: AudioCall, text: str, pieces: int) -> web.Response:
    """The non-streamed answer in the request's ``response_format``."""
    fmt, seconds = call.params["response_format"], call.params["duration_s"]
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt in ("srt", "vtt"):
        return web.Response(text=_subtitles(fmt, text, seconds), content_type="text/plain")
    if fmt == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text,
                   "tokens": list(range(50364, 50364 + pieces)), "temperature": 0.0, "avg_logprob": -0.25,
                   "compression_ratio": 1.0, "no_speech_prob": 0.01}
        body: dict[str, Any] = {
            "task": "transcribe", "language": _LANGUAGES.get(call.params["language"] or "en",
                                                             call.params["language"]),
            "duration": round(seconds, 3), "text": text, "segments": [segment] if text else [],
            "usage": _usage(call, pieces, duration=True)}
    else:
        body = {"text": text, "usage": _usage(call, pieces, duration=call.model.startswith("whisper"))}
    return web.json_response(body, dumps=to_json)


def _subtitles(fmt: str, text: str, seconds: float) -> str:
    """One cue over the whole audio, as SubRip or WebVTT."""
    def stamp(s: float) -> str:
        ms = round(s * 1000)
        clock = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
        return f"{clock},{ms % 1000:03d}" if fmt == "srt" else f"{clock}.{ms % 1000:03d}"
    cue = f"{stamp(0)} --> {stamp(seconds)}\n{text}\n\n" if text else ""
    return f"1\n{cue}" if fmt == "srt" and cue else ("WEBVTT\n\n" + cue if fmt == "vtt" else cue)


class _TranscriptStream(FaultyStream):
    """A streamed transcription: deltas with the scenario's faults, then ``transcript.text.done``."""

    def __init__(self, call: AudioCall, headers: dict[str, str]) -> None:
        self.call = self.exchange = call
        self.behaviour = call.behaviour
        self.pieces = _plan(call)
        self.first_at = call.first_at
        self.headers = headers

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        call = self.call
        await sleep_until(call.t0_loop + self.behaviour.ttfb_ms / 1000)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        response.headers["openai-processing-ms"] = str(round(call.elapsed_s() * 1000))
        call.response = response
        call.record.status = 200
        await response.prepare(call.request)
        await self.keepalive_until(self.first_at)
        if not await self.stream_deltas(len(self.pieces)):
            return response
        await sleep_until(self.first_at)  # with no pieces the verdict still takes until ttft
        done = {"type": "transcript.text.done", "text": "".join(self.pieces),
                "usage": _usage(call, len(self.pieces), duration=False)}
        call.finish()
        await self._send(to_json(done))
        await response.write_eof()
        return response

    async def send_delta(self, index: int, count: int) -> None:
        await self._send(to_json({"type": "transcript.text.delta", "delta": self.pieces[index]}))

    async def send_malformed(self) -> None:
        await self._send("{not json")

    async def send_midstream_error(self, index: int) -> None:
        spec = ERRORS["server_error"]
        error = {"message": spec.message, "type": spec.type, "param": None, "code": spec.code}
        await self._send(to_json({"type": "error", "error": error}))
        await self.call.response.write_eof()

    async def send_keepalive(self) -> None:
        await self.call.response.write(b": keep-alive\n\n")

    async def _send(self, data: str) -> None:
        await self.call.response.write(f"data: {data}\n\n".encode())
