"""OpenAI Realtime over WebRTC on the simulator: signalling routes (PROTOCOLS.md §3.2, §3.3).

Routes (Azure: the same under ``/openai/v1/realtime/...``, key in ``api-key``
or ``Authorization: Bearer``):

* ``POST /v1/realtime/client_secrets`` with the API key as Bearer and a JSON
  body ``{"expires_after": {"anchor": "created_at", "seconds": 10..7200},
  "session": {"type": "realtime", "model": M, ...}}`` -> 200 ``{"value":
  "ek_...", "expires_at": <unix>, "session": {..., "object":
  "realtime.session", "id": "sess_..."}}``. The secret is remembered with its
  model and session settings until it expires (default 600 s, on the
  simulator's clock, so a test's clock can age it).
* ``POST /v1/realtime/calls``: multipart/form-data with part ``sdp`` (the
  offer) and optional part ``session`` (JSON, with ``model``), authorized with
  the API key (or an ``ek_``); or a raw ``Content-Type: application/sdp`` body
  authorized with ``Bearer ek_...`` (the model comes from the secret's
  session; with an API key, from ``?model=``). -> 201, body the SDP answer
  (``application/sdp``), ``Location: /v1/realtime/calls/<call_id>``.
* ``POST /v1/realtime/calls/{call_id}/hangup`` -> 200, and the call's peer is
  closed; an unknown call -> 404.

Refusals are the WebSocket handshake's (``openai_realtime``): a missing or
refused key 401 (an unknown or expired ``ek_`` too), an unknown model 404
``model_not_found``, a missing SDP or model 400, the injected error kinds
(``error``/``errors``/``outages``, after ``ttfb_ms``) with the chat statuses
and bodies; ``content_blocked`` ends each response ``incomplete`` instead.

One request-log entry per call (status 201 or the refusal), whose
``injected_ttft_s`` / ``actual_ttft_s`` run from the first ``response.create``
received on the data channel to its planned / actual first output: the first
text delta sent, or the first audible RTP packet handed to the transport
(audio); ``actual_duration_s`` from the call request to the first
``response.done`` (or the call's end); ``turns`` as for the WebSocket. Each
client-secret request has an entry of its own (status 200 or the refusal).
The peer itself is ``openai_webrtc_peer``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import base62, sleep_until
from .openai_http import MISSING_AUTH, error_response, mask_api_key, openai_headers, plain_error, request_key
from .openai_realtime import RealtimeConnection
from .openai_realtime_events import GA_SESSION_KEYS, INSTRUCTIONS, PCM, TURN_DETECTION, merge_session
from .openai_webrtc_peer import WebRTCCall

if TYPE_CHECKING:
    from .app import SimState

__all__ = ["ClientSecret", "WebRTCEndpoint", "register"]

SECRET_TTL_S = 600
SECRET_TTL_RANGE = (10, 7200)
MAX_OFFER_BYTES = 256 * 1024


def register(app: web.Application, state: SimState) -> None:
    """Add the WebRTC signalling routes, and close every call when the app shuts down."""
    endpoint = WebRTCEndpoint(state)
    for prefix, azure in (("/v1", False), ("/openai/v1", True)):
        app.router.add_post(f"{prefix}/realtime/client_secrets", endpoint.route(endpoint.client_secret, azure))
        app.router.add_post(f"{prefix}/realtime/calls", endpoint.route(endpoint.call, azure))
        app.router.add_post(f"{prefix}/realtime/calls/{{call_id}}/hangup", endpoint.route(endpoint.hangup, azure))
    app.on_shutdown.append(endpoint.close_all)


@dataclass
class ClientSecret:
    """An ephemeral key: its model and session settings, until ``expires_clock`` on the sim clock."""

    model: str
    session: dict[str, Any]
    expires_clock: float


class _Refused(Exception):
    """A signalling request answered with an error response."""

    def __init__(self, outcome: str, response: web.Response) -> None:
        super().__init__(outcome)
        self.outcome, self.response = outcome, response


class WebRTCEndpoint:
    """Client secrets, calls and hang-ups; the calls still running."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.secrets: dict[str, ClientSecret] = {}
        self.calls: dict[str, WebRTCCall] = {}

    def route(self, handler: Any, azure: bool) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._logged(request, handler, azure)
        return handle

    async def _logged(self, request: web.Request, handler: Any, azure: bool) -> web.StreamResponse:
        """Log the request, run ``handler``; refusals get OpenAI's headers and their outcome."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        conn = RealtimeConnection(request, record, draws, t0_perf, t0_loop, azure)
        try:
            return await handler(conn)
        except _Refused as refused:
            record.outcome = refused.outcome
            refused.response.headers.update(openai_headers(record.request_id, conn.elapsed_s(),
                                                           self.state.uptime_s(), refused.outcome))
            conn.finish(refused.response.status)
            return refused.response

    # ------------------------------------------------------------ client secrets

    async def client_secret(self, conn: RealtimeConnection) -> web.Response:
        """``POST .../realtime/client_secrets``: an ``ek_`` for a session of a model."""
        key = self._api_key(conn, allow_ephemeral=False)
        body = await _json_body(conn.request)
        conn.record.log_options(body)
        session = body.get("session") if isinstance(body.get("session"), dict) else {}
        conn.model = session.get("model") if isinstance(session.get("model"), str) else ""
        conn.record.model = conn.model or None
        ttl = _ttl(body.get("expires_after"))
        if session.get("type", "realtime") != "realtime":
            raise _Refused("bad_request", plain_error(
                400, f"Invalid value: '{session.get('type')}'. The simulator supports session type 'realtime'.",
                code="invalid_value", param="session.type"))
        settings = _session_settings(session)
        behaviour = self._behaviour(conn, key)
        await self._injected_error(conn, behaviour, key)
        value = "ek_" + base62(conn.draws.id_bits)[:24]
        now = self.state.clock()
        # Forget secrets an hour past expiry (until then a late use is told "expired").
        self.secrets = {k: v for k, v in self.secrets.items() if v.expires_clock > now - 3600}
        self.secrets[value] = ClientSecret(conn.model, settings, self.state.clock() + ttl)
        expires_at = int(time.time() + ttl)
        session_object = merge_session(_ga_session(conn.model, "sess_" + base62(conn.draws.id_bits >> 3)[:20]),
                                       {**settings, "expires_at": expires_at})
        conn.record.outcome = "ok"
        conn.finish(200)
        headers = openai_headers(conn.record.request_id, conn.elapsed_s(), self.state.uptime_s())
        return web.json_response({"value": value, "expires_at": expires_at, "session": session_object},
                                 headers=headers)

    # ------------------------------------------------------------ calls

    async def call(self, conn: RealtimeConnection) -> web.Response:
        """``POST .../realtime/calls``: answer the offer, then run the call in the background."""
        key = self._api_key(conn, allow_ephemeral=True)
        secret = self.secrets.get(key)
        offer, session = await self._offer(conn)
        model = session.get("model") if isinstance(session.get("model"), str) else None
        conn.model = model or (secret.model if secret is not None else conn.request.query.get("model", ""))
        conn.record.model = conn.model or None
        if not offer.strip():
            raise _Refused("bad_request", plain_error(400, "Missing required parameter: 'sdp'.",
                                                      code="missing_required_parameter", param="sdp"))
        if not conn.model:
            raise _Refused("bad_request", plain_error(400, "Missing required parameter: 'session.model'.",
                                                      code="missing_required_parameter", param="session.model"))
        settings = {**(secret.session if secret is not None else {}), **_session_settings(session)}
        behaviour = self._behaviour(conn, key)
        kind = await self._injected_error(conn, behaviour, key)
        conn.api_key = key
        conn.record.outcome = kind or behaviour.webrtc_fault or "ok"
        call_id = "rtc_" + base62(conn.draws.id_bits)[:22]
        call = WebRTCCall(call_id, self.state, conn, behaviour, settings)
        try:
            answer = await call.answer(offer)
        except ValueError as exc:
            raise _Refused("bad_request", plain_error(400, f"Invalid SDP offer: {exc}", code="invalid_offer",
                                                      param="sdp")) from None
        self.calls[call_id] = call
        call.start()
        call.task.add_done_callback(lambda _: self.calls.pop(call_id, None))
        conn.record.status = 201
        prefix = "/openai/v1" if conn.azure else "/v1"
        headers = {**openai_headers(conn.record.request_id, conn.elapsed_s(), self.state.uptime_s()),
                   "Location": f"{prefix}/realtime/calls/{call_id}"}
        return web.Response(status=201, text=answer, content_type="application/sdp", headers=headers)

    async def hangup(self, conn: RealtimeConnection) -> web.Response:
        """``POST .../realtime/calls/{call_id}/hangup``: close the call's peer."""
        self._api_key(conn, allow_ephemeral=True)
        call_id = conn.request.match_info["call_id"]
        call = self.calls.get(call_id)
        if call is None:
            raise _Refused("bad_request", plain_error(404, f"Call '{call_id}' not found.", code="not_found",
                                                      param="call_id"))
        conn.model = call.conn.model
        conn.record.model = conn.model
        await call.hang_up()
        conn.record.outcome = "ok"
        conn.finish(200)
        return web.Response(status=200, headers=openai_headers(conn.record.request_id, conn.elapsed_s(),
                                                               self.state.uptime_s()))

    async def close_all(self, app: web.Application | None = None) -> None:
        """Hang up every call (the simulator is shutting down)."""
        await asyncio.gather(*(call.close() for call in list(self.calls.values())), return_exceptions=True)

    # ------------------------------------------------------------ checks

    def _api_key(self, conn: RealtimeConnection, *, allow_ephemeral: bool) -> str:
        """The request's key if it is accepted (an unexpired ``ek_`` where allowed); raises _Refused."""
        request = conn.request
        key = request_key(request.headers, bool(conn.azure))
        conn.api_key = key
        if not key:
            raise _Refused("auth_error", plain_error(401, MISSING_AUTH))
        if key.startswith("ek_") and allow_ephemeral:
            secret = self.secrets.get(key)
            if secret is not None and self.state.clock() < secret.expires_clock:
                return key
            if secret is not None:
                raise _Refused("auth_error", plain_error(
                    401, f"The client secret {mask_api_key(key)} has expired. Create a new one.",
                    code="invalid_api_key"))
        elif self.state.scenario.accepts_key(key):
            return key
        raise _Refused("auth_error", error_response("auth_error", "openai", model=conn.model, api_key=key))

    def _behaviour(self, conn: RealtimeConnection, key: str) -> Any:
        """The model's behaviour; raises _Refused (400 without a model, 404 for an unknown one)."""
        if not conn.model:
            raise _Refused("bad_request", plain_error(400, "Missing required parameter: 'session.model'.",
                                                      code="missing_required_parameter", param="session.model"))
        behaviour = self.state.scenario.behaviour_for(conn.model)
        if behaviour is None:
            raise _Refused("model_unavailable", error_response("model_unavailable", "openai", model=conn.model,
                                                               api_key=key))
        return behaviour

    async def _injected_error(self, conn: RealtimeConnection, behaviour: Any, key: str) -> str | None:
        """Refuse with the injected error kind after ``ttfb_ms``; ``content_blocked`` (or None) passes."""
        kind = self.state.injected_error(conn.model, behaviour, conn.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(conn.t0_loop + behaviour.ttfb_ms / 1000)
            raise _Refused(kind, error_response(kind, behaviour.error_shape, model=conn.model, api_key=key))
        return kind

    async def _offer(self, conn: RealtimeConnection) -> tuple[str, dict[str, Any]]:
        """The offer SDP and the session part, from a multipart or a raw ``application/sdp`` body."""
        request = conn.request
        if request.content_type.startswith("multipart/"):
            offer, session = "", {}
            try:
                reader = await request.multipart()
                async for part in reader:
                    data = await part.read(decode=True)
                    if len(data) > MAX_OFFER_BYTES:
                        raise ValueError("part too large")
                    if part.name == "sdp":
                        offer = data.decode()
                    elif part.name == "session":
                        session = json.loads(data)
            except (ValueError, UnicodeDecodeError, AssertionError) as exc:
                raise _Refused("bad_request", plain_error(400, f"Invalid multipart body: {exc}")) from None
            if not isinstance(session, dict):
                raise _Refused("bad_request", plain_error(400, "Invalid 'session': expected an object.",
                                                          code="invalid_type", param="session"))
            conn.record.log_options({"session": session})
            return offer, session
        if request.content_type != "application/sdp":
            raise _Refused("bad_request", plain_error(
                400, "Unsupported Content-Type: send multipart/form-data or application/sdp."))
        data = await request.content.read(MAX_OFFER_BYTES + 1)
        if len(data) > MAX_OFFER_BYTES:
            raise _Refused("bad_request", plain_error(400, "The SDP offer is too large."))
        return data.decode(errors="replace"), {}


def _session_settings(session: dict[str, Any]) -> dict[str, Any]:
    """What a session part or a secret's session sets (no type or model); unknown keys -> 400."""
    for key in session:
        if key not in GA_SESSION_KEYS:
            raise _Refused("bad_request", plain_error(400, f"Unknown parameter: 'session.{key}'.",
                                                      code="unknown_parameter", param=f"session.{key}"))
    return {key: value for key, value in session.items() if key not in ("type", "model")}


def _ttl(expires_after: Any) -> float:
    """The secret's lifetime: ``expires_after.seconds`` (10-7200), default 600."""
    if expires_after is None:
        return SECRET_TTL_S
    seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
    low, high = SECRET_TTL_RANGE
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise _Refused("bad_request", plain_error(
            400, f"Invalid 'expires_after.seconds': expected an integer from {low} to {high}.",
            code="invalid_value", param="expires_after.seconds"))
    return seconds


def _ga_session(model: str, session_id: str) -> dict[str, Any]:
    """A GA session object as the client-secret response shows it (PROTOCOLS.md §2.4)."""
    audio = {"input": {"format": dict(PCM), "transcription": None, "noise_reduction": None,
                       "turn_detection": {**TURN_DETECTION, "idle_timeout_ms": None}},
             "output": {"format": dict(PCM), "voice": "marin", "speed": 1.0}}
    return {"type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            "output_modalities": ["audio"], "instructions": INSTRUCTIONS, "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": None, "truncation": "auto", "prompt": None, "include": None,
            "audio": audio}


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; raises _Refused for anything else."""
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Refused("bad_request", plain_error(400, "We could not parse the JSON body of your request."))
    return body
