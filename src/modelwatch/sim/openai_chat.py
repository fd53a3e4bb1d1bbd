"""OpenAI Chat Completions on the simulator (PROTOCOLS.md §4.1-4.4, §7).

Routes: ``POST /v1/chat/completions`` (streaming SSE or a plain JSON
``chat.completion``; the model list is in ``models``), and for Azure OpenAI
``POST /openai/v1/chat/completions`` (v1 form: ``model`` is the deployment)
and ``POST /openai/deployments/{deployment}/chat/completions?api-version=V``
(dated form: the deployment in the path is the model). It checks
``Authorization: Bearer`` like OpenAI (Azure: the ``api-key`` header, or a
bearer token) and answers failures with OpenAI's own bodies and headers, or
with an OpenAI-compatible server's layout when the model's ``error_shape`` or
``dialect`` asks for one. All statuses, messages and retry hints live in
``openai_http.ERRORS``; Azure's own bodies (``AZURE_ERRORS``) replace them for
a refused key (401 ``{"error": {"code": "401", ...}}``), an unknown deployment (404
``DeploymentNotFound``), a rate limit (429 with code ``"429"``) and a dated URL
without ``api-version`` (404 ``Resource not found``); the other kinds keep
OpenAI's bodies. Azure streams open with a ``prompt_filter_results`` chunk
(empty ``choices``, ``model`` and ``id``) and carry ``content_filter_results``
on every choice, ``filtered: true`` when ``finish_reason`` is
``content_filter``.

Reasoning (``thinking_tokens``, ``reasoning_ms``, ``reasoning_field``; see
``scenario``): unless the request's effort is ``none`` or ``minimal``, the
first content waits ``reasoning_ms`` longer, the reasoning tokens count in the
usage and against the cap, and with a ``reasoning_field`` they stream as
reasoning deltas first. A ``reasoning_effort`` outside ``EFFORTS`` is a 400.

A stream is: a role chunk sent with the headers at ``ttfb_ms``; optional
``: keep-alive`` comments; content chunks from ``ttft_ms`` on, one every
``inter_token_ms``; a chunk with an empty delta and ``finish_reason``; the usage
chunk (``choices: []``) when asked for; ``data: [DONE]`` (``openai_chat_stream``
builds them). Every wait sleeps until an absolute deadline counted from the
handler's entry, so slow writes never push later events back and the measured
TTFT is the injected one.

Non-streaming requests get the same auth, validation, error injection and
timing (the JSON is sent when the last token would have been); the stream
faults (midstream error, disconnect, stall, malformed chunk, keep-alives)
apply to streams only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import base62 as _base62
from .common import LoggedExchange
from .common import sleep_until as _sleep_until
from .common import to_json as _to_json
from .content import content_piece, user_turns
from .openai_chat_stream import ChatStream, chat_usage, fingerprint, reasoning_piece, token_plan
from .openai_http import (AZURE_ERRORS, EFFORTS, ERRORS, MISSING_AUTH, azure_error_response, error_response,
                          litellm_error_response, ollama_error_response, openai_headers, plain_error,
                          reasoning_active, request_key)
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["ChatCall", "ChatCompletions", "register", "validate_request"]

_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you "
    "have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def validate_request(body: Any) -> tuple[int, str, str | None, str | None] | None:
    """Check a chat request body like OpenAI; returns (status, message, param, code) or None."""
    if not isinstance(body, dict):
        return 400, _BAD_JSON, None, None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return 400, "you must provide a model parameter", None, None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
    if not messages:
        return (400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                "empty array instead.", "messages", "empty_array")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            return (400, f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} "
                    "instead.", name, "invalid_type")
        if value < 1:
            return (400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
                    f"{value} instead.", name, "integer_below_min_value")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        supported = ", ".join(f"'{e}'" for e in EFFORTS)
        return (400, f"Invalid value: '{effort}'. Supported values are: {supported}.", "reasoning_effort",
                "invalid_value")
    return None


def register(app: web.Application, state: SimState) -> None:
    """Add the Chat Completions routes to the simulator app."""
    handler = ChatCompletions(state)
    app.router.add_post("/v1/chat/completions", handler.chat_completions)
    app.router.add_post("/openai/v1/chat/completions", handler.azure_v1)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", handler.azure_dated)


@dataclass
class ChatCall(LoggedExchange):
    """Everything one chat request needs, from arrival to the last byte."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    created: int = field(default_factory=lambda: int(time.time()))
    api_key: str = ""
    model: str = ""
    behaviour: ModelBehaviour = field(default_factory=ModelBehaviour)
    body: dict[str, Any] = field(default_factory=dict)
    response: web.StreamResponse | None = None
    chunks_written: int = 0
    azure: str | None = None  # "v1" or "dated" on the Azure routes
    reasoning_tokens: int = 0  # the plan's reasoning tokens, set with the token plan

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def ollama(self) -> bool:
        return self.behaviour.dialect == "ollama"

    @property
    def litellm_call_id(self) -> str:
        return str(uuid.UUID(int=self.draws.id_bits % (1 << 128)))

    @property
    def completion_id(self) -> str:
        if self.ollama:
            return f"chatcmpl-{self.draws.id_bits % 999}"
        return "chatcmpl-" + _base62(self.draws.id_bits)

    @property
    def reasoning(self) -> bool:
        """Whether this request leaves the model's reasoning on."""
        return reasoning_active(self.body.get("reasoning_effort"), self.body.get("reasoning"))

    @property
    def reasoning_field(self) -> str | None:
        """The delta field reasoning text streams in, if any."""
        return self.behaviour.reasoning_field or ("reasoning" if self.ollama else None)

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    @property
    def obfuscate(self) -> bool:
        options = self.body.get("stream_options")
        return not (isinstance(options, dict) and options.get("include_obfuscation") is False)


class ChatCompletions:
    """Request handlers for Chat Completions, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def _begin(self, request: web.Request) -> ChatCall:
        """Start the clocks and the log entry before anything can await."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        return ChatCall(request, record, draws, t0_perf, t0_loop)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._handle(self._begin(request))

    async def azure_v1(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/chat/completions`` (Azure v1 form; ``model`` is the deployment)."""
        call = self._begin(request)
        call.azure = "v1"
        return await self._handle(call)

    async def azure_dated(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/deployments/{deployment}/chat/completions?api-version=V`` (Azure dated form)."""
        call = self._begin(request)
        call.azure = "dated"
        return await self._handle(call)

    async def _handle(self, call: ChatCall) -> web.StreamResponse:
        """Answer one request; client disconnects end it quietly."""
        try:
            return await self._answer(call)
        except ConnectionError:
            # The client hung up mid-answer: normal for probes with timeouts.
            call.record.client_disconnected = True
            return call.response or web.Response(status=499)
        except asyncio.CancelledError:
            call.record.client_disconnected = True
            raise
        finally:
            call.finish()

    async def _answer(self, call: ChatCall) -> web.StreamResponse:
        """Authenticate, validate, pick the behaviour, then stream, complete or fail."""
        deployment = call.request.match_info.get("deployment")
        body = await self._read_json(call, deployment)
        behaviour = self.state.scenario.behaviour_for(call.model) if call.model else None
        if behaviour is not None:
            call.behaviour = behaviour  # before auth: the Ollama dialect takes any key
        denied = self._authenticate(call)
        if denied is not None:
            return denied
        if call.azure == "dated" and not call.request.query.get("api-version"):
            return self._reject(call, "bad_request", azure_error_response("no_api_version"))
        problem = validate_request(body)
        if problem is not None:
            status, message, param, code = problem
            return self._reject(call, "bad_request", plain_error(status, message, code=code, param=param))
        if behaviour is None:
            return self._reject(call, "model_unavailable", self._error_response(call, "model_unavailable", "openai"))
        turn = call.record.turn = user_turns(body["messages"])
        behaviour = call.behaviour = behaviour.for_turn(turn)
        kind = self.state.injected_error(call.model, behaviour, call.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await _sleep_until(call.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(call, kind, self._error_response(call, kind, behaviour.error_shape))
        call.record.outcome = kind or "ok"
        delay_ms = behaviour.first_token_delay_ms(call.draws.jitter_roll, turn)
        if call.reasoning and call.record.outcome == "ok":
            delay_ms += behaviour.reasoning_ms
        call.record.injected_ttft_s = delay_ms / 1000
        if body.get("stream") is True:
            return await ChatStream(call, self._headers(call)).run()
        return await self._complete(call)

    async def _read_json(self, call: ChatCall, deployment: str | None) -> Any:
        """The JSON body (None if it is not JSON); sets the model and logs the settings."""
        try:
            body = json.loads(await call.request.read())
        except ValueError:
            body = None
        if isinstance(body, dict):
            if deployment is not None:
                body["model"] = deployment  # the dated Azure form names the deployment in the path
            call.body = body
            call.model = body["model"] if isinstance(body.get("model"), str) else ""
        call.record.model = call.model or None
        call.record.log_options(body)
        return body

    def _authenticate(self, call: ChatCall) -> web.Response | None:
        """Check the key like OpenAI (Azure: ``api-key`` or bearer); None when it is accepted."""
        if call.ollama:
            return None  # Ollama takes any bearer token, or none
        key = request_key(call.request.headers, bool(call.azure))
        if not key:
            missing = azure_error_response("auth_error") if call.azure else plain_error(401, MISSING_AUTH)
            return self._reject(call, "auth_error", missing)
        call.api_key = key
        if not self.state.scenario.accepts_key(key):
            return self._reject(call, "auth_error", self._error_response(call, "auth_error", "openai"))
        return None

    def _reject(self, call: ChatCall, outcome: str, response: web.Response) -> web.Response:
        """Add OpenAI's headers to an error response, log it and hand it back."""
        call.record.outcome = outcome
        if call.behaviour.error_framing == "sse" and response.content_type == "application/json":
            # a gateway that frames the error body as one SSE event, status kept
            response = web.Response(status=response.status, body=b"data: " + response.body + b"\n\n",
                                    content_type="text/event-stream")
        response.headers.update(self._headers(call, outcome))
        call.finish(response.status)
        return response

    def _error_response(self, call: ChatCall, kind: str, shape: str) -> web.Response:
        """The response for an error kind: Azure's or Ollama's own, JSON in ``shape``, or a CDN HTML page."""
        if call.azure and kind in AZURE_ERRORS:
            return azure_error_response(kind, call.request.query.get("api-version", "v1"))
        if call.ollama and not ERRORS[kind].html:
            return ollama_error_response(kind, call.model)
        if call.behaviour.dialect == "litellm" and not ERRORS[kind].html:
            return litellm_error_response(kind, call.model, call.litellm_call_id)
        return error_response(kind, shape, model=call.model, api_key=call.api_key)

    def _headers(self, call: ChatCall, kind: str | None = None) -> dict[str, str]:
        """``x-request-id``, ``x-ratelimit-*`` and retry hints, as OpenAI sends them."""
        headers = openai_headers(call.request_id, call.elapsed_s(), self.state.uptime_s(), kind)
        if call.behaviour.dialect == "litellm":  # LiteLLM names the call its own way
            del headers["x-request-id"]
            headers["x-litellm-call-id"] = call.litellm_call_id
        return headers

    async def _complete(self, call: ChatCall) -> web.Response:
        """A non-streaming ``chat.completion``, sent when the last token would be."""
        behaviour = call.behaviour
        count, finish_reason = token_plan(call)
        first_at = call.t0_loop + call.record.injected_ttft_s
        await _sleep_until(first_at + max(count - 1, 0) * behaviour.inter_token_ms / 1000)
        text = "".join(content_piece(i) for i in range(count))
        message = {"role": "assistant", "content": text if count else None, "refusal": None, "annotations": []}
        if call.reasoning_field and call.reasoning_tokens:
            message[call.reasoning_field] = "".join(reasoning_piece(i) for i in range(call.reasoning_tokens))
        body = {
            "id": call.completion_id, "object": "chat.completion", "created": call.created, "model": call.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": chat_usage(call, count), "service_tier": "default", "system_fingerprint": fingerprint(call.model),
        }
        headers = self._headers(call)
        call.finish(200)
        return web.json_response(body, headers=headers, dumps=_to_json)
