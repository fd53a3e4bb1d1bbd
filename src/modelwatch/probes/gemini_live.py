"""Gemini Live API probe (``BidiGenerateContent`` over WebSocket).

One short, staged session, each stage with its budget and its name in
``error_code`` if it times out::

    connect   TCP/TLS + WebSocket upgrade (key in x-goog-api-key)  -> connect_s
    session   setup -> setupComplete                                -> ttfb_s
    ttft      the user turn -> first non-thought text part, or first
              audio/pcm inlineData with ``modality: audio``          -> ttft_s
    total     serverContent.turnComplete                            -> duration_s, tokens
    close     clean close handshake (best effort, off the clock)

The audio turn is marked explicitly: automatic activity detection is turned off
in ``setup`` and the bundled prompt is sent between ``activityStart`` and
``activityEnd``, so the server answers at ``activityEnd`` instead of whenever its
voice-activity detector decides the speaker fell silent. That keeps VAD tuning
(``silenceDurationMs``) out of the measured time to first audio.

Live reports failures mostly by closing the socket; :func:`classify_live_close`
maps close code and reason to an outcome. Server frames may be text or binary,
compact or pretty-printed, with camelCase or snake_case keys. :class:`LiveSession`
decodes them without I/O, so it is tested with captured frames.
"""

from __future__ import annotations

import base64
import json
import re
from functools import cache
from typing import Any

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.audio import DEFAULT_VOICE, prompt_audio
from modelwatch.probes.base import Measurement
from modelwatch.probes.google_family import classify_google_error, google_auth, thinking_config
from modelwatch.probes.parsing import as_int
from modelwatch.probes.spec import ProbeSpec, realtime_tokens
from modelwatch.probes.websocket import Stage, run_session

INSTRUCTIONS = "Reply with one word."
DEFAULT_VERSION = "v1beta"
AUDIO_MIME = "audio/pcm;rate=24000"
AUDIO_CHUNK_BYTES = 12_000  # 250 ms of the 24 kHz PCM16 prompt per realtimeInput frame
STAGES = ("session", "ttft", "total")

_VERSION = re.compile(r"^v\d+(?:alpha|beta)?\d*$")
# LiveServerMessage's fields (google-genai types.py); a frame with none of them is an error or news.
SERVER_KEYS = frozenset({"setupComplete", "serverContent", "toolCall", "toolCallCancellation", "usageMetadata",
                         "goAway", "sessionResumptionUpdate", "voiceActivityDetectionSignal", "voiceActivity"})
_BLOCKED_REASONS = frozenset({"RESPONSE_REJECTED", "PROHIBITED_INPUT_CONTENT", "BLOCKLIST"})
_BLOCKED_PREFIXES = ("INPUT_", "GENERATED_", "OUTPUT_", "IMAGE_", "UNSAFE_")
_AUTH_WORDS = ("api key", "leaked", "permission", "unauthenticated", "unauthorized", "credential")


@cache
def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def field_of(obj: Any, key: str) -> Any:
    """``obj[key]`` under its camelCase or snake_case spelling (protobuf JSON takes both)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    return obj.get(_snake(key)) if value is None else value


def live_endpoint(job: ProbeJob) -> tuple[str, dict[str, str]]:
    """The WebSocket URL and upgrade headers: the version from ``base_url``, the key in a header."""
    scheme, _, rest = job.provider.base_url.partition("://")
    host, _, path = rest.partition("/")
    segments = [s for s in path.split("/") if s]
    version = segments.pop() if segments and _VERSION.match(segments[-1]) else DEFAULT_VERSION
    prefix = "".join(f"/{s}" for s in segments)  # a proxy's path prefix stays
    url = (f"{'wss' if scheme == 'https' else 'ws'}://{host}{prefix}/ws/"
           f"google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent")
    return url, {"User-Agent": "modelwatch", **job.provider.headers, **google_auth(job)}


def setup_message(job: ProbeJob) -> dict:
    """The ``setup`` message: model, modality, output cap and a one-word instruction."""
    p = job.probe
    audio = p.modality == "audio"
    generation: dict[str, Any] = {"responseModalities": ["AUDIO" if audio else "TEXT"],
                                  "maxOutputTokens": p.max_tokens}
    thinking = thinking_config(p)
    if thinking:
        generation["thinkingConfig"] = thinking
    if audio and p.voice != DEFAULT_VOICE:
        # The default voice is OpenAI's ("alloy"), not a Gemini voice: only a chosen one is sent.
        generation["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": p.voice}}}
    model = job.model if "/" in job.model else f"models/{job.model}"  # as the REST probe: tunedModels/x stays
    setup: dict[str, Any] = {"model": model, "generationConfig": generation,
                             "systemInstruction": {"parts": [{"text": INSTRUCTIONS}], "role": "user"}}
    if audio:
        setup["outputAudioTranscription"] = {}
        setup["realtimeInputConfig"] = {"automaticActivityDetection": {"disabled": True}}
    return {"setup": setup}


def user_turn(job: ProbeJob) -> list[dict]:
    """The messages of the user's turn: the text prompt, or the spoken prompt between activity marks."""
    if job.probe.modality != "audio":
        turn = {"turns": [{"role": "user", "parts": [{"text": job.probe.prompt}]}], "turnComplete": True}
        return [{"clientContent": turn}]
    pcm = prompt_audio()
    chunks = [{"realtimeInput": {"audio": {"data": base64.b64encode(pcm[i:i + AUDIO_CHUNK_BYTES]).decode("ascii"),
                                           "mimeType": AUDIO_MIME}}}
              for i in range(0, len(pcm), AUDIO_CHUNK_BYTES)]
    return [{"realtimeInput": {"activityStart": {}}}, *chunks, {"realtimeInput": {"activityEnd": {}}}]


def classify_live_close(code: int | None, reason: str, after_go_away: bool = False) -> ProbeFailure:
    """The failure a close before ``turnComplete`` means, from its code and reason text."""
    code = code or 1006
    failure = _close_failure(code, reason.lower(), f"connection closed ({code}) {reason}".strip())
    if after_go_away and failure.error_code in ("closed_early", "abnormal_close", "deadline_expired", "close_1001"):
        # The server announced the end (connection or session limit) and kept its word.
        return ProbeFailure(Outcome.PROTOCOL_ERROR, "go_away", f"closed after goAway: {failure.message}")
    return failure


def _close_failure(code: int, text: str, message: str) -> ProbeFailure:
    name = f"close_{code}"
    if code == 1007:
        return ProbeFailure(Outcome.BAD_REQUEST, name, message)
    if code == 1008:
        if any(word in text for word in _AUTH_WORDS):
            return ProbeFailure(Outcome.AUTH_ERROR, name, message)
        if "not found" in text or "not supported" in text:
            return ProbeFailure(Outcome.MODEL_UNAVAILABLE, name, message)
        return ProbeFailure(Outcome.AUTH_ERROR, name, message)
    if code == 1011:
        if "deadline expired" in text:
            return ProbeFailure(Outcome.SERVER_ERROR, "deadline_expired", message)
        if "resource has been exhausted" in text:  # Google's RESOURCE_EXHAUSTED wording for rate limits
            return ProbeFailure(Outcome.RATE_LIMITED, name, message)
        if "quota" in text:
            return ProbeFailure(Outcome.QUOTA_EXHAUSTED, name, message)
        if "unavailable" in text or "overloaded" in text:
            return ProbeFailure(Outcome.OVERLOADED, name, message)
        return ProbeFailure(Outcome.SERVER_ERROR, name, message)
    if code == 1000:
        return ProbeFailure(Outcome.PROTOCOL_ERROR, "closed_early", message)
    if code == 1006:
        return ProbeFailure(Outcome.PROTOCOL_ERROR, "abnormal_close", message)
    if code == 1013:
        return ProbeFailure(Outcome.OVERLOADED, name, message)
    outcome = Outcome.SERVER_ERROR if code in (1001, 1012, 1014) else Outcome.PROTOCOL_ERROR
    return ProbeFailure(outcome, name, message)


def classify_error_frame(body: Any) -> ProbeFailure | None:
    """The failure an error-like frame means (a Google RPC error, or a close code and message); else None."""
    outer = body[0] if isinstance(body, list) and body else body
    inner = outer.get("error", outer) if isinstance(outer, dict) else None
    if isinstance(inner, str) and inner:  # {"error": "text"}
        return ProbeFailure(*classify_google_error(None, body))
    if not isinstance(inner, dict) or not inner.keys() & {"code", "message", "status"}:
        return None
    code = inner.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and 1000 <= code <= 4999:
        return classify_live_close(code, str(inner.get("message") or ""))
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    return ProbeFailure(*classify_google_error(status, body))


def decode_frame(data: str | bytes) -> Any:
    """A server frame's JSON (text or binary frame, compact or pretty-printed)."""
    try:
        return json.loads(data)
    except ValueError:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event",
                           f"malformed JSON frame: {data[:60]!r}") from None


class LiveSession:
    """What a Live session said so far; :meth:`feed` one decoded server message at a time."""

    __slots__ = ("modality", "setup_done", "output", "finished", "go_away", "usage", "session_id")
    decode = staticmethod(decode_frame)

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.setup_done = self.output = self.finished = self.go_away = False
        self.usage: dict = {}
        self.session_id: str | None = None

    def next_turn(self) -> None:
        """Forget the last turn: a conversation's next turn starts."""
        self.output = self.finished = False
        self.usage = {}

    def feed(self, message: Any) -> str | None:
        """Consume one message; return the furthest stage it reaches, if any.

        Stages: ``session`` (setupComplete), ``ttft`` (first output of the asked
        modality), ``total`` (turnComplete; implies ``ttft``). Raises
        :class:`ProbeFailure` for errors, blocked turns and turns without output.
        """
        if not isinstance(message, dict) or not {k for k in SERVER_KEYS if field_of(message, k) is not None}:
            failure = classify_error_frame(message)
            if failure is not None:
                raise failure
            if not isinstance(message, dict):
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event", "frame is not a JSON object")
            return None  # a message kind newer than this probe: not our business
        usage = field_of(message, "usageMetadata")
        if isinstance(usage, dict):  # before turnComplete or with it: the latest counts win
            self.usage |= {k: v for k, v in usage.items() if v is not None}
        if field_of(message, "goAway") is not None:
            self.go_away = True
        stage = None
        setup = field_of(message, "setupComplete")
        if setup is not None and not self.setup_done:
            self.setup_done = True
            session_id = field_of(setup, "sessionId")
            self.session_id = session_id if isinstance(session_id, str) and session_id else None
            stage = "session"
        content = field_of(message, "serverContent")
        return (self._content(content) if isinstance(content, dict) else None) or stage

    def _content(self, content: dict) -> str | None:
        stage = None
        for part in field_of(field_of(content, "modelTurn"), "parts") or ():
            if not self.output and self._is_output(part):
                self.output = True
                stage = "ttft"
        if field_of(content, "turnComplete") is not True:
            return stage
        self.finished = True
        reason = str(field_of(content, "turnCompleteReason") or "").removesuffix("TURN_COMPLETE_REASON_UNSPECIFIED")
        if reason in _BLOCKED_REASONS or reason.startswith(_BLOCKED_PREFIXES) or "PROHIBITED" in reason:
            raise ProbeFailure(Outcome.CONTENT_BLOCKED, reason.lower(), f"turn ended {reason}")
        if not self.output:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, reason.lower() or "no_content",
                               f"turn complete ({reason or 'no reason'}) without {self.modality} output")
        return "total"

    def _is_output(self, part: Any) -> bool:
        if not isinstance(part, dict):
            return False
        if self.modality == "audio":
            blob = field_of(part, "inlineData")
            mime = str(field_of(blob, "mimeType") or "")
            return mime.startswith("audio/pcm") and bool(field_of(blob, "data"))
        text = field_of(part, "text")
        return isinstance(text, str) and bool(text) and field_of(part, "thought") is not True

    def tokens(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(input, output, input audio, output audio) tokens from ``usageMetadata``."""
        u = self.usage
        output = as_int(field_of(u, "responseTokenCount"))
        if output is None:
            output = as_int(field_of(u, "candidatesTokenCount"))
        thoughts = as_int(field_of(u, "thoughtsTokenCount"))
        if output is not None and thoughts:  # billed as output, as on the REST API
            output += thoughts
        out_details = field_of(u, "responseTokensDetails") or field_of(u, "candidatesTokensDetails")
        return (as_int(field_of(u, "promptTokenCount")), output,
                _audio(field_of(u, "promptTokensDetails")), _audio(out_details))


    def passes(self, reached: str, stage: str) -> bool:
        """A later stage completes the earlier ones (turnComplete implies the first output)."""
        return stage in STAGES and STAGES.index(reached) >= STAGES.index(stage)

    def close_failure(self, code: int | None, reason: str) -> ProbeFailure:
        """What a close before turnComplete means (a close after goAway is the announced end)."""
        return classify_live_close(code, reason, self.go_away)

    def request_id(self, from_headers: str | None) -> str | None:
        """The session id, else a proxy's ``x-request-id``."""
        return self.session_id or from_headers


def _audio(details: Any) -> int | None:
    """The AUDIO entry of a per-modality token list, if the list is there."""
    if not isinstance(details, list):
        return None
    return sum(as_int(field_of(d, "tokenCount")) or 0 for d in details if field_of(d, "modality") == "AUDIO")


def setup(job: ProbeJob) -> list[dict]:
    """What the session stage sends: the ``setup`` message."""
    return [setup_message(job)]


# The setup goes first; a one-message answer brings turnComplete with its first output.
SESSION_STAGES = (Stage("session", send=setup, stamp="ttfb_s"), Stage("ttft", send=user_turn, stamp="ttft_s"),
                  Stage("total", stamp="duration_s"))


async def probe_gemini_live(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One staged Live session, timed stage by stage."""
    await run_session(job, http, m, live_endpoint(job), classify_google_error, LiveSession(job.probe.modality),
                      SESSION_STAGES)


SPEC = ProbeSpec("realtime", ("gemini",), probe_gemini_live, classify_google_error, realtime_tokens(32),
                 "Live API WebSocket session (BidiGenerateContent), text or audio", transport="websocket")
