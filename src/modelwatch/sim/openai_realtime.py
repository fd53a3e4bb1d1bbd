"""OpenAI Realtime over WebSocket on the simulator (PROTOCOLS.md §2).

Routes, all ``GET`` with a WebSocket upgrade (a plain GET gets a JSON 426):
``/v1/realtime?model=M`` (OpenAI), ``/openai/v1/realtime?model=DEPLOYMENT``
(Azure GA) and ``/openai/realtime?api-version=V&deployment=DEPLOYMENT`` (Azure
dated form, as the SDK's ``AzureOpenAI`` builds it).

Before the upgrade, like the chat endpoint: the key (``Authorization: Bearer``
or the ``openai-insecure-api-key.<k>`` subprotocol; Azure routes also the
``api-key`` header or query parameter), the model (404 ``model_not_found``)
and the injected handshake errors (``error``/``errors``/``outages``: the chat
``ERRORS`` status and body). A refused key is answered per the model's
``auth_failure_style``.

After the upgrade the session speaks GA or beta shapes (the ``OpenAI-Beta:
realtime=v1`` header decides, modulated by ``realtime_mode``): ``session.created``
at ``ttfb_ms``; ``session.update``, ``conversation.item.create``,
``input_audio_buffer.append/commit/clear``, ``response.create`` and
``response.cancel`` are answered; anything else gets an ``error`` event and the
session goes on. A response streams its text deltas, or its audio deltas
(PCM16 24 kHz, a quiet tone, real-time paced) interleaved with transcript
deltas, from ``ttft_ms`` after its ``response.create``; every wait is an
absolute deadline. Faults (``fail_response_with``, ``error_event``,
``close_code``, ``drop_after_deltas``, ``ignore_client_after``,
``session_max_s``) are described in ``scenario``.

One request-log entry per session: ``status`` 101 (or the refusal status),
``injected_ttft_s`` and ``actual_ttft_s`` from the upgrade request to the first
output delta of the session, ``actual_duration_s`` to its first
``response.done`` (or to the end of a session without one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .common import LoggedExchange, base62, reset_connection, sleep_until, to_json
from .openai_chat import (
    ERRORS,
    MISSING_AUTH,
    RATE_LIMIT_REQUESTS,
    RATE_LIMIT_TOKENS,
    content_piece,
    error_response,
    mask_api_key,
    openai_headers,
    plain_error,
)
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["REALTIME_ERRORS", "RealtimeErrorSpec", "register"]

log = logging.getLogger("modelwatch.sim")

MAX_FRAME_BYTES = 16 * 2**20  # the API takes up to 15 MiB of audio per append
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's close frame
SAMPLE_RATE = 24_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes a millisecond
MIN_COMMIT_BYTES = 100 * BYTES_PER_MS
# Rough token rates of audio [MEM]: input ~10 tokens a second, output ~20.
INPUT_AUDIO_MS_PER_TOKEN = 100
OUTPUT_AUDIO_MS_PER_TOKEN = 50
PCM = {"type": "audio/pcm", "rate": SAMPLE_RATE}
INSTRUCTIONS = "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI."
TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
                  "create_response": True, "interrupt_response": True}
BETA_RETIRED_REASON = "invalid_request_error.beta_api_shape_disabled"
AUTH_CLOSE_REASON = "invalid_request_error.invalid_api_key"

# Fields a session.update may carry, from the SDK's param types (GA and beta).
GA_SESSION_KEYS = frozenset({"type", "audio", "include", "instructions", "max_output_tokens", "model",
                             "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice",
                             "tools", "tracing", "truncation"})
BETA_SESSION_KEYS = frozenset({"client_secret", "input_audio_format", "input_audio_noise_reduction",
                               "input_audio_transcription", "instructions", "max_response_output_tokens",
                               "modalities", "model", "output_audio_format", "speed", "temperature", "tool_choice",
                               "tools", "tracing", "turn_detection", "voice"})
CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
                 "conversation.item.truncate", "conversation.item.delete", "response.create", "response.cancel",
                 "output_audio_buffer.clear")

# (GA name, beta name) of the events whose names changed at GA (§2.6).
EVENT_NAMES = {
    "text.delta": ("response.output_text.delta", "response.text.delta"),
    "text.done": ("response.output_text.done", "response.text.done"),
    "audio.delta": ("response.output_audio.delta", "response.audio.delta"),
    "audio.done": ("response.output_audio.done", "response.audio.done"),
    "transcript.delta": ("response.output_audio_transcript.delta", "response.audio_transcript.delta"),
    "transcript.done": ("response.output_audio_transcript.done", "response.audio_transcript.done"),
}

# A quiet 400 Hz tone: exactly 60 samples a period at 24 kHz, so one period tiles seamlessly.
_TONE_PERIOD = 60
_TONE = b"".join(struct.pack("<h", round(1000 * math.sin(2 * math.pi * i / _TONE_PERIOD)))
                 for i in range(_TONE_PERIOD))


@dataclass(frozen=True)
class RealtimeErrorSpec:
    """An ``error`` object's type and message; the message may use {model}, {key}, {minutes}."""

    type: str
    message: str


REALTIME_ERRORS: dict[str, RealtimeErrorSpec] = {
    "invalid_api_key": RealtimeErrorSpec("invalid_request_error", ERRORS["auth_error"].message),
    "beta_api_shape_disabled": RealtimeErrorSpec(
        "invalid_request_error",
        "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."),
    "session_expired": RealtimeErrorSpec(
        "invalid_request_error", "Your session hit the maximum duration of {minutes} minutes."),
    "server_error": RealtimeErrorSpec("server_error", ERRORS["server_error"].message),
    "model_not_found": RealtimeErrorSpec("invalid_request_error", ERRORS["model_unavailable"].message),
    "insufficient_quota": RealtimeErrorSpec("insufficient_quota", ERRORS["quota_exhausted"].message),
    "rate_limit_exceeded": RealtimeErrorSpec(
        "requests",
        "Rate limit reached for {model} in organization org-modelwatchsim on requests per min (RPM): Limit 1000, "
        "Used 1000, Requested 1. Please try again in 60ms. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."),
}


def error_object(code: str, message: str | None = None, *, param: str | None = None,
                 event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """The ``error`` payload for ``code``; codes outside the table get a generic message."""
    spec = REALTIME_ERRORS.get(code) or RealtimeErrorSpec(
        "invalid_request_error", f"The request failed with error code '{code}'.")
    text = message or spec.message.format_map(_Placeholders(fields))
    return {"type": spec.type, "code": code, "message": text, "param": param, "event_id": event_id}


class _Placeholders(dict):
    """format_map helper: a placeholder nobody filled in stays as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def session_expired_minutes(seconds: float) -> str:
    """The duration in the session_expired message: ``15`` or ``0.005``."""
    return f"{seconds / 60:g}"


def pcm_tone(offset_samples: int, samples: int) -> bytes:
    """``samples`` of the tone starting at ``offset_samples``, phase-continuous across chunks."""
    start = (offset_samples % _TONE_PERIOD) * 2
    repeats = (start + 2 * samples) // len(_TONE) + 1
    return (_TONE * repeats)[start:start + 2 * samples]


def text_tokens(text: str) -> int:
    """Rough token count: about four characters a token."""
    return math.ceil(len(text) / 4)


def register(app: web.Application, state: SimState) -> None:
    """Add the Realtime WebSocket routes to the simulator app."""
    endpoint = RealtimeEndpoint(state)
    app.router.add_get("/v1/realtime", endpoint.openai)
    app.router.add_get("/openai/v1/realtime", endpoint.azure_v1)
    app.router.add_get("/openai/realtime", endpoint.azure_dated)


class _SessionOver(Exception):
    """Raised inside a session task once the session is ending; unwinds that task quietly."""


class _ClientError(Exception):
    """A client event the server refuses with an ``error`` event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class _Connection(LoggedExchange):
    """One upgrade request, from arrival to the end of its session."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    azure: bool
    api_key: str = ""
    model: str = ""
    idle: bool = False  # session open, no response running: a client leaving now is no disconnect



class RealtimeEndpoint:
    """The upgrade handlers: auth, model and handshake faults, then a session."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def openai(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/realtime?model=M``."""
        return await self._handle(request, azure=False, model_param="model")

    async def azure_v1(self, request: web.Request) -> web.StreamResponse:
        """``GET /openai/v1/realtime?model=DEPLOYMENT`` (Azure GA)."""
        return await self._handle(request, azure=True, model_param="model")

    async def azure_dated(self, request: web.Request) -> web.StreamResponse:
        """``GET /openai/realtime?api-version=V&deployment=DEPLOYMENT`` (Azure, SDK form)."""
        if not request.query.get("api-version"):
            return await self._handle(request, azure=True, model_param="deployment", missing="api-version")
        return await self._handle(request, azure=True, model_param="deployment")

    async def _handle(self, request: web.Request, *, azure: bool, model_param: str,
                      missing: str | None = None) -> web.StreamResponse:
        """Run one upgrade request; client disconnects end it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        conn = _Connection(request, record, draws, t0_perf, t0_loop, azure)
        conn.model = request.query.get(model_param, "")
        record.model = conn.model or None
        try:
            return await self._answer(conn, model_param, missing)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the TCP connection goes, even after a clean close.
            record.client_disconnected = record.client_disconnected or not conn.idle
            raise
        except ConnectionError:
            record.client_disconnected = True
            return web.Response(status=499)
        finally:
            conn.finish()

    async def _answer(self, conn: _Connection, model_param: str, missing: str | None) -> web.StreamResponse:
        """Check upgrade, key, parameters, model and injected errors; then run the session."""
        request = conn.request
        ws = web.WebSocketResponse(protocols=_echoed_subprotocol(request), max_msg_size=MAX_FRAME_BYTES,
                                   compress=False, timeout=CLOSE_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            return self._reject(conn, "bad_request", _not_websocket(request))
        conn.api_key = _api_key(request, conn.azure)
        behaviour = self.state.scenario.behaviour_for(conn.model) if conn.model else None
        if not conn.api_key or not self.state.scenario.accepts_key(conn.api_key):
            return await self._refuse_key(conn, ws, behaviour)
        for name in (missing, None if conn.model else model_param):
            if name is not None:
                message = f"Missing required parameter: '{name}'."
                return self._reject(conn, "bad_request", plain_error(
                    400, message, code="missing_required_parameter", param=name))
        if behaviour is None:
            return self._reject(conn, "model_unavailable", error_response(
                "model_unavailable", "openai", model=conn.model, api_key=conn.api_key))
        kind = behaviour.injected_error(self.state.uptime_s(), conn.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(conn.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(conn, kind, error_response(
                kind, behaviour.error_shape, model=conn.model, api_key=conn.api_key))
        conn.record.outcome = kind or "ok"
        await self._upgrade(conn, ws)
        await _Session(self.state, conn, ws, behaviour, _wants_beta(request)).run()
        return ws

    async def _upgrade(self, conn: _Connection, ws: web.WebSocketResponse) -> None:
        """Send the 101 with OpenAI's request id header."""
        ws.headers["x-request-id"] = conn.record.request_id
        await ws.prepare(conn.request)
        conn.record.status = 101

    async def _refuse_key(self, conn: _Connection, ws: web.WebSocketResponse,
                          behaviour: ModelBehaviour | None) -> web.StreamResponse:
        """Answer a missing or refused key in the model's ``auth_failure_style``."""
        style = behaviour.auth_failure_style if behaviour is not None else "http_401"
        if style == "http_401":
            if not conn.api_key:
                return self._reject(conn, "auth_error", plain_error(401, MISSING_AUTH))
            return self._reject(conn, "auth_error", error_response(
                "auth_error", "openai", model=conn.model, api_key=conn.api_key))
        conn.record.outcome = "auth_error"
        await self._upgrade(conn, ws)
        await sleep_until(conn.t0_loop + behaviour.ttfb_ms / 1000)
        try:
            if style == "close_only":
                await ws.close(code=1000)
                return ws
            message = None if conn.api_key else MISSING_AUTH
            error = error_object("invalid_api_key", message, key=mask_api_key(conn.api_key))
            event = {"type": "error", "event_id": "event_" + base62(conn.draws.id_bits)[:21], "error": error}
            await ws.send_str(to_json(event))
            await ws.close(code=1008, message=AUTH_CLOSE_REASON.encode())
        except ConnectionError:
            conn.record.client_disconnected = True
        return ws

    def _reject(self, conn: _Connection, outcome: str, response: web.Response) -> web.Response:
        """Add OpenAI's headers to a refusal, log it and hand it back."""
        conn.record.outcome = outcome
        response.headers.update(openai_headers(conn.record.request_id, conn.elapsed_s(), self.state.uptime_s(),
                                               outcome))
        conn.finish(response.status)
        return response


def _not_websocket(request: web.Request) -> web.Response:
    """A JSON error for a GET that is not a valid WebSocket upgrade."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return plain_error(426, "This endpoint requires a WebSocket upgrade (Upgrade: websocket).",
                           headers={"Upgrade": "websocket"})
    return plain_error(400, "Invalid WebSocket upgrade request.")


def _api_key(request: web.Request, azure: bool) -> str:
    """The key from the headers, the Azure query parameter or the browser subprotocol; "" if none."""
    if azure:
        key = request.headers.get("api-key") or request.query.get("api-key")
        if key and key.strip():
            return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if not azure:
        for protocol in _subprotocols(request):
            if protocol.startswith("openai-insecure-api-key."):
                return protocol.removeprefix("openai-insecure-api-key.")
    return ""


def _subprotocols(request: web.Request) -> list[str]:
    """The offered ``Sec-WebSocket-Protocol`` values."""
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _echoed_subprotocol(request: web.Request) -> tuple[str, ...]:
    """The subprotocol to answer with: ``realtime`` if offered, else the first non-key offer.

    Always picking one of the offers also keeps aiohttp from logging the offered
    list, which may hold the client's key, as a "no overlap" warning.
    """
    offered = _subprotocols(request)
    if not offered or "realtime" in offered:
        return ("realtime",)
    plain = [p for p in offered if not p.startswith("openai-insecure-api-key.")]
    return ((plain or offered)[0],)


def _wants_beta(request: web.Request) -> bool:
    """Whether the client asked for the beta interface (header or browser subprotocol)."""
    header = request.headers.get("OpenAI-Beta", "")
    return "realtime=v1" in header.replace(" ", "").split(",") or "openai-beta.realtime-v1" in _subprotocols(request)


@dataclass
class _Response:
    """One response being generated: its ids, plan and progress."""

    id: str
    item_id: str
    audio: bool
    count: int
    first_at: float
    status: str = "completed"
    reason: str | None = None
    pieces: list[str] = field(default_factory=list)
    audio_ms_sent: float = 0.0
    task: asyncio.Task | None = None


@dataclass(frozen=True)
class _End:
    """How a session ends: a close frame (code, reason), a TCP reset, or nothing (client gone)."""

    code: int | None = None
    reason: str = ""
    drop: bool = False


class _Session:
    """One upgraded connection: its config, conversation, active response and faults."""

    def __init__(self, state: SimState, conn: _Connection, ws: web.WebSocketResponse,
                 behaviour: ModelBehaviour, beta_requested: bool) -> None:
        self.state, self.conn, self.ws, self.b = state, conn, ws, behaviour
        mode = behaviour.realtime_mode
        self.retired = mode == "beta_retired" and beta_requested
        self.beta = mode == "beta" or (mode == "ga" and beta_requested)
        self.content_blocked = conn.record.outcome == "content_blocked"
        # OpenAI's limits: 60 minutes for GA sessions, 30 for beta ones (§2.13).
        self.max_session_s = behaviour.session_max_s or (1800 if self.beta else 3600)
        self.rng = random.Random(conn.draws.id_bits)  # ids: reproducible, and apart from the shared RNG
        self.config = self._initial_config()
        self.conversation_id = self.new_id("conv")
        self.items: list[str] = []
        self.context_text_tokens = text_tokens(INSTRUCTIONS)
        self.context_audio_tokens = 0
        self.buffer_bytes = 0
        self.events_sent = self.frames_received = self.deltas_sent = self.responses = 0
        self.active: _Response | None = None
        self.ending = False
        self.ended: asyncio.Future[_End] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Open the session, read client frames until something ends it, then close."""
        tasks: list[asyncio.Task] = []
        try:
            await self._guard(self._open())
            if not self.ended.done():
                tasks.append(asyncio.create_task(self._guard(self._read_loop())))
                if self.b.session_max_s is not None:
                    tasks.append(asyncio.create_task(self._guard(self._expire())))
                await asyncio.wait([tasks[0], self.ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self.active is not None and self.active.task is not None:
                tasks.append(self.active.task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close(self.ended.result() if self.ended.done() else _End())

    async def _open(self) -> None:
        """``session.created`` (and beta's ``conversation.created``) at ttfb, or the retirement error."""
        if self.b.close_after_events == 0:
            self.end(_End(self.b.close_code, self.b.close_reason), "close")
            return
        await sleep_until(self.conn.t0_loop + self.b.ttfb_ms / 1000)
        if self.retired:
            await self.finish(_End(4000, BETA_RETIRED_REASON), "beta_retired", "beta_api_shape_disabled")
            return
        await self.send({"type": "session.created", "session": self.config})
        if self.beta:
            conversation = {"id": self.conversation_id, "object": "realtime.conversation"}
            await self.send({"type": "conversation.created", "conversation": conversation})
        self.conn.idle = True

    async def _expire(self) -> None:
        """End the session with ``session_expired`` once ``session_max_s`` has passed."""
        await sleep_until(self.conn.t0_loop + self.b.session_max_s)
        await self.finish(_End(1000), "session_expired", "session_expired")

    async def _guard(self, work: Any) -> None:
        """Run one session task; ending, client disconnects and simulator bugs end it cleanly."""
        try:
            await work
        except _SessionOver:
            pass
        except ConnectionError:
            self.conn.record.client_disconnected = True
            self.end(_End(), None)
        except Exception:
            # A simulator bug must cost one session, not the server.
            log.exception("simulator realtime session failed on %s", self.conn.request.path)
            self.end(_End(1011, "simulator error"), None)

    def end(self, how: _End, outcome: str | None) -> None:
        """Mark the session as ending; the first caller decides how it ends."""
        self.ending = True
        if outcome is not None and not self.ended.done():
            self.conn.record.outcome = outcome
        if not self.ended.done():
            self.ended.set_result(how)

    async def finish(self, how: _End, outcome: str, code: str | None = None) -> None:
        """Send a last ``error`` event (if ``code``), then end the session; raises _SessionOver."""
        if self.ending:
            raise _SessionOver
        self.ending = True
        if code is not None:
            await self.send({"type": "error", "error": error_object(code, **self._message_fields())}, last=True)
        self.end(how, outcome)
        raise _SessionOver

    async def _close(self, how: _End) -> None:
        """Close the socket as decided: close frame, TCP reset, or nothing left to do."""
        if how.drop:
            reset_connection(self.conn.request.transport)
            return
        if self.ws.closed:
            return
        try:
            await self.ws.close(code=how.code or 1000, message=how.reason.encode())
        except ConnectionError:
            self.conn.record.client_disconnected = True

    # ------------------------------------------------------------ sending

    def new_id(self, prefix: str) -> str:
        """An OpenAI-looking id such as ``event_C9G5RJeJ2gF77mV7f2B1j``."""
        return f"{prefix}_{base62(self.rng.getrandbits(124))}"

    async def send(self, event: dict[str, Any], *, last: bool = False) -> None:
        """Send one server event; stop the caller once the session is ending or closes here."""
        if self.ending and not last:
            raise _SessionOver
        payload = {"type": event["type"], "event_id": self.new_id("event"), **event}
        await self.ws.send_str(to_json(payload))
        self.events_sent += 1
        limit = self.b.close_after_events
        if limit is not None and self.events_sent >= limit and not last:
            self.end(_End(self.b.close_code, self.b.close_reason), "close")
            raise _SessionOver

    async def send_error(self, code: str, message: str | None = None, *, param: str | None = None,
                         event_id: str | None = None) -> None:
        """Send an ``error`` event; the session goes on."""
        error = error_object(code, message, param=param, event_id=event_id, **self._message_fields())
        await self.send({"type": "error", "error": error})

    def _message_fields(self) -> dict[str, str]:
        """What the ``REALTIME_ERRORS`` messages may mention."""
        return {"model": self.conn.model, "key": mask_api_key(self.conn.api_key),
                "minutes": session_expired_minutes(self.max_session_s)}

    def name(self, kind: str) -> str:
        """The event name for ``kind`` in this session's shape (beta, or GA with legacy names)."""
        ga, beta = EVENT_NAMES[kind]
        return beta if self.beta or self.b.legacy_event_names else ga

    def default_close_due(self) -> bool:
        """Whether ``close_code`` closes at the first delta (no other trigger configured)."""
        b = self.b
        return b.close_code is not None and b.close_after_events is None and b.ignore_client_after is None

    # ------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        """Answer client frames in order until the client closes or ``ignore_client_after``."""
        limit = self.b.ignore_client_after
        while limit is None or self.frames_received < limit:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if self.active is not None:
                    self.conn.record.client_disconnected = True
                return
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue  # pings and pongs are aiohttp's business
            self.frames_received += 1
            await self._on_frame(msg.data if msg.type is WSMsgType.TEXT else None)
        await self.finish(_End(self.b.close_code or 1011, self.b.close_reason), "ignore_client", self.b.error_event)

    async def _on_frame(self, data: str | None) -> None:
        """Decode one client frame and dispatch it; refusals become ``error`` events."""
        try:
            event = json.loads(data) if data is not None else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            await self.send_error("invalid_event", "The event is not a valid JSON object.")
            return
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            await self._dispatch(event)
        except _ClientError as exc:
            await self.send_error(exc.code, exc.message, param=exc.param, event_id=client_event_id)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        """Route a client event to its handler."""
        kind = event.get("type")
        if not isinstance(kind, str) or not kind:
            raise _ClientError("invalid_event", "The 'type' field is missing.", "type")
        handler = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "input_audio_buffer.append": self._buffer_append,
            "input_audio_buffer.commit": self._buffer_commit,
            "input_audio_buffer.clear": self._buffer_clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }.get(kind)
        if handler is None:
            if kind in CLIENT_EVENTS:
                raise _ClientError("invalid_event", f"The simulator does not implement '{kind}'.", "type")
            supported = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
            raise _ClientError("invalid_event", f"Invalid value: '{kind}'. Supported values are: {supported}.",
                               "type")
        await handler(event)

    # ------------------------------------------------------------ session config

    def _initial_config(self) -> dict[str, Any]:
        """The session object of ``session.created`` in this session's shape (§2.4)."""
        expires_at = int(time.time() + self.max_session_s)
        common = {"id": self.new_id("sess"), "object": "realtime.session", "model": self.conn.model,
                  "expires_at": expires_at, "instructions": INSTRUCTIONS, "tools": [], "tool_choice": "auto",
                  "tracing": None}
        if self.beta:
            return {**common, "modalities": ["text", "audio"], "voice": "alloy", "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16", "input_audio_transcription": None,
                    "input_audio_noise_reduction": None, "turn_detection": dict(TURN_DETECTION),
                    "temperature": 0.8, "max_response_output_tokens": "inf", "speed": 1.0}
        audio = {"input": {"format": dict(PCM), "transcription": None, "noise_reduction": None,
                           "turn_detection": {**TURN_DETECTION, "idle_timeout_ms": None}},
                 "output": {"format": dict(PCM), "voice": "marin", "speed": 1.0}}
        return {"type": "realtime", **common, "output_modalities": ["audio"], "audio": audio,
                "max_output_tokens": "inf", "truncation": "auto", "prompt": None, "include": None}

    async def _session_update(self, event: dict[str, Any]) -> None:
        """Validate a ``session.update`` for this shape, merge it and answer ``session.updated``."""
        session = event.get("session")
        if not isinstance(session, dict):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        allowed = BETA_SESSION_KEYS if self.beta else GA_SESSION_KEYS
        if not self.beta and "type" not in session:
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                               "session.type")
        for key in session:
            if key not in allowed:
                raise _ClientError("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")
        if not self.beta and session["type"] != "realtime":
            raise _ClientError("invalid_value", f"Invalid value: '{session['type']}'. This session's type is "
                               "'realtime' and cannot be changed.", "session.type")
        self._check_modalities(session)
        update = {key: value for key, value in session.items() if key != "model"}  # model cannot change
        self.config = _merge(self.config, update)
        await self.send({"type": "session.updated", "session": self.config})

    def _check_modalities(self, session: dict[str, Any]) -> None:
        """GA takes ["text"] or ["audio"] (not both); beta any non-empty mix of the two."""
        key = "modalities" if self.beta else "output_modalities"
        value = session.get(key)
        if value is None:
            return
        valid = [["text"], ["audio"]] if not self.beta else [["text"], ["audio"], ["text", "audio"],
                                                              ["audio", "text"]]
        if value not in valid:
            raise _ClientError("invalid_value", f"Invalid value for 'session.{key}': {to_json(value)}.",
                               f"session.{key}")

    def _audio_out(self, overrides: dict[str, Any]) -> bool:
        """Whether a response speaks: its own modality override, else the session's."""
        key = "modalities" if self.beta else "output_modalities"
        modalities = overrides.get(key, self.config.get(key))
        return isinstance(modalities, list) and "audio" in modalities

    def _token_cap(self, overrides: dict[str, Any]) -> int | None:
        """The response's max output tokens (override, else session); None for "inf"."""
        key = "max_response_output_tokens" if self.beta else "max_output_tokens"
        cap = overrides.get(key, self.config.get(key))
        return cap if isinstance(cap, int) and not isinstance(cap, bool) else None

    # ------------------------------------------------------------ conversation and audio input

    async def _item_create(self, event: dict[str, Any]) -> None:
        """Add a client item to the conversation and announce it."""
        item = event.get("item")
        if not isinstance(item, dict):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        if not isinstance(item.get("type"), str):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'item.type'.",
                               "item.type")
        item = {"id": item.get("id") or self.new_id("item"), "object": "realtime.item", "status": "completed",
                **{k: v for k, v in item.items() if k != "id"}}
        self.context_text_tokens += 4 + sum(text_tokens(str(part.get("text") or part.get("transcript") or ""))
                                            for part in item.get("content") or [] if isinstance(part, dict))
        await self._add_item(item)

    async def _add_item(self, item: dict[str, Any]) -> None:
        """``conversation.item.added`` + ``.done`` (GA) or ``conversation.item.created`` (beta)."""
        previous = self.items[-1] if self.items else None
        self.items.append(item["id"])
        if self.beta:
            await self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": item})
            return
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def _buffer_append(self, event: dict[str, Any]) -> None:
        """Count appended audio bytes; no reply."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            self.buffer_bytes += len(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError):
            raise _ClientError("invalid_value", "Invalid 'audio': expected base64-encoded audio.",
                               "audio") from None

    async def _buffer_commit(self, event: dict[str, Any]) -> None:
        """Turn the buffer into a user item, or refuse less than 100 ms of audio."""
        if self.buffer_bytes < MIN_COMMIT_BYTES:
            ms = self.buffer_bytes / BYTES_PER_MS
            raise _ClientError("input_audio_buffer_commit_empty",
                               "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                               f"of audio, but buffer only has {ms:.2f}ms of audio.")
        item_id = self.new_id("item")
        previous = self.items[-1] if self.items else None
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        self.context_audio_tokens += math.ceil(self.buffer_bytes / BYTES_PER_MS / INPUT_AUDIO_MS_PER_TOKEN)
        self.buffer_bytes = 0
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(item)

    async def _buffer_clear(self, event: dict[str, Any]) -> None:
        """Drop the buffered audio."""
        self.buffer_bytes = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    # ------------------------------------------------------------ responses

    async def _response_create(self, event: dict[str, Any]) -> None:
        """Start a response (or the configured failure) unless one is active."""
        received = asyncio.get_running_loop().time()
        if self.active is not None:
            raise _ClientError("conversation_already_has_active_response",
                               f"Conversation already has an active response in progress: {self.active.id}. "
                               "Wait until the response is finished before creating a new one.")
        if self.b.error_event is not None:
            if self.default_close_due():
                await self.finish(_End(self.b.close_code, self.b.close_reason), "error_event", self.b.error_event)
            self.conn.record.outcome = "error_event"
            await self.send_error(self.b.error_event)
            return
        overrides = event.get("response") if isinstance(event.get("response"), dict) else {}
        response = self._plan(overrides, received)
        self.active = response
        self.conn.idle = False
        response.task = asyncio.create_task(self._guard(self._stream(response)))

    def _plan(self, overrides: dict[str, Any], received: float) -> _Response:
        """Decide a response's modality, delta count, final status and first-delta deadline."""
        b = self.b
        roll = self.conn.draws.jitter_roll if self.responses == 0 else self.state.rng.random()
        delay_s = max(0.0, b.ttft_ms + (2 * roll - 1) * b.jitter_ms) / 1000
        response = _Response(self.new_id("resp"), self.new_id("item"), self._audio_out(overrides), b.tokens,
                             received + delay_s)
        cap = self._token_cap(overrides)
        if self.content_blocked:
            response.count, response.status, response.reason = 0, "incomplete", "content_filter"
        elif cap is not None and cap < b.tokens:
            response.count, response.status, response.reason = cap, "incomplete", "max_output_tokens"
        elif b.finish_reason != "stop":
            response.status = "incomplete"
            response.reason = "max_output_tokens" if b.finish_reason == "length" else "content_filter"
        if self.responses == 0:
            self.conn.record.injected_ttft_s = response.first_at - self.conn.t0_loop
        self.responses += 1
        return response

    async def _stream(self, response: _Response) -> None:
        """Send one response from ``response.created`` to ``rate_limits.updated``."""
        try:
            failure = self.b.fail_response_with
            await self.send({"type": "response.created",
                             "response": self._response_object(response, "in_progress", None, [], None)})
            if failure is None:
                await self._open_output(response)
            await sleep_until(response.first_at)
            if self.default_close_due():
                self.end(_End(self.b.close_code, self.b.close_reason), "close")
                return
            if failure is not None:
                await self._fail(response, failure)
                return
            await self._deltas(response)
            await self._close_output(response)
        finally:
            if self.active is response:
                self.active = None
                self.conn.idle = True

    async def _open_output(self, response: _Response) -> None:
        """The assistant item and its content part, before the first delta."""
        item = self._item(response, "in_progress", [])
        ids = {"response_id": response.id, "output_index": 0}
        await self.send({"type": "response.output_item.added", **ids, "item": item})
        previous = self.items[-1] if self.items else None
        self.items.append(response.item_id)
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send({"type": added, "previous_item_id": previous, "item": item})
        await self.send({"type": "response.content_part.added", **ids, "item_id": response.item_id,
                         "content_index": 0, "part": self._part(response, "")})

    def _schedule(self, response: _Response) -> list[tuple[float, int, int]]:
        """(deadline, kind, index) of every delta: 0 text/transcript, 1 audio; time order, text first."""
        gap = self.b.inter_token_ms / 1000
        schedule = [(response.first_at + i * gap, 0, i) for i in range(response.count)]
        if response.audio and not self.content_blocked:
            chunks = math.ceil(self.b.audio_ms / self.b.audio_chunk_ms)
            schedule += [(response.first_at + k * self.b.audio_chunk_ms / 1000, 1, k) for k in range(chunks)]
        return sorted(schedule)

    async def _deltas(self, response: _Response) -> None:
        """Send the deltas at their deadlines; ``drop_after_deltas`` may cut the connection."""
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        for at, kind, index in self._schedule(response):
            await sleep_until(at)
            if self.b.drop_after_deltas is not None and self.deltas_sent >= self.b.drop_after_deltas:
                self.end(_End(drop=True), "disconnect")
                raise _SessionOver
            if kind == 0:
                piece = content_piece(index)
                response.pieces.append(piece)
                name = self.name("transcript.delta" if response.audio else "text.delta")
                await self.send({"type": name, **ids, "delta": piece})
            else:
                await self.send({"type": self.name("audio.delta"), **ids, "delta": self._audio_chunk(index)})
                response.audio_ms_sent = min(self.b.audio_ms, (index + 1) * self.b.audio_chunk_ms)
            self.deltas_sent += 1
            if self.conn.record.actual_ttft_s is None:
                self.conn.record.actual_ttft_s = self.conn.elapsed_s()

    def _audio_chunk(self, index: int) -> str:
        """Base64 PCM16 of audio chunk ``index`` (the last one may be shorter)."""
        per_chunk = round(self.b.audio_chunk_ms * SAMPLE_RATE / 1000)
        total = round(self.b.audio_ms * SAMPLE_RATE / 1000)
        start = index * per_chunk
        return base64.b64encode(pcm_tone(start, max(0, min(per_chunk, total - start)))).decode()

    async def _close_output(self, response: _Response) -> None:
        """The done events, ``response.done`` and ``rate_limits.updated``."""
        text = "".join(response.pieces)
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        if response.audio:
            await self.send({"type": self.name("audio.done"), **ids})
            await self.send({"type": self.name("transcript.done"), **ids, "transcript": text})
        else:
            await self.send({"type": self.name("text.done"), **ids, "text": text})
        part = self._part(response, text)
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        item = self._item(response, "completed" if response.status == "completed" else "incomplete", [part])
        await self.send({"type": "response.output_item.done", "response_id": response.id, "output_index": 0,
                         "item": item})
        if not self.beta:
            await self.send({"type": "conversation.item.done", "previous_item_id": self._previous(response),
                             "item": item})
        details = None if response.reason is None else {"type": response.status, "reason": response.reason}
        usage = self._usage(response)
        await self._send_done(response, self._response_object(response, response.status, details, [item], usage))
        self.context_text_tokens += response.count
        self.context_audio_tokens += usage["output_token_details"]["audio_tokens"]
        await self.send({"type": "rate_limits.updated", "rate_limits": self._rate_limits(usage["total_tokens"])})

    async def _fail(self, response: _Response, code: str) -> None:
        """``response.done`` with ``status: failed`` and the configured error, no output, zero usage."""
        self.conn.record.outcome = "response_failed"
        error = error_object(code, **self._message_fields())
        details = {"type": "failed", "error": {"type": error["type"], "code": code, "message": error["message"]}}
        nothing = usage_object(0, 0, 0, 0)
        await self._send_done(response, self._response_object(response, "failed", details, [], nothing))

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        """Stop the active response and report it ``cancelled``."""
        response = self.active
        if response is None or response.task is None:
            raise _ClientError("response_cancel_not_active", "Cancellation failed: no active response found.")
        response.task.cancel()
        await asyncio.gather(response.task, return_exceptions=True)
        details = {"type": "cancelled", "reason": "client_cancelled"}
        usage = self._usage(response)
        await self._send_done(response, self._response_object(response, "cancelled", details, [], usage))

    async def _send_done(self, response: _Response, response_object: dict[str, Any]) -> None:
        """Send ``response.done``, free the conversation for the next response, stamp the log."""
        await self.send({"type": "response.done", "response": response_object})
        if self.active is response:
            self.active = None
            self.conn.idle = True
        if self.conn.record.actual_duration_s is None:
            self.conn.record.actual_duration_s = self.conn.elapsed_s()

    # ------------------------------------------------------------ shapes

    def _previous(self, response: _Response) -> str | None:
        """The item before a response's output item in the conversation."""
        index = self.items.index(response.item_id) if response.item_id in self.items else 0
        return self.items[index - 1] if index > 0 else None

    def _part(self, response: _Response, text: str) -> dict[str, Any]:
        """A content part: GA ``output_text``/``output_audio``, beta ``text``/``audio``."""
        prefix = "" if self.beta else "output_"
        if response.audio:
            return {"type": prefix + "audio", "transcript": text}
        return {"type": prefix + "text", "text": text}

    def _item(self, response: _Response, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        """The assistant message item of a response."""
        return {"id": response.item_id, "object": "realtime.item", "type": "message", "status": status,
                "role": "assistant", "content": content}

    def _response_object(self, response: _Response, status: str, details: dict[str, Any] | None,
                         output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        """The ``response`` of response.created/done in this session's shape (§2.9)."""
        body: dict[str, Any] = {"object": "realtime.response", "id": response.id, "status": status,
                                "status_details": details, "output": output,
                                "conversation_id": self.conversation_id, "usage": usage, "metadata": None}
        if self.beta:
            return {**body, "modalities": ["text", "audio"] if response.audio else ["text"],
                    "voice": self.config.get("voice"), "output_audio_format": self.config.get("output_audio_format"),
                    "temperature": self.config.get("temperature"),
                    "max_output_tokens": self.config.get("max_response_output_tokens")}
        audio_out = (self.config.get("audio") or {}).get("output") or {}
        return {**body, "output_modalities": ["audio"] if response.audio else ["text"],
                "max_output_tokens": self.config.get("max_output_tokens"),
                "audio": {"output": {"format": audio_out.get("format"), "voice": audio_out.get("voice")}}}

    def _usage(self, response: _Response) -> dict[str, Any]:
        """A response's usage: the conversation so far in, its deltas and audio out."""
        output_audio = math.ceil(response.audio_ms_sent / OUTPUT_AUDIO_MS_PER_TOKEN)
        return usage_object(self.context_text_tokens, self.context_audio_tokens, len(response.pieces), output_audio)

    def _rate_limits(self, tokens_used: int) -> list[dict[str, Any]]:
        """The ``rate_limits.updated`` entries after a response."""
        reset_s = round(60 - self.state.uptime_s() % 60, 3)
        return [
            {"name": "requests", "limit": RATE_LIMIT_REQUESTS, "remaining": RATE_LIMIT_REQUESTS - 1,
             "reset_seconds": reset_s},
            {"name": "tokens", "limit": RATE_LIMIT_TOKENS, "remaining": max(0, RATE_LIMIT_TOKENS - tokens_used),
             "reset_seconds": reset_s},
        ]


def usage_object(input_text: int, input_audio: int, output_text: int, output_audio: int) -> dict[str, Any]:
    """A Realtime usage object whose details sum to their parents: total = input + output (§2.9)."""
    input_tokens, output_tokens = input_text + input_audio, output_text + output_audio
    nothing_cached = {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}
    return {
        "total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                                "cached_tokens": 0, "cached_tokens_details": nothing_cached},
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a session update: nested objects merge, anything else (null too) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
