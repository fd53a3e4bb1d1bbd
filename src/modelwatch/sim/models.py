"""Model lists on the simulator: ``GET /v1/models``, ``/v1beta/models``, ``/openai/v1/models``.

One handler answers in the dialect the request speaks, recognised by its
credentials the way each provider takes them:

* Gemini (``x-goog-api-key`` header or ``?key=``, or any ``/v1beta/`` request):
  ``{"models": [{"name": "models/<m>", ...}]}``; a refused key gets Google's
  400 ``API_KEY_INVALID``.
* Anthropic (``x-api-key``, or an ``anthropic-version`` header):
  ``{"data": [{"type": "model", "id": ...}], "has_more": false, ...}``; a
  refused key gets 401 ``authentication_error``.
* OpenAI, Azure (``api-key``) and compatible servers (``Authorization:
  Bearer``): ``{"object": "list", "data": [...]}``; OpenAI's 401s.

The list holds the scenario's model names. It is what ``kind: models`` probes
read, and it costs nothing, like the real endpoints. The scenario's
``model_list`` block injects errors (``error``/``errors``/``outages``) after
the key is accepted, with each dialect's own status, body and retry headers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from . import anthropic, gemini
from .common import to_json
from .openai_http import MISSING_AUTH, error_response, openai_headers, plain_error

if TYPE_CHECKING:
    from .app import SimState

__all__ = ["register"]

CREATED = 1686935002


def register(app: web.Application, state: SimState) -> None:
    """Add the model-list routes to the simulator app."""
    handler = ModelLists(state)
    for path in ("/v1/models", "/v1beta/models", "/openai/v1/models"):
        app.router.add_get(path, handler.list_models)


def _dialect(request: web.Request) -> tuple[str, str]:
    """(dialect, key) from the credentials the request carries."""
    headers = request.headers
    if "x-goog-api-key" in headers or "key" in request.query or request.path.startswith("/v1beta/"):
        return "gemini", headers.get("x-goog-api-key") or request.query.get("key", "")
    if "x-api-key" in headers:
        return "anthropic", headers["x-api-key"]
    scheme, _, bearer = headers.get("Authorization", "").strip().partition(" ")
    bearer = bearer.strip() if scheme.lower() == "bearer" else ""
    if "anthropic-version" in headers:
        return "anthropic", bearer
    return "openai", headers.get("api-key") or bearer


class ModelLists:
    """The model-list handler, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def list_models(self, request: web.Request) -> web.Response:
        """The scenario's model names in the caller's dialect, behind its auth."""
        t0 = time.perf_counter()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        dialect, key = _dialect(request)
        refusal = self._refusal(dialect, key)
        kind = "auth_error" if refusal is not None else self._injected_kind(draws.error_roll)
        response = refusal or (self._error(dialect, kind, key, record.request_id) if kind else
                               self._listing(dialect))
        record.outcome = kind or "ok"
        record.status = response.status
        if dialect == "anthropic":
            response.headers.update(anthropic.anthropic_headers(record.request_id, self.state.uptime_s(), kind))
        else:
            response.headers.update(openai_headers(record.request_id, time.perf_counter() - t0,
                                                   self.state.uptime_s(), kind))
        record.actual_duration_s = time.perf_counter() - t0
        return response

    def _injected_kind(self, roll: float) -> str | None:
        """The ``model_list`` block's error kind for this request, if any (content_blocked does not apply)."""
        block = self.state.scenario.model_list
        kind = self.state.injected_error(None, block, roll) if block is not None else None
        return None if kind == "content_blocked" else kind

    @staticmethod
    def _error(dialect: str, kind: str, key: str, request_id: str) -> web.Response:
        """An injected error in the caller's dialect (HTML gateway pages come from the chat table)."""
        if dialect == "gemini" and not gemini.ERRORS[kind].html:
            error = gemini.ERRORS[kind]
            return web.json_response(error.body(""), status=error.status, dumps=to_json)
        if dialect == "anthropic" and not anthropic.ERRORS[kind].html:
            spec = anthropic.ERRORS[kind]
            body = anthropic.error_body(spec.type, spec.message.format(model=""), request_id, spec.error_code)
            return web.json_response(body, status=spec.status, reason=spec.reason, dumps=to_json)
        return error_response(kind, "openai", model="", api_key=key)

    def _refusal(self, dialect: str, key: str) -> web.Response | None:
        if key and self.state.scenario.accepts_key(key):
            return None
        if dialect == "gemini":
            return web.json_response(gemini.ERRORS["auth_error"].body(""), status=400, dumps=to_json)
        if dialect == "anthropic":
            message = "invalid x-api-key" if key else "x-api-key header is required"
            body = {"type": "error", "error": {"type": "authentication_error", "message": message}}
            return web.json_response(body, status=401, dumps=to_json)
        if not key:
            return plain_error(401, MISSING_AUTH)
        return error_response("auth_error", "openai", model="", api_key=key)

    def _listing(self, dialect: str) -> web.Response:
        names = list(self.state.scenario.models)
        if dialect == "gemini":
            body = {"models": [{"name": f"models/{n}", "version": "001", "displayName": n,
                                "supportedGenerationMethods": ["generateContent", "countTokens"]}
                               for n in names]}
        elif dialect == "anthropic":  # Anthropic lists dated snapshots, not the aliases people use
            data = [{"type": "model", "id": f"{n}-20251001", "display_name": n,
                     "created_at": "2025-10-01T00:00:00Z"} for n in names]
            body = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None}
        else:
            body = {"object": "list", "data": [{"id": n, "object": "model", "created": CREATED,
                                                "owned_by": "modelwatch-sim"} for n in names]}
        return web.json_response(body, dumps=to_json)
