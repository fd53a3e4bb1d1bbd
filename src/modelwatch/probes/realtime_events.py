"""OpenAI Realtime's events, sans I/O: what a session sends and how its answers are read.

The same events travel over a WebSocket (:mod:`modelwatch.probes.openai_realtime`)
and over a WebRTC data channel (:mod:`modelwatch.probes.openai_webrtc`): the
session configuration, the user's turn, the error taxonomy of error events and
close codes, and :class:`RealtimeSession`, the decoder both transports feed
one server event at a time. Tested with captured frames.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.audio import prompt_audio
from modelwatch.probes.openai_family import classify_openai_error
from modelwatch.probes.parsing import as_int
from modelwatch.probes.spec import INTERRUPT_MAX_TOKENS

INSTRUCTIONS = "Reply with one word."
BYTES_PER_MS = 48  # output audio: PCM16 at 24 kHz
# Barge-in needs an answer long enough to interrupt, whatever the spoken prompt asked; the cancel
# stops it (and its billing) early, the cap bounds it if the cancel is ignored.
INTERRUPT_INSTRUCTIONS = "Whatever the user says, count slowly from one to fifty."
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
