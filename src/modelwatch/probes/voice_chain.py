"""The REST voice chain (``kind: voice-chain``): transcription -> chat -> speech, timed as a voice agent hears it.

One probe runs the three requests a voice agent built on REST makes for one
spoken turn, each after the previous one is complete (PROTOCOLS.md §8.3)::

    stt   POST /audio/transcriptions: the bundled spoken prompt as a WAV file,
          ``stream=true`` (transcript.text.delta events), or whole JSON from a
          model that ignores ``stream`` (whisper-1)          -> the transcript
    llm   Chat Completions streaming with the transcript  -> the answer's text
    tts   POST /audio/speech with the answer, raw audio
          (``tts_format``, default pcm) or SSE audio deltas -> first audio byte

``ttft_s`` is the first audio byte of the spoken answer from the probe's start,
so it compares directly with a realtime audio probe's. ``ttfb_s`` is the
transcription's response headers, ``duration_s`` the last audio byte. Each
stage's timings (from the stage's own start) go to ``probe_stages``; a stage's
failure carries the stage in ``error_code`` (``tts:rate_limit_exceeded``).
The chain is sequential: speech starts once the whole answer is there, which
for the probe's one-word answer is also when a pipelined agent would start.

Tokens add up across the stages (audio in: the transcription's; audio out:
the speech's, when its SSE form reports usage). The cost is priced stage by
stage: the transcription and speech at ``price.stt`` / ``price.tts`` (per
million tokens, or ``per_minute`` of audio when no usage is reported, as for
raw audio), the chat at the target's own price.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure, StageTiming
from modelwatch.pricing import probe_cost_usd
from modelwatch.probes.audio import DEFAULT_VOICE, PROMPT_RATE, prompt_audio, prompt_audio_seconds
from modelwatch.probes.base import Measurement, round_s
from modelwatch.probes.http import BodyReader, read_body, read_stream, refuse, request_id_from, stream_request
from modelwatch.probes.openai_chat import ERRORS, ChatStream, build_request
from modelwatch.probes.openai_family import FAMILY, classify_openai_error, openai_auth
from modelwatch.probes.parsing import as_int, error_fields, parse_body
from modelwatch.probes.spec import PROMPT_OVERHEAD_TOKENS, DetailSeries, ProbeSpec, Tokens

T = TypeVar("T")
DEFAULT_STT_MODEL = "gpt-4o-mini-transcribe"
DEFAULT_TTS_MODEL = "gpt-4o-mini-tts"
STAGES = ("stt", "llm", "tts")
PCM_BYTES_PER_S = 2 * PROMPT_RATE  # the speech endpoint's pcm: 24 kHz, 16-bit, mono
# Estimates for --dry-run: the transcript of "Say OK." and what an answer of max_tokens sounds like.
TRANSCRIPT_TOKENS = 4
SPOKEN_S_PER_TOKEN = 0.4
TTS_AUDIO_TOKENS_PER_S = 21  # gpt-4o-mini-tts: about $0.015 a minute at $12 per million audio tokens


@cache
def prompt_wav() -> bytes:
    """The bundled spoken prompt as a WAV file (the endpoint detects the format from it)."""
    pcm = prompt_audio()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, PROMPT_RATE, PCM_BYTES_PER_S, 2, 16) + b"data" + struct.pack("<I", len(pcm))
    return header + pcm


def audio_url(job: ProbeJob, endpoint: str, model: str) -> str:
    """``/audio/transcriptions`` or ``/audio/speech``: Azure's dated form names the deployment in the path."""
    provider = job.provider
    if provider.type == "azure-openai" and provider.api_version:
        return (f"{provider.base_url}/deployments/{quote(model, safe='')}/audio/{endpoint}"
                f"?api-version={quote(provider.api_version)}")
    return f"{provider.base_url}/audio/{endpoint}"


def _headers(job: ProbeJob, accept: str) -> dict[str, str]:
    return {"Accept": accept, "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
            **openai_auth(job)}


class _SpeechStream:
    """What both speech endpoints stream: data-only SSE of typed JSON events, usage on the last one."""

    __slots__ = ("finished", "usage")
    DONE = ""  # the terminal event's type

    def __init__(self) -> None:
        self.finished = False
        self.usage: dict = {}

    def _event(self, data: str, event: str) -> tuple[Any, dict]:
        """The event's type and body; an error event raises its classified failure, the terminal
        event is taken in (finished, usage)."""
        obj = _json_event(data)
        kind = obj.get("type")
        if event == "error" or kind == "error" or obj.get("error"):
            raise ProbeFailure(*classify_openai_error(None, obj))
        if kind == self.DONE:
            self.finished = True
            self.usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        return kind, obj

    def tokens(self) -> tuple[int | None, int | None]:
        return as_int(self.usage.get("input_tokens")), as_int(self.usage.get("output_tokens"))

    def _verdict(self, has_output: bool, nothing: str) -> ProbeFailure | None:
        if not self.finished:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator", f"stream ended without {self.DONE}")
        return None if has_output else ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content", nothing)


class TranscriptStream(_SpeechStream):
    """A streamed transcription (``transcript.text.delta`` ... ``transcript.text.done``), fed SSE events."""

    __slots__ = ("parts", "text")
    DONE = "transcript.text.done"

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.text: str | None = None

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event; True if it carried transcript text."""
        kind, obj = self._event(data, event)
        if kind == "transcript.text.delta" and isinstance(obj.get("delta"), str) and obj["delta"]:
            self.parts.append(obj["delta"])
            return True
        if kind == self.DONE:
            self.text = obj.get("text") if isinstance(obj.get("text"), str) else None
            return bool(self.text) and not self.parts
        return False

    def transcript(self) -> str:
        """The whole transcript: the done event's text, else the deltas joined."""
        return (self.text or "".join(self.parts)).strip()

    def verdict(self) -> ProbeFailure | None:
        return self._verdict(bool(self.transcript()), "empty transcript")


class SpeechEvents(_SpeechStream):
    """Speech as SSE (``speech.audio.delta`` ... ``speech.audio.done``), fed one event at a time."""

    __slots__ = ("audio_bytes",)
    DONE = "speech.audio.done"

    def __init__(self) -> None:
        super().__init__()
        self.audio_bytes = 0

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event; True if it carried audio."""
        kind, obj = self._event(data, event)
        if kind == "speech.audio.delta" and isinstance(obj.get("audio"), str) and obj["audio"]:
            self.audio_bytes += len(obj["audio"]) * 3 // 4  # base64: no need to decode to count
            return True
        return False

    def verdict(self) -> ProbeFailure | None:
        return self._verdict(bool(self.audio_bytes), "speech without audio")


def _json_event(data: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                           f"malformed JSON in stream: {data[:60]}") from None
    if not isinstance(obj, dict):
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream event is not an object")
    return obj


class Chain:
    """What the stages reported, for the probe's tokens and cost."""

    def __init__(self) -> None:
        self.stt_usage: dict = {}
        self.llm_tokens: tuple[int | None, int | None] = (None, None)
        self.tts_tokens: tuple[int | None, int | None] = (None, None)
        self.tts_audio_s: float | None = None


async def transcribe(job: ProbeJob, http: aiohttp.ClientSession, step: Measurement, chain: Chain) -> str:
    """The stt stage: the spoken prompt's transcript."""
    p = job.probe
    form = aiohttp.FormData()
    form.add_field("file", prompt_wav(), filename="probe.wav", content_type="audio/wav")
    form.add_field("model", p.stt_model or DEFAULT_STT_MODEL)
    form.add_field("response_format", "json")
    form.add_field("language", "en")
    if p.stt_stream is not False:
        form.add_field("stream", "true")
    url = audio_url(job, "transcriptions", p.stt_model or DEFAULT_STT_MODEL)
    async with http.post(url, data=form, headers=_headers(job, "text/event-stream, application/json"),
                         allow_redirects=False) as resp:
        _answered(step, resp)
        if resp.status != 200:
            await refuse(resp, step, ERRORS)
        if "text/event-stream" in resp.headers.get("Content-Type", ""):
            stream = TranscriptStream()
            await read_stream(resp, step, stream)
            chain.stt_usage = stream.usage
            return stream.transcript()
        body = parse_body(await read_body(resp, step.byte_limit))  # a whole answer (whisper-1, or no stream)
        step.ttft_s = step.duration_s = step.elapsed()
    if isinstance(body, dict) and error_fields(body)[2] and "text" not in body:
        raise ProbeFailure(*classify_openai_error(None, body))
    text = body.get("text") if isinstance(body, dict) else body if isinstance(body, str) else None
    if not isinstance(text, str) or not text.strip():
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content", "transcription without text")
    chain.stt_usage = body.get("usage") if isinstance(body, dict) and isinstance(body.get("usage"), dict) else {}
    return text.strip()


async def answer(job: ProbeJob, http: aiohttp.ClientSession, step: Measurement, transcript: str,
                 chain: Chain) -> str:
    """The llm stage: the chat model's streamed answer to the transcript."""
    stream = ChatStream(require_done=job.provider.type == "openai",
                        require_finish=job.provider.finish_reason == "required")
    try:
        await stream_request(http, step, build_request(job, [{"role": "user", "content": transcript}]), stream,
                             ERRORS)
    finally:
        chain.llm_tokens = stream.tokens()
    return stream.answer()


async def speak(job: ProbeJob, http: aiohttp.ClientSession, step: Measurement, text: str, chain: Chain) -> None:
    """The tts stage: speech of the answer, streamed; its first audio byte is the chain's first audio."""
    p = job.probe
    model, fmt, sse = p.tts_model or DEFAULT_TTS_MODEL, p.tts_format or "pcm", p.tts_stream_format == "sse"
    body = {"model": model, "input": text, "voice": p.voice or DEFAULT_VOICE, "response_format": fmt,
            "stream_format": "sse" if sse else "audio"}
    headers = {**_headers(job, "text/event-stream" if sse else "application/octet-stream"),
               "Content-Type": "application/json"}
    async with http.post(audio_url(job, "speech", model), data=json.dumps(body).encode(), headers=headers,
                         allow_redirects=False) as resp:
        _answered(step, resp)
        content_type = resp.headers.get("Content-Type", "")
        if resp.status != 200 or "json" in content_type:
            await refuse(resp, step, ERRORS)  # a JSON 200 is an error body, or nothing to play
        if sse or "text/event-stream" in content_type:
            events = SpeechEvents()
            try:
                await read_stream(resp, step, events)
            finally:
                chain.tts_tokens = events.tokens()
            return
        audio = await _read_audio(resp, step, fmt)
    if fmt in ("pcm", "wav"):
        chain.tts_audio_s = audio / PCM_BYTES_PER_S


async def _read_audio(resp: aiohttp.ClientResponse, step: Measurement, fmt: str) -> int:
    """Read a raw audio body; stamp its first audio byte (past a WAV header) and its end. Returns audio bytes."""
    body = BodyReader(resp, step)
    skip = 44 if fmt == "wav" else 0  # RIFF + fmt + data headers: the sound starts after them
    audio = 0
    while chunk := await body.read():
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        if chunk and step.ttft_s is None:
            step.ttft_s = body.arrived - step.start
            step.enter("total")
        audio += len(chunk)
    step.duration_s = body.arrived - step.start
    if not audio:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content", "speech answer without audio")
    return audio


def _answered(step: Measurement, resp: aiohttp.ClientResponse) -> None:
    step.ttfb_s = step.elapsed()
    step.http_status = resp.status
    step.request_id = request_id_from(resp.headers)
    step.enter("ttft")


async def probe_voice_chain(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """Transcribe the spoken prompt, answer it, speak the answer: timed stage by stage."""
    chain = Chain()
    # The first connection's budget is connect_timeout; from there the first audio's bounds it all.
    try:
        transcript = await _stage(m, "stt", lambda step: transcribe(job, http, step, chain))
        text = await _stage(m, "llm", lambda step: answer(job, http, step, transcript, chain))
        if not text.strip():
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content", "the chat answer has no text to speak")
        await _stage(m, "tts", lambda step: speak(job, http, step, text, chain))
    finally:
        _tally(job, m, chain)
    m.stage = None
    tts = m.stages[-1]
    m.ttft_s = tts.start_s + tts.ttft_s
    m.duration_s = tts.start_s + tts.duration_s


async def _stage(m: Measurement, name: str, run: Callable[[Measurement], Awaitable[T]]) -> T:
    """Run one stage on its own clock, its name on any failure; record what it reached, whatever happens."""
    m.stage = name
    step = m.child(first_output_ends_ttft=name == "tts")
    start_s = step.start - m.start
    try:
        return await run(step)
    finally:
        m.stages.append(StageTiming(name, start_s, round_s(step.ttfb_s), round_s(step.ttft_s),
                                    round_s(step.duration_s)))
        m.took_step(step)
        if name == "stt" and step.ttfb_s is not None:
            m.ttfb_s = start_s + step.ttfb_s



def _sum(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _stt_tokens(usage: dict) -> tuple[int | None, int | None, int | None, float | None]:
    """(input, output, input audio tokens, billed seconds) of a transcription's usage report."""
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        return None, None, None, float(seconds) if isinstance(seconds, (int, float)) else None
    details = usage.get("input_token_details")
    audio = as_int(details.get("audio_tokens")) if isinstance(details, dict) else None
    return as_int(usage.get("input_tokens")), as_int(usage.get("output_tokens")), audio, None


def _tally(job: ProbeJob, m: Measurement, chain: Chain) -> None:
    """The probe's tokens (all stages) and cost (each stage at its own price)."""
    stt_in, stt_out, stt_audio, stt_s = _stt_tokens(chain.stt_usage)
    llm_in, llm_out = chain.llm_tokens
    tts_in, tts_out = chain.tts_tokens
    m.input_tokens, m.output_tokens = _sum(stt_in, llm_in, tts_in), _sum(stt_out, llm_out, tts_out)
    m.input_audio_tokens, m.output_audio_tokens = stt_audio, tts_out
    price = job.price
    if price is None or not m.stages:
        return
    if stt_audio is None and stt_in is not None:
        stt_audio = stt_in  # a report without details: the input is the audio
    stt = stage_cost(price.stt, stt_in, stt_out, stt_audio, None,
                     stt_s if stt_s is not None else prompt_audio_seconds())
    llm = probe_cost_usd(price, llm_in, llm_out) or 0.0
    tts = stage_cost(price.tts, tts_in, tts_out, None, tts_out, chain.tts_audio_s) if len(m.stages) == 3 else 0.0
    m.cost_usd = round(stt + llm + tts, 9)


def stage_cost(price: Any, text_in: int | None, text_out: int | None, audio_in: int | None,
               audio_out: int | None, seconds: float | None) -> float:
    """USD of one speech stage: its reported tokens at the stage's token prices, else its audio
    minutes at ``per_minute``; 0 when neither is known (a stage without a price)."""
    if price is None:
        return 0.0
    if text_in is not None or text_out is not None:
        audio_in, audio_out = audio_in or 0, audio_out or 0
        micro = (max((text_in or 0) - audio_in, 0) * price.input + max((text_out or 0) - audio_out, 0) * price.output
                 + audio_in * (price.input if price.audio_input is None else price.audio_input)
                 + audio_out * (price.output if price.audio_output is None else price.audio_output))
        if micro:
            return micro / 1e6
    if seconds is not None and price.per_minute:
        return price.per_minute * seconds / 60
    return 0.0


def _answer_seconds(job: ProbeJob) -> float:
    """How long an answer of the output cap takes to say, at most (for estimates)."""
    return job.probe.max_tokens * SPOKEN_S_PER_TOKEN


def estimate_tokens(job: ProbeJob) -> Tokens:
    """Upper-bound tokens of one chain: (text in, text out, audio in, audio out) over the three stages."""
    p = job.probe
    stt_audio = round(prompt_audio_seconds() * 10)
    text_in = PROMPT_OVERHEAD_TOKENS + TRANSCRIPT_TOKENS + p.max_tokens  # chat prompt, then the text spoken
    return text_in, TRANSCRIPT_TOKENS + p.max_tokens, stt_audio, round(_answer_seconds(job) * TTS_AUDIO_TOKENS_PER_S)


def estimate_cost(job: ProbeJob) -> float | None:
    """Upper-bound USD of one chain, each stage at its price (None without a price)."""
    price, p = job.price, job.probe
    if price is None:
        return None
    _, _, stt_audio, tts_audio = estimate_tokens(job)
    stt = stage_cost(price.stt, stt_audio, TRANSCRIPT_TOKENS, stt_audio, None, prompt_audio_seconds())
    llm = probe_cost_usd(price, PROMPT_OVERHEAD_TOKENS + TRANSCRIPT_TOKENS, p.max_tokens) or 0.0
    tts = stage_cost(price.tts, p.max_tokens, tts_audio, None, tts_audio, _answer_seconds(job))
    return round(stt + llm + tts, 9)


def _details(job: ProbeJob) -> DetailSeries:
    return DetailSeries(stages=STAGES)


SPEC = ProbeSpec("voice-chain", FAMILY, probe_voice_chain, classify_openai_error, estimate_tokens,
                 "REST voice chain: transcription -> chat streaming -> streamed speech; ttft_s is the first "
                 "audio byte", details=_details, cost=estimate_cost,
                 options={name: FAMILY for name in ("stt_model", "tts_model", "stt_stream", "tts_format",
                                                    "tts_stream_format")})
