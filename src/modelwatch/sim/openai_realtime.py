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

After the upgrade a ``RealtimeSession`` (``openai_realtime_session``) runs the
conversation and its responses (``openai_realtime_response``), from the tables
and builders in ``openai_realtime_events``. Faults (``fail_response_with``,
``error_event``, ``close_code``, ``drop_after_deltas``, ``ignore_client_after``,
``session_max_s``) and the conversation keys (``turn_ttft_ms``,
``faults_from_turn``, ``cancel_ms``, ``audio_after_cancel``) are described in
``scenario``.

One request-log entry per session: ``status`` 101 (or the refusal status),
``injected_ttft_s`` and ``actual_ttft_s`` from the upgrade request to the first
output delta of the session, ``actual_duration_s`` to its first
``response.done`` (or to the end of a session without one); ``turns`` one
entry per ``response.create`` (see ``app``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .common import LoggedExchange, base62, sleep_until, to_json
from .openai_http import MISSING_AUTH, error_response, mask_api_key, openai_headers, plain_error
from .openai_realtime_events import error_object
from .openai_realtime_session import RealtimeSession
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["RealtimeConnection", "RealtimeEndpoint", "register"]

MAX_FRAME_BYTES = 16 * 2**20  # the API takes up to 15 MiB of audio per append
CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's close frame
AUTH_CLOSE_REASON = "invalid_request_error.invalid_api_key"


def register(app: web.Application, state: SimState) -> None:
    """Add the Realtime WebSocket routes to the simulator app."""
    endpoint = RealtimeEndpoint(state)
    app.router.add_get("/v1/realtime", endpoint.openai)
    app.router.add_get("/openai/v1/realtime", endpoint.azure_v1)
    app.router.add_get("/openai/realtime", endpoint.azure_dated)


@dataclass
class RealtimeConnection(LoggedExchange):
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
        conn = RealtimeConnection(request, record, draws, t0_perf, t0_loop, azure)
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

    async def _answer(self, conn: RealtimeConnection, model_param: str, missing: str | None) -> web.StreamResponse:
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
        kind = self.state.injected_error(conn.model, behaviour, conn.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(conn.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(conn, kind, error_response(
                kind, behaviour.error_shape, model=conn.model, api_key=conn.api_key))
        conn.record.outcome = kind or "ok"
        await self._upgrade(conn, ws)
        await RealtimeSession(self.state, conn, ws, behaviour, _wants_beta(request)).run()
        return ws

    async def _upgrade(self, conn: RealtimeConnection, ws: web.WebSocketResponse) -> None:
        """Send the 101 with OpenAI's request id header."""
        ws.headers["x-request-id"] = conn.record.request_id
        await ws.prepare(conn.request)
        conn.record.status = 101

    async def _refuse_key(self, conn: RealtimeConnection, ws: web.WebSocketResponse,
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

    def _reject(self, conn: RealtimeConnection, outcome: str, response: web.Response) -> web.Response:
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
