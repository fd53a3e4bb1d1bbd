"""The Gemini Live API (``BidiGenerateContent`` over WebSocket) on the simulator (PROTOCOLS.md §6.3).

Routes, ``GET`` with a WebSocket upgrade, for each version ``v1`` (the
google-genai default), ``v1beta`` and ``v1alpha``:
``/ws/google.ai.generativelanguage.<version>.GenerativeService.BidiGenerateContent``.
A GET without an upgrade gets a Google-shaped 400.

The key comes from ``x-goog-api-key`` or ``?key=``. The model is only named in
the first client message (``setup``), after the upgrade, so a refused key is
answered per the ``auth_failure_style`` of the scenario's ``default`` block
(``http_401`` when there is none): ``http_401`` refuses the upgrade the way
Google's REST front end refuses the key (400 ``API_KEY_INVALID``; 403
``PERMISSION_DENIED`` for a missing key); ``close_only`` upgrades, reads
``setup`` and closes 1008 "API key not valid. Please pass a valid API key.";
``error_then_close`` sends that REST error body as a frame first.

After the upgrade: the first message must be ``setup`` (else close 1007); an
unknown model closes 1008 "Requested entity was not found."; unknown ``setup``
fields close 1007 the way Google words it. Keys are accepted in camelCase and
snake_case at every level. ``setupComplete`` (with ``sessionId`` = the request
id) comes ``ttfb_ms`` after the upgrade request. A turn ends with
``clientContent.turnComplete``, ``realtimeInput.text``, ``realtimeInput.activityEnd``
(automatic activity detection disabled) or ``realtimeInput.audioStreamEnd``
(enabled); there is no voice-activity detector. Its output starts ``ttft_ms``
(± ``jitter_ms``) after that: ``TEXT`` sends ``tokens`` ``modelTurn`` text parts
(capped by ``maxOutputTokens``) every ``inter_token_ms``; ``AUDIO`` (the default
modality) sends ``audio_ms`` of PCM16 24 kHz in ``audio_chunk_ms`` ``inlineData``
chunks paced in real time, with ``outputTranscription`` pieces interleaved when
``outputAudioTranscription`` was set up. Then ``generationComplete``, then
``turnComplete`` with ``usageMetadata`` in the same message. A new turn during
an answer interrupts it (``interrupted: true``).

Errors (``error``/``errors``/``outages``) close the socket where
``setupComplete`` was due, with the code and reason in ``CLOSES``;
``content_blocked`` instead ends every turn with ``turnCompleteReason``
``PROHIBITED_INPUT_CONTENT`` and no output, ``finish_reason: content_filter``
with ``RESPONSE_REJECTED`` after the output. Faults: ``close_code`` /
``close_reason`` / ``close_after_events``, ``drop_after_deltas``,
``session_max_s`` (close 1011 "Deadline expired ...", or 1000 after a goAway),
``goaway_after_s`` and ``binary_frames`` (see ``scenario``).

One request-log entry per session: ``status`` 101 (or the refusal status),
``injected_ttft_s`` and ``actual_ttft_s`` from the upgrade request to the first
output of the asked modality (audio, not transcript), ``actual_duration_s`` to
the first ``turnComplete`` (or to the end of a session without one); ``turns``
one entry per user turn (see ``app``). The t-th user turn waits
``turn_ttft_ms`` longer per turn past ``turn_ttft_after``, and the turn faults
(``close_code`` at the first output, ``drop_after_deltas``, ``content_blocked``)
start at ``faults_from_turn``. The conversation grows each turn's
``promptTokenCount``: its text and the audio heard and said so far.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from modelwatch.logs import fields

from .common import LoggedExchange, SessionEnd, close_session, sleep_until, to_json
from .gemini import BAD_KEY, NO_KEY, thinking_problem
from .content import SAMPLE_RATE, audio_chunk_b64, content_piece, text_tokens
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["CLOSES", "VERSIONS", "register"]

log = logging.getLogger("modelwatch.sim")

VERSIONS = ("v1", "v1beta", "v1alpha")
PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"
MAX_FRAME_BYTES = 16 * 2**20
CLOSE_TIMEOUT_S = 2.0
OUTPUT_MIME = f"audio/pcm;rate={SAMPLE_RATE}"
AUDIO_TOKENS_PER_S = 32  # Gemini's rate for audio in and out [DOC: token counting guide]
GOAWAY_NOTICE_S = 10.0  # timeLeft of a goAway when no session_max_s says otherwise
DEADLINE_REASON = "Deadline expired before operation could complete."
INVALID = "Request contains an invalid argument."

# Close code and reason per error kind; bad_gateway drops the TCP connection instead (no close frame).
CLOSES: dict[str, tuple[int, str]] = {
    "auth_error": (1008, BAD_KEY),
    "quota_exhausted": (1011, "You exceeded your current quota, please check your plan and billing details."),
    "rate_limited": (1011, "Resource has been exhausted (e.g. check quota)."),
    "overloaded": (1011, "The service is currently unavailable."),
    "capacity_exceeded": (1011, "The model is overloaded. Please try again later."),
    "server_error": (1011, "Internal error occurred."),
    "gateway_timeout": (1011, DEADLINE_REASON),
    "model_unavailable": (1008, "Requested entity was not found."),
    "bad_request": (1007, INVALID),
}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED"}
# LiveClientSetup's fields (google-genai types.py), camelCase.
SETUP_FIELDS = frozenset({"model", "generationConfig", "systemInstruction", "tools", "realtimeInputConfig",
                          "sessionResumption", "contextWindowCompression", "inputAudioTranscription",
                          "outputAudioTranscription", "proactivity", "explicitVadSignal", "historyConfig",
                          "avatarConfig", "safetySettings", "labels"})


def camel(key: str) -> str:
    """``turn_complete`` -> ``turnComplete`` (camelCase names pass unchanged)."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)


def camelize(value: Any) -> Any:
    """A client message with every object key in camelCase, so both spellings read the same."""
    if isinstance(value, dict):
        return {camel(str(k)): camelize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camelize(v) for v in value]
    return value


def google_error(status: int, message: str, reason: str | None = None) -> web.Response:
    """A Google RPC error response, pretty-printed as Google's front end writes it (§6.2)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    if reason is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
        ]
    return web.Response(status=status, text=json.dumps({"error": error}, indent=2) + "\n",
                        content_type="application/json", charset="UTF-8")


def duration_text(seconds: float) -> str:
    """A protobuf JSON Duration: ``10s`` or ``0.150s``."""
    seconds = max(0.0, seconds)
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}s"


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame can carry."""
    return text.encode()[:123].decode(errors="ignore")


def register(app: web.Application, state: SimState) -> None:
    """Add the Live API WebSocket routes to the simulator app."""
    endpoint = LiveEndpoint(state)
    for version in VERSIONS:
        app.router.add_get(PATH.format(version=version), endpoint.handle)


class _SessionOver(Exception):
    """Raised inside a session task once the session is ending; unwinds that task quietly."""


@dataclass
class _Connection(LoggedExchange):
    """One upgrade request, from arrival to the end of its session."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    api_key: str = ""
    key_refused: str | None = None  # the auth_failure_style a refused key is answered with
    answering: bool = False  # a turn is being answered: a client leaving now is a disconnect


class LiveEndpoint:
    """The upgrade handler: the upgrade itself and the key, then a session."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Run one upgrade request; client disconnects end it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        conn = _Connection(request, record, draws, t0_perf, t0_loop)
        try:
            return await self._answer(conn)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the TCP connection goes, even after a clean close.
            record.client_disconnected = record.client_disconnected or conn.answering
            raise
        except ConnectionError:
            record.client_disconnected = True
            return web.Response(status=499)
        finally:
            conn.finish()

    async def _answer(self, conn: _Connection) -> web.StreamResponse:
        """Check the upgrade and the key, then run the session."""
        request = conn.request
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False, timeout=CLOSE_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            return self._reject(conn, "bad_request", google_error(
                400, "Request must be a WebSocket upgrade (Upgrade: websocket)."))
        key = (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip()
        conn.api_key = key
        if not key or not self.state.scenario.accepts_key(key):
            default = self.state.scenario.default
            conn.key_refused = default.auth_failure_style if default is not None else "http_401"
            if conn.key_refused == "http_401":
                refusal = google_error(400, BAD_KEY, "API_KEY_INVALID") if key else google_error(403, NO_KEY)
                return self._reject(conn, "auth_error", refusal)
        await ws.prepare(request)
        conn.record.status = 101
        await _Session(self.state, conn, ws).run()
        return ws

    def _reject(self, conn: _Connection, outcome: str, response: web.Response) -> web.Response:
        """Log a refused upgrade and hand the refusal back."""
        conn.record.outcome = outcome
        conn.finish(response.status)
        return response


@dataclass
class _Turn:
    """One answer being generated: its plan and progress."""

    first_at: float
    audio: bool
    prompt_text_tokens: int
    prompt_audio_ms: float
    faulty: bool = True  # the turn faults apply (its number >= faults_from_turn)
    received_perf: float = 0.0  # perf_counter when the user's turn ended, the origin of its times
    log: dict[str, Any] = field(default_factory=dict)  # this turn's entry in record.turns
    pieces: int = 0
    audio_ms_sent: float = 0.0


class _Session:
    """One upgraded connection: setup, turns, faults and the way it ends."""

    def __init__(self, state: SimState, conn: _Connection, ws: web.WebSocketResponse) -> None:
        self.state, self.conn, self.ws = state, conn, ws
        self.b = ModelBehaviour()  # until setup names the model
        self.setup: dict[str, Any] = {}
        self.audio_out = True
        self.vad = True
        self.content_blocked = False
        self.context_text_tokens = 0
        self.context_audio_ms = 0.0  # audio of the conversation so far, both ways
        self.events_sent = self.faulty_deltas_sent = self.turns = 0
        self.turn_task: asyncio.Task | None = None
        self.ending = False
        self.ended: asyncio.Future[SessionEnd] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until the client leaves or something ends it, then close."""
        self.tasks.append(asyncio.create_task(self._guard(self._conversation())))
        try:
            await asyncio.wait([self.tasks[0], self.ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = self.tasks + ([self.turn_task] if self.turn_task is not None else [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._close_turn_log()
        await close_session(self.ws, self.conn, self.ended.result() if self.ended.done() else SessionEnd())

    def _close_turn_log(self) -> None:
        """Turns the session ended during get its ending as their outcome (``unfinished`` if it had none)."""
        ending = self.conn.record.outcome
        for entry in self.conn.record.turns or ():
            if entry["outcome"] is None:
                entry["outcome"] = ending if ending not in (None, "ok", "content_blocked") else "unfinished"

    async def _conversation(self) -> None:
        """Setup and its answer, then client messages until the client leaves."""
        if await self._open():
            await self._read_loop()

    async def _guard(self, work: Any) -> None:
        """Run one session task; ending, client disconnects and simulator bugs end it cleanly."""
        try:
            await work
        except _SessionOver:
            pass
        except ConnectionError:
            self.conn.record.client_disconnected |= self.conn.answering
            self.end(SessionEnd(), None)
        except Exception:
            # A simulator bug must cost one session, not the server.
            log.exception("simulator live session failed", extra=fields(path=self.conn.request.path))
            self.end(SessionEnd(1011, "simulator error"), None)

    def end(self, how: SessionEnd, outcome: str | None) -> None:
        """Mark the session as ending; the first caller decides how it ends."""
        self.ending = True
        if not self.ended.done():
            if outcome is not None:
                self.conn.record.outcome = outcome
            self.ended.set_result(how)

    def refuse(self, code: int, reason: str, outcome: str) -> None:
        """End the session with a close frame and stop the calling task."""
        self.end(SessionEnd(code, close_reason(reason)), outcome)
        raise _SessionOver

    async def _lifetime(self) -> None:
        """``goaway_after_s`` and ``session_max_s``: announce the end, then keep the word."""
        b, t0 = self.b, self.conn.t0_loop
        if b.goaway_after_s is None:
            await sleep_until(t0 + b.session_max_s)
            self.refuse(1011, DEADLINE_REASON, "session_expired")
        time_left = (b.session_max_s or b.goaway_after_s + GOAWAY_NOTICE_S) - b.goaway_after_s
        await sleep_until(t0 + b.goaway_after_s)
        await self.send({"goAway": {"timeLeft": duration_text(time_left)}})
        await sleep_until(t0 + b.goaway_after_s + time_left)
        self.refuse(1000, "", "go_away")

    # ------------------------------------------------------------ sending

    async def send(self, message: dict[str, Any]) -> None:
        """Send one server message; stop the caller once the session is ending or closes here."""
        if self.ending:
            raise _SessionOver
        if self.b.binary_frames:
            await self.ws.send_bytes((json.dumps(message, indent=2, ensure_ascii=False) + "\n").encode())
        else:
            await self.ws.send_str(to_json(message))
        self.events_sent += 1
        if self.b.close_after_events is not None and self.events_sent >= self.b.close_after_events:
            self.refuse(self.b.close_code, self.b.close_reason, "close")

    # ------------------------------------------------------------ setup

    async def _open(self) -> bool:
        """Read and check ``setup``; answer ``setupComplete`` at ttfb, or close. True if the session is on."""
        message = await self._receive()
        if message is None:
            return False
        if self.conn.key_refused is not None:
            await self._refuse_key()
        behaviour = self._read_setup(message)
        kind = self.state.injected_error(self.conn.record.model, behaviour, self.conn.draws.error_roll)
        self.content_blocked = kind == "content_blocked"
        self.conn.record.outcome = kind or "ok"
        self.conn.record.turns = []
        if behaviour.session_max_s is not None or behaviour.goaway_after_s is not None:
            self.tasks.append(asyncio.create_task(self._guard(self._lifetime())))
        if behaviour.close_after_events == 0:
            self.refuse(behaviour.close_code, behaviour.close_reason, "close")
        await sleep_until(self.conn.t0_loop + behaviour.ttfb_ms / 1000)
        if kind == "bad_gateway":  # a broken front end: the connection just goes
            self.end(SessionEnd(drop=True), kind)
            raise _SessionOver
        if kind is not None and kind != "content_blocked":
            self.refuse(*CLOSES[kind], kind)
        await self.send({"setupComplete": {"sessionId": self.conn.record.request_id}})
        return True

    def _read_setup(self, message: dict[str, Any]) -> ModelBehaviour:
        """Check the first message, find the model's behaviour and read the session settings."""
        if list(message) != ["setup"] or not isinstance(message["setup"], dict):
            self.refuse(1007, INVALID, "bad_request")
        unknown = [k for k in message["setup"] if camel(k) not in SETUP_FIELDS]
        if unknown:
            self.refuse(1007, f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'setup': "
                              "Cannot find field.", "bad_request")
        self.setup = camelize(message["setup"])
        model = str(self.setup.get("model") or "").removeprefix("models/")
        self.conn.record.model = model or None
        behaviour = self.state.scenario.behaviour_for(model) if model else None
        if behaviour is None:
            self.refuse(*CLOSES["model_unavailable"], "model_unavailable")
        self.b = behaviour
        self.conn.record.log_options(self.setup)
        generation = self.setup.get("generationConfig") or {}
        problem = thinking_problem(generation.get("thinkingConfig"))
        if problem:
            self.refuse(1007, problem, "bad_request")
        modalities = [str(m).upper() for m in generation.get("responseModalities") or ["AUDIO"]]
        if len(modalities) != 1 or modalities[0] not in ("TEXT", "AUDIO"):
            self.refuse(1007, INVALID, "bad_request")
        self.audio_out = modalities == ["AUDIO"]
        detection = (self.setup.get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
        self.vad = detection.get("disabled") is not True
        self.context_text_tokens = text_tokens(_text_of(self.setup.get("systemInstruction")))
        return behaviour

    async def _refuse_key(self) -> None:
        """Close a session whose key was refused (the close styles), once it has sent ``setup``."""
        if self.conn.key_refused == "error_then_close":
            status, message = (400, BAD_KEY) if self.conn.api_key else (403, NO_KEY)
            body = json.loads(google_error(status, message, "API_KEY_INVALID" if self.conn.api_key else None).text)
            await self.send(body)
        self.refuse(1008, BAD_KEY if self.conn.api_key else NO_KEY, "auth_error")

    # ------------------------------------------------------------ reading

    async def _receive(self) -> dict[str, Any] | None:
        """The next client message as a JSON object; None once the client has gone."""
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.conn.record.client_disconnected |= self.conn.answering
                return None
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                break  # pings and pongs are aiohttp's business
        try:
            message = json.loads(msg.data)
        except ValueError:
            self.refuse(1007, "Invalid JSON payload received. Unexpected token.", "bad_request")
        if not isinstance(message, dict):
            self.refuse(1007, INVALID, "bad_request")
        return message

    async def _read_loop(self) -> None:
        """Answer client messages in order until the client leaves."""
        while (message := await self._receive()) is not None:
            if len(message) != 1:
                self.refuse(1007, INVALID, "bad_request")
            (key, body), = message.items()
            handler = {"clientContent": self._client_content, "realtimeInput": self._realtime_input,
                       "toolResponse": None, "contextUpdate": None}.get(camel(key), False)
            if handler is False:  # a second setup, or a name the API does not have
                reason = INVALID if camel(key) == "setup" else (
                    f"Invalid JSON payload received. Unknown name \"{key}\": Cannot find field.")
                self.refuse(1007, reason, "bad_request")
            if handler is not None and isinstance(body, dict):
                await handler(camelize(body))

    async def _client_content(self, content: dict[str, Any]) -> None:
        """Add the turns to the context; answer when ``turnComplete``."""
        for turn in content.get("turns") or ():
            self.context_text_tokens += text_tokens(_text_of(turn))
        if content.get("turnComplete") is True:
            await self._start_turn()

    async def _realtime_input(self, realtime: dict[str, Any]) -> None:
        """Count audio, and answer at the end of the user's activity or audio stream."""
        blobs = [realtime["audio"]] if isinstance(realtime.get("audio"), dict) else []
        blobs += [b for b in realtime.get("mediaChunks") or () if isinstance(b, dict)]
        for blob in blobs:
            self.context_audio_ms += _audio_ms(blob, self)
        if ("activityStart" in realtime or "activityEnd" in realtime) and self.vad:
            # Explicit activity marks need automatic activity detection off (setup.realtimeInputConfig).
            self.refuse(1007, INVALID, "bad_request")
        if isinstance(realtime.get("text"), str):
            self.context_text_tokens += text_tokens(realtime["text"])
            await self._start_turn()
        elif "activityEnd" in realtime or (realtime.get("audioStreamEnd") is True and self.vad):
            await self._start_turn()

    # ------------------------------------------------------------ answering

    async def _start_turn(self) -> None:
        """Plan an answer from now; a new turn interrupts one still being answered."""
        received, received_perf = asyncio.get_running_loop().time(), time.perf_counter()
        if self.turn_task is not None and not self.turn_task.done():
            self.turn_task.cancel()
            await asyncio.gather(self.turn_task, return_exceptions=True)
            await self.send({"serverContent": {"interrupted": True}})
        b = self.b
        roll = self.conn.draws.jitter_roll if self.turns == 0 else self.state.rng.random()
        self.turns += 1
        delay_s = (max(0.0, b.ttft_ms + (2 * roll - 1) * b.jitter_ms) + b.turn_growth_ms(self.turns)) / 1000
        turn = _Turn(received + delay_s, self.audio_out, self.context_text_tokens, self.context_audio_ms,
                     faulty=b.faulty_turn(self.turns), received_perf=received_perf)
        turn.log = {"turn": self.turns, "injected_ttft_s": delay_s, "actual_ttft_s": None, "outcome": None}
        self.conn.record.turns.append(turn.log)
        if self.turns == 1:
            self.conn.record.injected_ttft_s = turn.first_at - self.conn.t0_loop
        self.conn.answering = True
        self.turn_task = asyncio.create_task(self._guard(self._answer(turn)))

    async def _answer(self, turn: _Turn) -> None:
        """Send one answer from its first output to ``turnComplete``."""
        try:
            await sleep_until(turn.first_at)
        except asyncio.CancelledError:
            turn.log["outcome"] = "interrupted"
            raise
        b = self.b
        if b.close_code is not None and b.close_after_events is None and turn.faulty:
            turn.log["outcome"] = "close"
            self.refuse(b.close_code, b.close_reason, "close")
        reason = None
        if self.content_blocked and turn.faulty:
            reason = "PROHIBITED_INPUT_CONTENT"
        else:
            try:
                await self._output(turn)
            except asyncio.CancelledError:
                turn.log["outcome"] = "interrupted"
                raise
            await self.send({"serverContent": {"generationComplete": True}})
            reason = "RESPONSE_REJECTED" if b.finish_reason == "content_filter" else None
        done: dict[str, Any] = {"turnComplete": True} | ({"turnCompleteReason": reason} if reason else {})
        await self.send({"serverContent": done, "usageMetadata": self._usage(turn)})
        turn.log["outcome"] = "ok" if reason is None else "content_blocked"
        # The answer joins the conversation: the next turn's prompt counts it.
        self.context_text_tokens += turn.pieces
        self.context_audio_ms += turn.audio_ms_sent
        self.conn.answering = False
        if self.conn.record.actual_duration_s is None:
            self.conn.record.actual_duration_s = self.conn.elapsed_s()

    def _schedule(self, turn: _Turn) -> list[tuple[float, int, int]]:
        """(deadline, kind, index) of every output: 0 audio, 1 text or transcript; audio first on a tie."""
        b = self.b
        gap = b.inter_token_ms / 1000
        pieces = b.tokens
        cap = (self.setup.get("generationConfig") or {}).get("maxOutputTokens")
        if not turn.audio and isinstance(cap, int) and cap > 0:
            pieces = min(pieces, cap)
        if turn.audio and "outputAudioTranscription" not in self.setup:
            pieces = 0
        schedule = [(turn.first_at + i * gap, 1, i) for i in range(pieces)]
        if turn.audio:
            chunks = math.ceil(b.audio_ms / b.audio_chunk_ms)
            schedule += [(turn.first_at + k * b.audio_chunk_ms / 1000, 0, k) for k in range(chunks)]
        return sorted(schedule)

    async def _output(self, turn: _Turn) -> None:
        """Send the output parts at their deadlines; ``drop_after_deltas`` may cut the connection."""
        drop = self.b.drop_after_deltas if turn.faulty else None
        for at, kind, index in self._schedule(turn):
            await sleep_until(at)
            if drop is not None and self.faulty_deltas_sent >= drop:
                turn.log["outcome"] = "disconnect"
                self.end(SessionEnd(drop=True), "disconnect")
                raise _SessionOver
            if kind == 0:
                data = audio_chunk_b64(index, self.b.audio_chunk_ms, self.b.audio_ms)
                part = {"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}
                await self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
                turn.audio_ms_sent = min(self.b.audio_ms, (index + 1) * self.b.audio_chunk_ms)
            elif turn.audio:
                await self.send({"serverContent": {"outputTranscription": {"text": content_piece(index)}}})
            else:
                await self.send({"serverContent": {"modelTurn": {"parts": [{"text": content_piece(index)}]}}})
                turn.pieces += 1
            self.faulty_deltas_sent += turn.faulty
            if kind == 0 or not turn.audio:
                if turn.log["actual_ttft_s"] is None:
                    turn.log["actual_ttft_s"] = time.perf_counter() - turn.received_perf
                if self.conn.record.actual_ttft_s is None:
                    self.conn.record.actual_ttft_s = self.conn.elapsed_s()

    def _usage(self, turn: _Turn) -> dict[str, Any]:
        """Live ``usageMetadata``: the context in, the answer out, details summing to their parents."""
        audio_in = math.ceil(turn.prompt_audio_ms * AUDIO_TOKENS_PER_S / 1000)
        audio_out = math.ceil(turn.audio_ms_sent * AUDIO_TOKENS_PER_S / 1000)
        prompt = turn.prompt_text_tokens + audio_in
        response = audio_out if turn.audio else turn.pieces
        prompt_details = [{"modality": "TEXT", "tokenCount": turn.prompt_text_tokens}]
        if audio_in:
            prompt_details.append({"modality": "AUDIO", "tokenCount": audio_in})
        usage: dict[str, Any] = {"promptTokenCount": prompt, "responseTokenCount": response,
                                 "totalTokenCount": prompt + response, "promptTokensDetails": prompt_details}
        if response:
            usage["responseTokensDetails"] = [{"modality": "AUDIO" if turn.audio else "TEXT",
                                               "tokenCount": response}]
        return usage


def _text_of(content: Any) -> str:
    """The text of a Content (``{"parts": [{"text": ...}]}``) or a plain string."""
    if isinstance(content, str):
        return content
    parts = content.get("parts") if isinstance(content, dict) else None
    return "".join(p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str))


def _audio_ms(blob: dict[str, Any], session: _Session) -> float:
    """Milliseconds of PCM16 audio in a Blob (rate from its mimeType, 16 kHz if unnamed); 0 for other media."""
    mime = str(blob.get("mimeType") or "")
    if not mime.startswith("audio/pcm"):
        return 0.0
    try:
        size = len(base64.b64decode(str(blob.get("data") or ""), validate=True))
    except (binascii.Error, ValueError):
        session.refuse(1007, "Invalid value at 'realtime_input.audio.data' (TYPE_BYTES), Base64 decoding failed.",
                       "bad_request")
    rate = re.search(r"rate=(\d+)", mime)
    return size / 2 / (int(rate.group(1)) if rate else 16000) * 1000
