"""OpenAI Realtime WebSocket probe (OpenAI, Azure OpenAI, compatible servers).

One short, staged session, each stage with its budget and its name in
``error_code`` if it times out::

    connect      TCP/TLS + WebSocket upgrade        -> connect_s
    session      session.created received           -> ttfb_s
    configure    session.update -> session.updated
    ttft         user turn + response.create -> first text delta, or first
                 audio delta with ``modality: audio``  -> ttft_s
    response     response.done                      -> duration_s, tokens
    close        clean close handshake (best effort: a slow close does not fail the probe)

Both event-name families are accepted whatever was asked for (GA
``response.output_text.delta`` / ``response.output_audio.delta``, beta
``response.text.delta`` / ``response.audio.delta``); unknown events and extra
or null fields are ignored. :class:`RealtimeSession` decodes events without
I/O, so it is tested with captured frames.
"""

from __future__ import annotations

import base64
import json
import time
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.config import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.auth import auth_headers
from modelwatch.probes.base import Measurement
from modelwatch.probes.openai_chat import classify_openai_error
from modelwatch.probes.websocket import close_in_background, close_within_grace, open_websocket

INSTRUCTIONS = "Reply with one word."
# Transcript deltas (response.output_audio_transcript.delta, ...) are neither: never the TTFT.
TEXT_DELTAS = {"response.output_text.delta", "response.text.delta"}
AUDIO_DELTAS = {"response.output_audio.delta", "response.audio.delta"}

# Realtime error codes whose meaning the generic OpenAI table does not capture.
_REALTIME_CODES = {
    "beta_api_shape_disabled": Outcome.PROTOCOL_ERROR,
    "session_expired": Outcome.PROTOCOL_ERROR,
    "input_audio_buffer_commit_empty": Outcome.BAD_REQUEST,
    "conversation_already_has_active_response": Outcome.BAD_REQUEST,
}


@cache
def prompt_audio() -> bytes:
    """The bundled spoken prompt: PCM16 LE, 24 kHz, mono (see data/README.md)."""
    return (resources.files("modelwatch") / "data" / "prompt-say-ok-24k.pcm").read_bytes()


def realtime_endpoint(job: ProbeJob) -> tuple[str, dict[str, str]]:
    """The WebSocket URL and upgrade headers for a job."""
    provider = job.provider
    base = "ws" + provider.base_url[4:] if provider.base_url.startswith("http") else provider.base_url
    headers = {"User-Agent": "modelwatch", **provider.headers}
    if provider.type == "azure-openai" and provider.api_version:
        url = (f"{base}/realtime?api-version={quote(provider.api_version)}"
               f"&deployment={quote(job.model, safe='')}")
    else:
        url = f"{base}/realtime?model={quote(job.model, safe='')}"
    headers.update(auth_headers(job))
    if job.probe.interface == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return url, headers


def session_update(job: ProbeJob) -> dict:
    """The ``session.update`` event in the shape the interface expects."""
    p = job.probe
    audio = p.modality == "audio"
    if p.interface == "beta":
        session: dict[str, Any] = {"modalities": ["audio", "text"] if audio else ["text"],
                                   "instructions": INSTRUCTIONS,
                                   "max_response_output_tokens": p.max_tokens,
                                   "turn_detection": None}
        if audio:
            session |= {"voice": p.voice, "input_audio_format": "pcm16", "output_audio_format": "pcm16"}
        return {"type": "session.update", "session": session}
    session = {"type": "realtime", "output_modalities": ["audio"] if audio else ["text"],
               "instructions": INSTRUCTIONS, "max_output_tokens": p.max_tokens}
    if audio:
        pcm = {"type": "audio/pcm", "rate": 24000}
        session["audio"] = {"input": {"format": pcm, "turn_detection": None},
                            "output": {"format": pcm, "voice": p.voice}}
    return {"type": "session.update", "session": session}


def user_turn(job: ProbeJob) -> list[dict]:
    """The events that ask for one response: the user's message (text or audio), then
    ``response.create``."""
    if job.probe.modality == "audio":
        audio = base64.b64encode(prompt_audio()).decode("ascii")
        turn = [{"type": "input_audio_buffer.append", "audio": audio},
                {"type": "input_audio_buffer.commit"}]
    else:
        turn = [{"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": job.probe.prompt}]}}]
    return turn + [{"type": "response.create"}]


def classify_realtime_error(error: Any) -> ProbeFailure:
    """The failure an ``error`` event's (or a failed response's) error object means."""
    if not isinstance(error, dict):
        error = {"message": str(error)}
    code = str(error.get("code") or "").lower()
    if code in _REALTIME_CODES:
        return ProbeFailure(_REALTIME_CODES[code], code, str(error.get("message") or code))
    return ProbeFailure(*classify_openai_error(None, {"error": error}))


def classify_close(code: int | None, reason: str) -> ProbeFailure:
    """The failure an unexpected close means (no error event said more)."""
    if code == 4000:
        short = reason.rsplit(".", 1)[-1] if reason else ""
        return ProbeFailure(Outcome.PROTOCOL_ERROR, short or "close_4000",
                            f"closed with 4000 {reason}".strip())
    outcome = {1011: Outcome.SERVER_ERROR, 1001: Outcome.SERVER_ERROR, 1012: Outcome.SERVER_ERROR,
               1013: Outcome.OVERLOADED}.get(code or 0, Outcome.PROTOCOL_ERROR)
    name = "abnormal_close" if code in (None, 1006) else f"close_{code}"
    return ProbeFailure(outcome, name, f"connection closed ({code or 1006}) {reason}".strip())


class RealtimeSession:
    """What a realtime session said so far; :meth:`feed` one decoded server event at a time."""

    __slots__ = ("modality", "created", "updated", "output", "usage", "session_id")

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.created = self.updated = self.output = False
        self.usage: dict = {}
        self.session_id: str | None = None

    def feed(self, event: Any) -> str | None:
        """Consume one event; return the stage it completes, if any.

        Stages: ``session``, ``configure``, ``ttft`` (first output of the asked
        modality), ``response``. Raises :class:`ProbeFailure` for errors.
        """
        if not isinstance(event, dict):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event", "event is not a JSON object")
        kind = event.get("type")
        if kind == "error":
            raise classify_realtime_error(event.get("error"))
        if kind == "session.created" and not self.created:
            self.created = True
            self.session_id = (event.get("session") or {}).get("id")
            return "session"
        if kind == "session.updated" and not self.updated:
            self.updated = True
            return "configure"
        if kind in TEXT_DELTAS or kind in AUDIO_DELTAS:
            return self._delta(kind, event.get("delta"))
        if kind == "response.done":
            return self._response_done(event.get("response"))
        return None

    def _delta(self, kind: str, delta: Any) -> str | None:
        if not isinstance(delta, str) or not delta or self.output:
            return None
        if kind in (AUDIO_DELTAS if self.modality == "audio" else TEXT_DELTAS):
            self.output = True
            return "ttft"
        return None

    def _response_done(self, response: Any) -> str:
        response = response if isinstance(response, dict) else {}
        self.usage = response.get("usage") or {}
        status = response.get("status")
        details = response.get("status_details") or {}
        if status == "failed":
            raise classify_realtime_error(details.get("error") or {"message": "response failed"})
        reason = details.get("reason")
        if reason == "content_filter":
            raise ProbeFailure(Outcome.CONTENT_BLOCKED, "content_filter", "response stopped by the content filter")
        if status == "cancelled":
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "response_cancelled",
                               f"response cancelled ({reason or 'no reason'})")
        if not self.output:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                               f"response {status or 'done'} without {self.modality} output")
        return "response"

    def tokens(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(input, output, input audio, output audio) tokens from ``response.done``."""
        u = self.usage
        def n(obj: Any, key: str) -> int | None:
            value = obj.get(key) if isinstance(obj, dict) else None
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        return (n(u, "input_tokens"), n(u, "output_tokens"),
                n(u.get("input_token_details"), "audio_tokens"),
                n(u.get("output_token_details"), "audio_tokens"))


async def probe_openai_realtime(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One staged realtime session, timed stage by stage."""
    url, headers = realtime_endpoint(job)
    ws = await open_websocket(http, url, headers, m, classify_openai_error)
    session = RealtimeSession(job.probe.modality)
    try:
        await _converse(job, ws, session, m)
    except BaseException:
        close_in_background(ws)  # the outcome is decided: don't let the goodbye stretch the duration
        raise
    finally:
        m.input_tokens, m.output_tokens, m.input_audio_tokens, m.output_audio_tokens = session.tokens()
        m.request_id = m.request_id or session.session_id
    await close_within_grace(ws, m)


async def _converse(job: ProbeJob, ws: aiohttp.ClientWebSocketResponse, session: RealtimeSession,
                    m: Measurement) -> None:
    m.enter("session")
    m.ttfb_s = await _until(ws, session, m, "session") - m.start
    m.enter("configure")
    await _send(ws, session, m, [session_update(job)])
    await _until(ws, session, m, "configure")
    m.enter("ttft")
    await _send(ws, session, m, user_turn(job))
    m.ttft_s = await _until(ws, session, m, "ttft") - m.start
    m.enter("response")
    m.duration_s = await _until(ws, session, m, "response") - m.start


async def _until(ws: aiohttp.ClientWebSocketResponse, session: RealtimeSession, m: Measurement,
                 stage: str) -> float:
    """Read events until ``stage`` is reached; return when the frame that reached it arrived."""
    while True:
        msg = await ws.receive()
        now = time.perf_counter()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            m.bytes_read += len(msg.data)
            if m.bytes_read > m.byte_limit:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "response_too_large",
                                   f"session exceeded {m.byte_limit} bytes")
            if session.feed(_decode(msg.data)) == stage:
                return now
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise classify_close(ws.close_code if msg.type != aiohttp.WSMsgType.CLOSE else msg.data,
                                 str(msg.extra or ""))
        elif msg.type == aiohttp.WSMsgType.ERROR:
            exc = msg.data
            if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "frame_too_large", str(exc))
            raise classify_close(1006, f"{type(exc).__name__}: {exc}")


def _decode(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event",
                           f"malformed JSON event: {str(data)[:60]}") from None


async def _send(ws: aiohttp.ClientWebSocketResponse, session: RealtimeSession, m: Measurement,
                events: list[dict]) -> None:
    """Send events; if the server closed meanwhile, report what it said before closing."""
    try:
        for event in events:
            await ws.send_str(json.dumps(event))
    except (ConnectionError, RuntimeError):
        # Frames the server sent before closing are still queued: read them for the reason.
        await _until(ws, session, m, "never")
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "abnormal_close", "closed while sending") from None
