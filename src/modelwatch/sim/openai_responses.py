"""OpenAI Responses API on the simulator (PROTOCOLS.md §4.5, §11).

Routes: ``POST /v1/responses`` (``Authorization: Bearer``), and for Azure
``POST /openai/v1/responses`` (v1 form) and ``POST /openai/responses?api-version=V``
(dated form), which take the ``api-key`` header (or a bearer token). Auth, error
injection (``error``/``errors``/``outages``: the chat ``ERRORS`` statuses and
bodies in the model's ``error_shape``), headers and the request log are those
of the Chat Completions endpoint. Validation follows OpenAI: ``model`` and
``input`` are required, ``max_output_tokens`` must be an integer >= 16, and
``reasoning.effort`` one of the known efforts.

A stream sends both ``event:`` and ``data:`` lines, each object with ``type``
and an increasing ``sequence_number``, and no ``[DONE]``:
``response.created`` and ``response.in_progress`` with the headers at
``ttfb_ms``; optional ``: keep-alive`` comments; at ``ttft_ms`` the message item
(``response.output_item.added``, ``response.content_part.added``) and the
first ``response.output_text.delta``, then one delta every ``inter_token_ms``;
``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``; and the terminal event with usage:

* ``response.completed``;
* ``response.incomplete`` reason ``max_output_tokens`` when ``tokens`` exceeds
  the request's ``max_output_tokens`` (only that many deltas are sent) or
  ``finish_reason: length``; reason ``content_filter`` for
  ``finish_reason: content_filter``, or with no output at all for the error
  kind ``content_blocked``.

Stream faults, reusing the chat and realtime knobs: ``midstream_error_after``
N ends the stream after N deltas with ``response.failed`` (error
``server_error``; a Responses stream reports failure that way, not with a bare
error chunk); ``disconnect_after``, ``stall_after``/``stall_ms`` and
``malformed_after`` as in chat; ``fail_response_with`` CODE sends
``response.failed`` with that error code at ``ttft_ms`` instead of any output;
``error_event`` CODE sends a standalone ``error`` event there and ends the
stream; ``usage_mode: none`` leaves ``usage`` null. ``done`` does not apply.

Reasoning (``thinking_tokens``, ``reasoning_ms``): unless ``reasoning.effort``
is ``none`` or ``minimal``, a ``reasoning`` output item (``rs_...``, output
index 0) opens after ``response.in_progress`` and closes at the first text
delta, which comes ``reasoning_ms`` later than ``ttft_ms``; with
``reasoning.summary`` set, ``response.reasoning_summary_part.added``, one
``response.reasoning_summary_text.delta`` per reasoning token and their
``.done`` events fill it. The message item then takes output index 1, and
the usage counts the reasoning in ``output_tokens`` and
``output_tokens_details.reasoning_tokens`` (against ``max_output_tokens``
first, so a small cap can leave no text).
Non-streaming requests get a JSON ``Response`` object when the last token would
have been sent (``fail_response_with`` makes it ``failed``; the other stream
faults do not apply). Every wait is an absolute deadline from handler entry.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import FaultyStream, LoggedExchange, sleep_until, to_json
from .content import SSE_CONTENT_TYPE, content_piece, estimate_prompt_tokens, user_turns
from .openai_http import (EFFORTS, ERRORS, MISSING_AUTH, error_response, openai_headers, plain_error,
                          reasoning_active, request_key)
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["EFFORTS", "MIN_OUTPUT_TOKENS", "register", "validate_request"]

MIN_OUTPUT_TOKENS = 16
_BAD_JSON = "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload."
# Messages of the response.failed codes the simulator knows; others get a generic one.
FAILED_MESSAGES = {
    "server_error": ERRORS["server_error"].message,
    "rate_limit_exceeded": "Rate limit reached for {model} on tokens per min (TPM). Please try again in 1s.",
    "invalid_prompt": "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
}


def register(app: web.Application, state: SimState) -> None:
    """Add the Responses routes (OpenAI and Azure forms) to the simulator app."""
    endpoint = ResponsesEndpoint(state)
    app.router.add_post("/v1/responses", endpoint.openai)
    app.router.add_post("/openai/v1/responses", endpoint.azure_v1)
    app.router.add_post("/openai/responses", endpoint.azure_dated)


def validate_request(body: Any) -> tuple[int, str, str | None, str | None] | None:
    """Check a Responses request body like OpenAI; returns (status, message, param, code) or None."""
    if not isinstance(body, dict):
        return 400, _BAD_JSON, None, None
    for name in ("model", "input"):
        value = body.get(name)
        if not value or not isinstance(value, (str, list)) or (name == "model" and not isinstance(value, str)):
            return 400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
    cap = body.get("max_output_tokens")
    if cap is not None:
        if not isinstance(cap, int) or isinstance(cap, bool):
            return (400, f"Invalid type for 'max_output_tokens': expected an integer, but got "
                    f"{type(cap).__name__} instead.", "max_output_tokens", "invalid_type")
        if cap < MIN_OUTPUT_TOKENS:
            return (400, f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                    f"{MIN_OUTPUT_TOKENS}, but got {cap} instead.", "max_output_tokens", "integer_below_min_value")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else "?"
        if effort is not None and effort not in EFFORTS:
            supported = ", ".join(f"'{e}'" for e in EFFORTS)
            return (400, f"Invalid value: '{effort}'. Supported values are: {supported}.", "reasoning.effort",
                    "invalid_value")
    for name in ("stream", "store"):
        if name in body and not isinstance(body[name], bool):
            return (400, f"Invalid type for '{name}': expected a boolean, but got {type(body[name]).__name__} "
                    "instead.", name, "invalid_type")
    return None


@dataclass
class _Exchange(LoggedExchange):
    """One Responses request, from arrival to its last byte."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    azure: bool
    created: int = field(default_factory=lambda: int(time.time()))
    api_key: str = ""
    model: str = ""
    behaviour: ModelBehaviour = field(default_factory=ModelBehaviour)
    body: dict[str, Any] = field(default_factory=dict)
    response: web.StreamResponse | None = None
    reasoning_tokens: int = 0  # the plan's reasoning tokens, set by _plan

    @property
    def reasoning(self) -> bool:
        """Whether this request leaves the model's reasoning on."""
        return reasoning_active(None, self.body.get("reasoning"))

    @property
    def reasons(self) -> bool:
        """Whether this answer shows a reasoning item: reasoning on and the model reasons."""
        return self.reasoning and bool(self.behaviour.thinking_tokens or self.behaviour.reasoning_ms)

    @property
    def reasoning_id(self) -> str:
        return f"rs_{self.draws.id_bits:032x}"

    @property
    def response_id(self) -> str:
        return f"resp_{self.draws.id_bits:032x}"

    @property
    def message_id(self) -> str:
        return f"msg_{self.draws.id_bits:032x}"


class ResponsesEndpoint:
    """Request handlers for the Responses API, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def openai(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses``."""
        return await self._handle(request, azure=False)

    async def azure_v1(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/responses`` (Azure v1 form; ``model`` is the deployment)."""
        return await self._handle(request, azure=True)

    async def azure_dated(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/responses?api-version=V`` (Azure dated form)."""
        return await self._handle(request, azure=True, need_version=True)

    async def _handle(self, request: web.Request, *, azure: bool, need_version: bool = False) -> web.StreamResponse:
        """Run one request; a client hanging up ends it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        ex = _Exchange(request, record, draws, t0_perf, t0_loop, azure)
        try:
            return await self._answer(ex, need_version)
        except ConnectionError:
            ex.record.client_disconnected = True
            return ex.response or web.Response(status=499)
        except asyncio.CancelledError:
            ex.record.client_disconnected = True
            raise
        finally:
            ex.finish()

    async def _answer(self, ex: _Exchange, need_version: bool) -> web.StreamResponse:
        """Authenticate, validate, pick the behaviour, then stream, answer or fail."""
        denied = self._authenticate(ex)
        if denied is not None:
            return denied
        if need_version and not ex.request.query.get("api-version"):
            return self._reject(ex, "bad_request", plain_error(
                400, "Missing required parameter: 'api-version'.", code="missing_required_parameter",
                param="api-version"))
        try:
            body = json.loads(await ex.request.read())
        except ValueError:
            body = None
        ex.record.log_options(body)
        problem = validate_request(body)
        if problem is not None:
            status, message, param, code = problem
            return self._reject(ex, "bad_request", plain_error(status, message, code=code, param=param))
        ex.body, ex.model = body, body["model"]
        ex.record.model = ex.model
        behaviour = self.state.scenario.behaviour_for(ex.model)
        if behaviour is None:
            return self._reject(ex, "model_unavailable", error_response(
                "model_unavailable", "openai", model=ex.model, api_key=ex.api_key))
        turn = ex.record.turn = user_turns(body["input"])
        behaviour = ex.behaviour = behaviour.for_turn(turn)
        kind = self.state.injected_error(ex.model, behaviour, ex.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(ex.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(ex, kind, error_response(kind, behaviour.error_shape, model=ex.model,
                                                         api_key=ex.api_key))
        ex.record.outcome = kind or "ok"
        delay_ms = behaviour.first_token_delay_ms(ex.draws.jitter_roll, turn)
        if ex.reasons and ex.record.outcome == "ok":
            delay_ms += behaviour.reasoning_ms
        ex.record.injected_ttft_s = delay_ms / 1000
        if body.get("stream") is True:
            return await _Stream(ex, self._headers(ex)).run()
        return await self._complete(ex)

    def _authenticate(self, ex: _Exchange) -> web.Response | None:
        """Check the key (Azure: ``api-key`` header or bearer); None when accepted."""
        key = request_key(ex.request.headers, bool(ex.azure))
        if not key:
            return self._reject(ex, "auth_error", plain_error(401, MISSING_AUTH))
        ex.api_key = key
        if not self.state.scenario.accepts_key(key):
            return self._reject(ex, "auth_error", error_response("auth_error", "openai", model=ex.model,
                                                                 api_key=key))
        return None

    def _reject(self, ex: _Exchange, outcome: str, response: web.Response) -> web.Response:
        """Add OpenAI's headers to an error response, log it and hand it back."""
        ex.record.outcome = outcome
        response.headers.update(self._headers(ex, outcome))
        ex.finish(response.status)
        return response

    def _headers(self, ex: _Exchange, kind: str | None = None) -> dict[str, str]:
        return openai_headers(ex.record.request_id, ex.elapsed_s(), self.state.uptime_s(), kind)

    async def _complete(self, ex: _Exchange) -> web.Response:
        """A non-streaming ``Response`` object, sent when the last token would be."""
        count, status, reason = _plan(ex)
        first_at = ex.t0_loop + ex.record.injected_ttft_s
        if ex.behaviour.fail_response_with:
            await sleep_until(first_at)
            ex.record.outcome = "response_failed"
            body = _response(ex, "failed", [], _usage(ex, 0), error=_failed_error(ex))
        else:
            await sleep_until(first_at + max(count - 1, 0) * ex.behaviour.inter_token_ms / 1000)
            output = [_message(ex, _text(count), status)] if count else []
            if ex.reasons:
                output.insert(0, {"id": ex.reasoning_id, "type": "reasoning", "summary": [], "status": "completed"})
            body = _response(ex, status, output, _usage(ex, count), reason=reason)
        headers = self._headers(ex)
        ex.finish(200)
        return web.json_response(body, headers=headers, dumps=to_json)


class _Stream(FaultyStream):
    """One SSE answer: lifecycle events, keep-alives, the message, faults and the terminal event."""

    def __init__(self, ex: _Exchange, headers: dict[str, str]) -> None:
        self.ex = self.exchange = ex
        self.b = self.behaviour = ex.behaviour
        self.count, self.status, self.reason = _plan(ex)
        self.first_at = ex.t0_loop + ex.record.injected_ttft_s
        self.headers = headers
        self.seq = 0
        self.sent = 0  # output_text deltas written
        self.msg_index = 0  # 1 once a reasoning item took index 0
        self.reasoning_item: dict[str, Any] | None = None

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        ex, b = self.ex, self.b
        await sleep_until(ex.t0_loop + b.ttfb_ms / 1000)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        ex.response = response
        ex.record.status = 200
        await response.prepare(ex.request)
        await self._send("response.created", response=_response(ex, "in_progress", [], None))
        await self._send("response.in_progress", response=_response(ex, "in_progress", [], None))
        if ex.reasons and ex.record.outcome == "ok":
            await self._reason()
        await self.keepalive_until(self.first_at)
        if b.fail_response_with or b.error_event:
            await sleep_until(self.first_at)
            await self._end_early()
        elif await self.stream_deltas(self.count):
            await sleep_until(self.first_at)  # with no output the verdict still takes until ttft
            await self._finish()
        elif ex.record.outcome == "disconnect":
            return response  # the connection is gone: nothing more to write
        await response.write_eof()
        return response

    async def _end_early(self) -> None:
        """``fail_response_with``: response.failed; ``error_event``: a standalone error event."""
        ex = self.ex
        ex.finish()
        if self.b.fail_response_with:
            ex.record.outcome = "response_failed"
            await self._send("response.failed", response=_response(ex, "failed", [], _usage(ex, 0),
                                                                   error=_failed_error(ex)))
        else:
            ex.record.outcome = "error_event"
            code = self.b.error_event
            message = FAILED_MESSAGES.get(code, f"The request failed with error code '{code}'.")
            await self._send("error", code=code, message=message.format(model=ex.model), param=None)

    async def _reason(self) -> None:
        """The reasoning item: opened now, summary deltas spread over the reasoning time, closed at first_at."""
        ex = self.ex
        self.msg_index = 1
        summary = isinstance(ex.body.get("reasoning"), dict) and bool(ex.body["reasoning"].get("summary"))
        item = {"id": ex.reasoning_id, "type": "reasoning", "summary": [], "status": "in_progress"}
        await self._send("response.output_item.added", output_index=0, item=item)
        start, count = asyncio.get_running_loop().time(), ex.reasoning_tokens if summary else 0
        ids = {"item_id": ex.reasoning_id, "output_index": 0, "summary_index": 0}
        if count:
            await self._send("response.reasoning_summary_part.added", **ids, part={"type": "summary_text", "text": ""})
        gap = (self.first_at - start) / (count + 1)
        for index in range(count):
            await sleep_until(start + (index + 1) * gap)
            await self._send("response.reasoning_summary_text.delta", **ids, delta=_summary_piece(index))
        text = "".join(_summary_piece(i) for i in range(count))
        if count:
            await self._send("response.reasoning_summary_text.done", **ids, text=text)
            await self._send("response.reasoning_summary_part.done", **ids, part={"type": "summary_text", "text": text})
        await sleep_until(self.first_at)
        done = {**item, "status": "completed", "summary": [{"type": "summary_text", "text": text}] if count else []}
        self.reasoning_item = done
        await self._send("response.output_item.done", output_index=0, item=done)

    async def send_malformed(self) -> None:
        await self.ex.response.write(b"event: response.output_text.delta\ndata: {not json\n\n")

    async def send_midstream_error(self, index: int) -> None:
        """``response.failed`` with ``server_error`` (the run ends the body)."""
        ex = self.ex
        error = {"code": "server_error", "message": ERRORS["server_error"].message}
        await self._send("response.failed", response=_response(ex, "failed", [], _usage(ex, self.sent), error=error))

    async def send_keepalive(self) -> None:
        await self.ex.response.write(b": keep-alive\n\n")

    async def send_delta(self, index: int, count: int) -> None:
        """One output_text delta, opening the message item before the first."""
        ex = self.ex
        if index == 0:
            item = {"id": ex.message_id, "type": "message", "status": "in_progress", "content": [],
                    "role": "assistant"}
            await self._send("response.output_item.added", output_index=self.msg_index, item=item)
            await self._send("response.content_part.added", item_id=ex.message_id, output_index=self.msg_index,
                             content_index=0, part=_part(""))
        await self._send("response.output_text.delta", item_id=ex.message_id, output_index=self.msg_index,
                         content_index=0,
                         delta=content_piece(index), logprobs=[])
        self.sent += 1

    async def _finish(self) -> None:
        """Close the message item, then the terminal event; the log is stamped before it."""
        ex, index = self.ex, self.msg_index
        output = [self.reasoning_item] if self.reasoning_item else []
        if self.count:
            text = _text(self.count)
            await self._send("response.output_text.done", item_id=ex.message_id, output_index=index,
                             content_index=0, text=text, logprobs=[])
            await self._send("response.content_part.done", item_id=ex.message_id, output_index=index,
                             content_index=0, part=_part(text))
            output.append(_message(ex, text, self.status))
            await self._send("response.output_item.done", output_index=index, item=output[-1])
        ex.finish()
        await self._send(f"response.{self.status}", response=_response(
            ex, self.status, output, _usage(ex, self.count), reason=self.reason))

    async def _send(self, kind: str, **fields: Any) -> None:
        """Write one event with ``event:`` and ``data:`` lines in one write."""
        data = to_json({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        await self.ex.response.write(f"event: {kind}\ndata: {data}\n\n".encode())


def _plan(ex: _Exchange) -> tuple[int, str, str | None]:
    """How many deltas to send, the final status and the incomplete reason."""
    b = ex.behaviour
    ex.reasoning_tokens = 0
    if ex.record.outcome == "content_blocked":
        return 0, "incomplete", "content_filter"
    reasoning = b.thinking_tokens if ex.reasoning else 0
    cap = ex.body.get("max_output_tokens")
    if cap is not None and reasoning + b.tokens > cap:
        # Reasoning is spent first, as on OpenAI.
        ex.reasoning_tokens = min(reasoning, cap)
        return min(b.tokens, cap - ex.reasoning_tokens), "incomplete", "max_output_tokens"
    ex.reasoning_tokens = reasoning
    if b.finish_reason == "length":
        return b.tokens, "incomplete", "max_output_tokens"
    if b.finish_reason == "content_filter":
        return b.tokens, "incomplete", "content_filter"
    return b.tokens, "completed", None


def _text(count: int) -> str:
    return "".join(content_piece(i) for i in range(count))


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message(ex: _Exchange, text: str, status: str) -> dict[str, Any]:
    return {"id": ex.message_id, "type": "message", "status": status, "content": [_part(text)],
            "role": "assistant"}


def _failed_error(ex: _Exchange) -> dict[str, Any]:
    """``response.error`` for ``fail_response_with``."""
    code = ex.behaviour.fail_response_with
    message = FAILED_MESSAGES.get(code, f"The request failed with error code '{code}'.")
    return {"code": code, "message": message.format(model=ex.model)}


def _response(ex: _Exchange, status: str, output: list[dict], usage: dict | None, *,
              error: dict | None = None, reason: str | None = None) -> dict[str, Any]:
    """A ``Response`` object as the lifecycle events and non-streaming answers carry it."""
    body = ex.body
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": ex.response_id, "object": "response", "created_at": ex.created, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": ex.model, "output": output, "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None}, "service_tier": "default",
        "store": body.get("store", True), "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage if ex.behaviour.usage_mode != "none" else None, "user": None, "metadata": {},
    }


def _usage(ex: _Exchange, output_tokens: int) -> dict[str, Any]:
    """Responses usage; total = input + output, every detail key the SDK type requires."""
    given = ex.body.get("input")
    items = [{"content": given}] if isinstance(given, str) else [i for i in given if isinstance(i, dict)]
    input_tokens = estimate_prompt_tokens(items)
    output_tokens += ex.reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": ex.reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _summary_piece(index: int) -> str:
    """The text of reasoning summary delta ``index``."""
    return "**Answering briefly**" if index == 0 else " ."
