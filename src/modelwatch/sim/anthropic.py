"""Anthropic Messages on the simulator (PROTOCOLS.md §5, §11).

Route: ``POST /v1/messages`` (the official SDK's ``base_url`` is the server
root; it appends ``/v1/messages``). Credentials: ``x-api-key`` or
``Authorization: Bearer`` (the 2.x SDK sends the latter), checked with the
scenario's key policy; a missing key gets 401 ``authentication_error``, and
a missing ``anthropic-version`` (any value is accepted) 400
``invalid_request_error``. The body is validated like the API: ``model``,
``max_tokens`` (an integer >= 1) and a non-empty ``messages`` list are
required. Every answer carries ``request-id: req_…``,
``anthropic-organization-id`` and the ``anthropic-ratelimit-*`` headers
(RFC 3339 resets), plus ``retry-after`` on 429 and 529.

Injected errors (``error``/``errors``/``outages``) use Anthropic's own
statuses and bodies from ``ERRORS``: ``{"type": "error", "error": {"type",
"message"[, "details": {"error_code"}]}, "request_id"}``. ``quota_exhausted``
is the spend-cap 429 (``details.error_code`` ``enforced_spend_limit_reached``)
rather than the 402 ``billing_error``: it is the case a classifier can only
get right by reading ``details``, so the simulator makes it the one to prove.
``bad_gateway``/``gateway_timeout`` are the CDN's HTML pages, and
``content_blocked`` is a 200 stream that ends ``stop_reason: refusal``
without text.

A stream: ``message_start`` (usage with ``input_tokens``, ``output_tokens:
1``), the text ``content_block_start`` and a ``ping`` with the headers at
``ttfb_ms``; optional ``ping`` events every ``keepalive_every_ms``; text
deltas from ``ttft_ms``, one every ``inter_token_ms``; ``content_block_stop``,
``message_delta`` (``stop_reason`` ``end_turn``, or ``max_tokens`` when
``tokens`` exceeds the request's ``max_tokens`` or ``finish_reason:
length``; ``refusal`` for ``finish_reason: content_filter``; cumulative
``output_tokens``) and ``message_stop``. ``thinking_tokens`` N adds a thinking
block first (N ``thinking_delta`` spread between the headers and ``ttft_ms``,
then a ``signature_delta``). Faults: ``midstream_error_after`` N ends with
``event: error`` ``overloaded_error`` after N text deltas (the stream has no
other terminator); ``disconnect_after``, ``stall_after``/``stall_ms`` and
``malformed_after`` as in chat. ``usage_mode``, ``error_shape`` and ``done``
do not apply. Non-streaming requests get a JSON ``Message`` when the last
token would have been sent. Every wait is an absolute deadline from handler
entry; the log's ``actual_ttft_s`` is stamped right after the first text
delta is written and ``actual_duration_s`` before the last write.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import FaultyStream, LoggedExchange, base62, sleep_until, to_json
from .content import SSE_CONTENT_TYPE, content_piece, estimate_prompt_tokens, user_turns
from .openai_http import error_response as openai_error_response
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["ERRORS", "ErrorSpec", "anthropic_headers", "error_body", "register", "validate_request"]

ORGANIZATION_ID = "3f0c2b1a-5e4d-4c6b-9a8f-7e6d5c4b3a21"
RATE_LIMITS = {"requests": 4_000, "tokens": 480_000, "input-tokens": 400_000, "output-tokens": 80_000}
THINKING_WORDS = ("Let", " me", " think", " about", " this", ".")
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}
_REFUSAL_DETAILS = {"type": "refusal", "category": None,
                    "explanation": "The request was declined by the simulator's content_blocked scenario."}


@dataclass(frozen=True)
class ErrorSpec:
    """How Anthropic answers one error kind; ``message`` may use {model}."""

    status: int
    reason: str
    type: str | None
    message: str
    error_code: str | None = None  # error.details.error_code
    retry_after_s: float | None = None
    should_retry: bool | None = None  # x-should-retry, which the SDK obeys
    html: bool = False


ERRORS: dict[str, ErrorSpec] = {
    "auth_error": ErrorSpec(401, "Unauthorized", "authentication_error", "invalid x-api-key"),
    "quota_exhausted": ErrorSpec(
        429, "Too Many Requests", "rate_limit_error",
        "Your organization has reached its monthly API usage limit. You can raise it in Plans & Billing.",
        error_code="enforced_spend_limit_reached", retry_after_s=3600, should_retry=False),
    "rate_limited": ErrorSpec(
        429, "Too Many Requests", "rate_limit_error",
        "This request would exceed the rate limit for your organization of 4,000 requests per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers "
        "for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
        retry_after_s=1),
    "overloaded": ErrorSpec(529, "Overloaded", "overloaded_error", "Overloaded", retry_after_s=2),
    "server_error": ErrorSpec(500, "Internal Server Error", "api_error", "Internal server error"),
    "bad_gateway": ErrorSpec(502, "Bad Gateway", None, "502 Bad Gateway", html=True),
    "gateway_timeout": ErrorSpec(504, "Gateway Time-out", None, "504 Gateway Time-out", html=True),
    "model_unavailable": ErrorSpec(404, "Not Found", "not_found_error", "model: {model}"),
    "bad_request": ErrorSpec(
        400, "Bad Request", "invalid_request_error",
        "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for {model}"),
    "capacity_exceeded": ErrorSpec(
        429, "Too Many Requests", "rate_limit_error",
        "Your organization's usage is growing faster than its ramp limit allows. Please retry after the time "
        "in the retry-after header.", error_code="ramp_limit_exceeded", retry_after_s=5),
    # content_blocked is not an error status: a 200 stream ending with stop_reason "refusal".
}


def error_body(error_type: str, message: str, request_id: str, error_code: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return {"type": "error", "error": error, "request_id": request_id}


def anthropic_headers(request_id: str, uptime_s: float, kind: str | None = None) -> dict[str, str]:
    """``request-id``, organization, ``anthropic-ratelimit-*`` (RFC 3339 resets) and retry hints."""
    left_in_minute = 60 - uptime_s % 60
    reset = datetime.now(timezone.utc) + timedelta(seconds=left_in_minute)
    headers = {"request-id": request_id, "anthropic-organization-id": ORGANIZATION_ID}
    for name, limit in RATE_LIMITS.items():
        spent = name == "requests" and kind == "rate_limited"
        headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{name}-remaining"] = "0" if spent else str(limit - 1 if name == "requests"
                                                                                  else limit - 100)
        headers[f"anthropic-ratelimit-{name}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    spec = ERRORS.get(kind or "")
    if spec is not None and spec.retry_after_s is not None:
        headers["retry-after"] = f"{spec.retry_after_s:g}"
    if spec is not None and spec.should_retry is not None:
        headers["x-should-retry"] = "true" if spec.should_retry else "false"
    return headers


def validate_request(body: Any) -> str | None:
    """Check a Messages request body like the API; the 400 message, or None."""
    if not isinstance(body, dict):
        return "There was an issue with your request body: it is not a valid JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required" if "model" not in body else "model: Input should be a valid string"
    cap = body.get("max_tokens")
    if cap is None:
        return "max_tokens: Field required"
    if not isinstance(cap, int) or isinstance(cap, bool):
        return "max_tokens: Input should be a valid integer"
    if cap < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def register(app: web.Application, state: SimState) -> None:
    """Add the Messages route to the simulator app."""
    app.router.add_post("/v1/messages", MessagesEndpoint(state).messages)


@dataclass
class _Exchange(LoggedExchange):
    """One Messages request, from arrival to its last byte."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    model: str = ""
    behaviour: ModelBehaviour = field(default_factory=ModelBehaviour)
    body: dict[str, Any] = field(default_factory=dict)
    response: web.StreamResponse | None = None

    @property
    def message_id(self) -> str:
        return "msg_01" + base62(self.draws.id_bits).rjust(22, "0")[:22]

    def input_tokens(self) -> int:
        return estimate_prompt_tokens(self.body.get("messages", []))


def _request_id(bits: int) -> str:
    """``req_011C…`` with 20 base62 characters, the form the API's ids take."""
    return "req_011C" + base62(bits).rjust(20, "0")[-20:]


class MessagesEndpoint:
    """The ``/v1/messages`` handler, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``; a client hanging up ends it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(_request_id(draws.id_bits), request.path)
        ex = _Exchange(request, record, draws, t0_perf, t0_loop)
        try:
            return await self._answer(ex)
        except ConnectionError:
            ex.record.client_disconnected = True
            return ex.response or web.Response(status=499)
        except asyncio.CancelledError:
            ex.record.client_disconnected = True
            raise
        finally:
            ex.finish()

    async def _answer(self, ex: _Exchange) -> web.StreamResponse:
        """Authenticate, validate, pick the behaviour, then stream, answer or fail."""
        denied = self._authenticate(ex)
        if denied is not None:
            return denied
        try:
            body = json.loads(await ex.request.read())
        except ValueError:
            body = None
        problem = validate_request(body)
        if problem is not None:
            return self._error(ex, "bad_request", 400, "invalid_request_error", problem)
        ex.body, ex.model = body, body["model"]
        ex.record.model = ex.model
        behaviour = self.state.scenario.behaviour_for(ex.model)
        if behaviour is None:
            return self._injected(ex, "model_unavailable")
        turn = ex.record.turn = user_turns(body["messages"])
        behaviour = ex.behaviour = behaviour.for_turn(turn)
        kind = self.state.injected_error(ex.model, behaviour, ex.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(ex.t0_loop + behaviour.ttfb_ms / 1000)
            return self._injected(ex, kind)
        ex.record.outcome = kind or "ok"
        ex.record.injected_ttft_s = behaviour.first_token_delay_ms(ex.draws.jitter_roll, turn) / 1000
        headers = anthropic_headers(ex.record.request_id, self.state.uptime_s())
        if body.get("stream") is True:
            return await _Stream(ex, headers).run()
        return await self._complete(ex, headers)

    def _authenticate(self, ex: _Exchange) -> web.Response | None:
        """``x-api-key`` or a bearer token, then ``anthropic-version``; None when both pass."""
        headers = ex.request.headers
        key = headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return self._error(ex, "auth_error", 401, "authentication_error", "x-api-key header is required")
        if not self.state.scenario.accepts_key(key):
            return self._injected(ex, "auth_error")
        if not headers.get("anthropic-version", "").strip():
            return self._error(ex, "bad_request", 400, "invalid_request_error",
                               "anthropic-version: header is required")
        return None

    def _injected(self, ex: _Exchange, kind: str) -> web.Response:
        """The response for an error kind from ``ERRORS``: JSON, or a CDN page without our headers."""
        spec = ERRORS[kind]
        if spec.html:
            ex.record.outcome = kind
            response = openai_error_response(kind, "openai", model=ex.model, api_key="")
            ex.finish(response.status)
            return response
        return self._error(ex, kind, spec.status, spec.type, spec.message.format(model=ex.model),
                           spec.error_code, spec.reason)

    def _error(self, ex: _Exchange, outcome: str, status: int, error_type: str, message: str,
               error_code: str | None = None, reason: str | None = None) -> web.Response:
        """An Anthropic-shaped JSON error with the API's headers, logged."""
        ex.record.outcome = outcome
        body = error_body(error_type, message, ex.record.request_id, error_code)
        headers = anthropic_headers(ex.record.request_id, self.state.uptime_s(), outcome)
        ex.finish(status)
        return web.json_response(body, status=status, reason=reason, headers=headers, dumps=to_json)

    async def _complete(self, ex: _Exchange, headers: dict[str, str]) -> web.Response:
        """A non-streaming ``Message``, sent when the last token would be."""
        plan = _Plan.of(ex)
        first_at = ex.t0_loop + ex.record.injected_ttft_s
        await sleep_until(first_at + max(plan.text - 1, 0) * ex.behaviour.inter_token_ms / 1000)
        content: list[dict[str, Any]] = []
        if plan.thinking:
            content.append({"type": "thinking", "thinking": _thinking_text(plan.thinking),
                            "signature": _signature(ex)})
        if plan.text:
            content.append({"type": "text", "text": "".join(content_piece(i) for i in range(plan.text))})
        body = _message(ex, content, plan.stop_reason, _usage(ex, plan.output_tokens))
        ex.finish(200)
        return web.json_response(body, headers=headers, dumps=to_json)


@dataclass(frozen=True)
class _Plan:
    """What one answer holds: thinking deltas, text deltas and why it stops."""

    thinking: int
    text: int
    stop_reason: str

    @property
    def output_tokens(self) -> int:
        return self.thinking + self.text

    @classmethod
    def of(cls, ex: _Exchange) -> _Plan:
        """Honour ``max_tokens``: thinking spends it first, as on the real API."""
        b, cap = ex.behaviour, ex.body["max_tokens"]
        if ex.record.outcome == "content_blocked":
            return cls(0, 0, "refusal")
        thinking = min(b.thinking_tokens, cap)
        text = min(b.tokens, cap - thinking)
        if b.thinking_tokens + b.tokens > cap:
            return cls(thinking, text, "max_tokens")
        return cls(thinking, text, _STOP_REASONS[b.finish_reason])


class _Stream(FaultyStream):
    """One SSE answer: message_start, optional thinking, text deltas, faults, message_stop."""

    def __init__(self, ex: _Exchange, headers: dict[str, str]) -> None:
        self.ex = self.exchange = ex
        self.b = self.behaviour = ex.behaviour
        self.plan = _Plan.of(ex)
        self.headers_at = ex.t0_loop + self.b.ttfb_ms / 1000
        self.first_at = ex.t0_loop + ex.record.injected_ttft_s
        self.headers = headers
        self.text_index = 1 if self.plan.thinking else 0

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        ex = self.ex
        await sleep_until(self.headers_at)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        ex.response = response
        ex.record.status = 200
        await response.prepare(ex.request)
        await self._send("message_start", message=_message(ex, [], None, _usage(ex, 1)))
        if self.plan.thinking:
            await self._thinking()
        if self.plan.text:
            await self._send("content_block_start", index=self.text_index,
                             content_block={"type": "text", "text": ""})
        await self._send("ping")
        await self.keepalive_until(self.first_at)
        if not await self.stream_deltas(self.plan.text):
            return response
        await sleep_until(self.first_at)  # with no text (a refusal) the verdict still comes at ttft
        await self._finish()
        await response.write_eof()
        return response

    async def _thinking(self) -> None:
        """Block 0: thinking deltas spread over [headers, ttft), then the signature and its stop."""
        count = self.plan.thinking
        step = (self.first_at - self.headers_at) / count
        await self._send("content_block_start", index=0,
                         content_block={"type": "thinking", "thinking": "", "signature": ""})
        for i in range(count):
            await sleep_until(self.headers_at + i * step)
            await self._send("content_block_delta", index=0,
                             delta={"type": "thinking_delta", "thinking": THINKING_WORDS[i % len(THINKING_WORDS)]})
        await self._send("content_block_delta", index=0,
                         delta={"type": "signature_delta", "signature": _signature(self.ex)})
        await self._send("content_block_stop", index=0)

    async def send_delta(self, index: int, count: int) -> None:
        await self._send("content_block_delta", index=self.text_index,
                         delta={"type": "text_delta", "text": content_piece(index)})

    async def send_malformed(self) -> None:
        await self.ex.response.write(b"event: content_block_delta\ndata: {not json\n\n")

    async def send_midstream_error(self, index: int) -> None:
        """``event: error`` with ``overloaded_error``, as Anthropic sends it after a 200."""
        spec = ERRORS["overloaded"]
        await self._send("error", error={"type": spec.type, "message": spec.message})
        await self.ex.response.write_eof()

    async def send_keepalive(self) -> None:
        """A ``ping`` event (Anthropic's keep-alive)."""
        await self._send("ping")

    async def _finish(self) -> None:
        """Close the text block, report stop reason and usage, then message_stop (log stamped first)."""
        ex, plan = self.ex, self.plan
        if plan.text:
            await self._send("content_block_stop", index=self.text_index)
        delta: dict[str, Any] = {"stop_reason": plan.stop_reason, "stop_sequence": None}
        if plan.stop_reason == "refusal":
            delta["stop_details"] = _REFUSAL_DETAILS
        await self._send("message_delta", delta=delta, usage=_usage(ex, plan.output_tokens, delta=True))
        ex.finish()
        await self._send("message_stop")

    async def _send(self, kind: str, **fields: Any) -> None:
        """Write one event with ``event:`` and ``data:`` lines in one write."""
        data = to_json({"type": kind, **fields})
        await self.ex.response.write(f"event: {kind}\ndata: {data}\n\n".encode())


def _message(ex: _Exchange, content: list[dict[str, Any]], stop_reason: str | None,
             usage: dict[str, Any]) -> dict[str, Any]:
    """A ``Message`` object, as ``message_start`` and non-streaming answers carry it."""
    return {
        "id": ex.message_id, "type": "message", "role": "assistant", "model": ex.model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": None,
        "stop_details": _REFUSAL_DETAILS if stop_reason == "refusal" else None, "usage": usage,
    }


def _usage(ex: _Exchange, output_tokens: int, delta: bool = False) -> dict[str, Any]:
    """Usage: input estimated from the messages; ``delta`` gives message_delta's cumulative form."""
    usage: dict[str, Any] = {"input_tokens": ex.input_tokens(), "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": output_tokens}
    if not delta:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
        usage["service_tier"] = "standard"
    return usage


def _thinking_text(count: int) -> str:
    return "".join(THINKING_WORDS[i % len(THINKING_WORDS)] for i in range(count))


def _signature(ex: _Exchange) -> str:
    """A stable stand-in for the opaque thinking signature."""
    return hashlib.sha256(ex.record.request_id.encode()).hexdigest()
