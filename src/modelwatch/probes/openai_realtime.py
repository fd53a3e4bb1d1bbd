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
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.audio import prompt_audio
from modelwatch.probes.base import Measurement
from modelwatch.probes.openai_family import FAMILY, classify_openai_error, openai_auth
from modelwatch.probes.parsing import as_int
from modelwatch.probes.spec import INTERRUPT_MAX_TOKENS, DetailSeries, ProbeSpec, realtime_tokens
from modelwatch.probes.websocket import Stage, read_until, run_session, send_messages

INSTRUCTIONS = "Reply with one word."
BYTES_PER_MS = 48  # output audio: PCM16 at 24 kHz
# Barge-in needs an answer long enough to interrupt, whatever the spoken prompt asked; the cancel
# stops it (and its billing) early, the cap bounds it if the cancel is ignored.
INTERRUPT_INSTRUCTIONS = "Whatever the user says, count slowly from one to fifty."
QUIET_S = 0.3  # after the cancel's acknowledgement, how long the probe listens for audio that should not come
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
    headers.update(openai_auth(job))
    if job.probe.interface == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return url, headers


def session_update(job: ProbeJob) -> dict:
    """The ``session.update`` event in the shape the interface expects."""
    p = job.probe
    audio = p.modality == "audio"
    instructions, cap = INSTRUCTIONS, p.max_tokens
    if p.interrupt_after is not None:
        instructions, cap = INTERRUPT_INSTRUCTIONS, max(p.max_tokens, INTERRUPT_MAX_TOKENS)
    if p.interface == "beta":
        session: dict[str, Any] = {"modalities": ["audio", "text"] if audio else ["text"],
                                   "instructions": instructions,
                                   "max_response_output_tokens": cap,
                                   "turn_detection": None}
        if audio:
            session |= {"voice": p.voice, "input_audio_format": "pcm16", "output_audio_format": "pcm16"}
        return {"type": "session.update", "session": session}
    session = {"type": "realtime", "output_modalities": ["audio"] if audio else ["text"],
               "instructions": instructions, "max_output_tokens": cap}
    if audio:
        pcm = {"type": "audio/pcm", "rate": 24000}
        session["audio"] = {"input": {"format": pcm, "turn_detection": None},
                            "output": {"format": pcm, "voice": p.voice}}
    return {"type": "session.update", "session": session}


def configure(job: ProbeJob) -> list[dict]:
    """What the configure stage sends: the ``session.update``."""
    return [session_update(job)]


@cache
def _prompt_b64() -> str:
    return base64.b64encode(prompt_audio()).decode("ascii")


def user_turn(job: ProbeJob) -> list[dict]:
    """The events that ask for one response: the user's message (text or audio), then
    ``response.create``."""
    if job.probe.modality == "audio":
        audio = _prompt_b64()
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


def _decode(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event",
                           f"malformed JSON event: {str(data)[:60]}") from None


class RealtimeSession:
    """What a realtime session said so far; :meth:`feed` one decoded server event at a time."""

    __slots__ = ("modality", "created", "updated", "output", "usage", "session_id", "cancelling", "cancelled",
                 "audio_bytes", "item_id")

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.created = self.updated = self.output = False
        self.usage: dict = {}
        self.session_id: str | None = None
        self.cancelling = self.cancelled = False  # barge-in: response.cancel sent / acknowledged
        self.audio_bytes = 0  # audio of the current response so far (what a player would have heard)
        self.item_id: str | None = None  # the current response's output item

    def next_turn(self) -> None:
        """Forget the last response: a conversation's next turn starts."""
        self.output = self.cancelling = self.cancelled = False
        self.usage = {}
        self.audio_bytes = 0
        self.item_id = None

    decode = staticmethod(_decode)

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
            if self.item_id is None and isinstance(event.get("item_id"), str):
                self.item_id = event["item_id"]
            return self._delta(kind, event.get("delta"))
        if kind == "response.done":
            return self._response_done(event.get("response"))
        return None

    def _delta(self, kind: str, delta: Any) -> str | None:
        if not isinstance(delta, str) or not delta:
            return None
        if kind in AUDIO_DELTAS:
            if self.cancelled:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "audio_after_cancel",
                                   "audio kept coming after the server acknowledged response.cancel")
            self.audio_bytes += len(delta) * 3 // 4  # base64: counted, not decoded
        if self.output:
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
        if self.cancelling:
            if status == "cancelled":
                self.cancelled = True
                return "cancelled"
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "cancel_ignored",
                               f"response.cancel was sent, yet the response ended {status or 'done'}")
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
            return as_int(obj.get(key)) if isinstance(obj, dict) else None
        return (n(u, "input_tokens"), n(u, "output_tokens"),
                n(u.get("input_token_details"), "audio_tokens"),
                n(u.get("output_token_details"), "audio_tokens"))

    def passes(self, reached: str, stage: str) -> bool:
        """Each stage is its own event: only that event completes it."""
        return reached == stage

    def close_failure(self, code: int | None, reason: str) -> ProbeFailure:
        """What an unexpected close means (no error event said more)."""
        return classify_close(code, reason)

    def request_id(self, from_headers: str | None) -> str | None:
        """The upgrade's request id header, else the session id."""
        return from_headers or self.session_id


# connect is the upgrade itself; each later stage waits for the event that completes it.
STAGES = (Stage("session", stamp="ttfb_s"), Stage("configure", send=configure),
          Stage("ttft", send=user_turn, stamp="ttft_s"), Stage("response", stamp="duration_s"))


BARGE_IN_STAGES = STAGES[:3]  # the answer's first audio; then barge_in instead of its end


async def probe_openai_realtime(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One staged realtime session, timed stage by stage (with ``interrupt_after``: interrupted)."""
    session = RealtimeSession(job.probe.modality)
    if job.probe.interrupt_after is None:
        await run_session(job, http, m, realtime_endpoint(job), classify_openai_error, session, STAGES)
        return
    await run_session(job, http, m, realtime_endpoint(job), classify_openai_error, session, BARGE_IN_STAGES,
                      then=lambda ws: barge_in(job, ws, session, m))


async def barge_in(job: ProbeJob, ws: aiohttp.ClientWebSocketResponse, session: RealtimeSession,
                   m: Measurement) -> None:
    """Interrupt the answer ``interrupt_after`` past its first audio, as a user talking over it would.

    Sends ``response.cancel`` and truncates the item to the audio heard so far;
    ``interrupt_s`` is cancel sent -> ``response.done`` (cancelled). Audio that
    still comes in the next ``QUIET_S`` fails the probe (``audio_after_cancel``).
    """
    m.enter("interrupt")
    at = m.start + m.ttft_s + job.probe.interrupt_after
    reached, _ = await read_until(ws, session, m, "response", until=at)
    if reached is not None:
        raise ProbeFailure(Outcome.BAD_REQUEST, "interrupt_after_too_long",
                           f"the answer ended {time.perf_counter() - m.start - m.ttft_s:.3f}s after its first audio, "
                           f"before interrupt_after ({job.probe.interrupt_after:g}s): nothing left to interrupt")
    heard_ms = min(round(job.probe.interrupt_after * 1000), session.audio_bytes // BYTES_PER_MS)
    session.cancelling = True
    cancel = [{"type": "response.cancel"}]
    if session.item_id is not None:
        cancel.append({"type": "conversation.item.truncate", "item_id": session.item_id, "content_index": 0,
                       "audio_end_ms": heard_ms})
    sent = time.perf_counter()
    await send_messages(ws, session, m, cancel)
    _, acked = await read_until(ws, session, m, "cancelled")
    m.interrupt_s = acked - sent
    m.duration_s = acked - m.start
    m.finishing(QUIET_S + 0.5)  # measured: the quiet window may outlast the probe's budget
    await read_until(ws, session, m, "never", until=acked + QUIET_S)  # audio past the ack raises


def _details(job: ProbeJob) -> DetailSeries:
    return DetailSeries(interrupt=job.probe.interrupt_after is not None)


SPEC = ProbeSpec("realtime", FAMILY, probe_openai_realtime, classify_openai_error, realtime_tokens(),
                 "Realtime WebSocket session (GA or beta events), text or audio; barge-in with interrupt_after",
                 transport="websocket", details=_details, options={"interrupt_after": FAMILY})
