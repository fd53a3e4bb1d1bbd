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
``ERRORS``; Azure's own bodies (``AZURE_ERRORS``) replace them for a refused
key (401 ``{"error": {"code": "401", ...}}``), an unknown deployment (404
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
chunk (``choices: []``) when asked for; ``data: [DONE]``. Every wait sleeps
until an absolute deadline counted from the handler's entry, so slow writes
never push later events back and the measured TTFT is the injected one.

Non-streaming requests get the same auth, validation, error injection and
timing (the JSON is sent when the last token would have been); the stream
faults (midstream error, disconnect, stall, malformed chunk, keep-alives)
apply to streams only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import base62 as _base62
from .common import FaultyStream, LoggedExchange, reset_connection
from .common import sleep_until as _sleep_until
from .common import to_json as _to_json
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = [
    "AZURE_ERRORS", "EFFORTS", "ERRORS", "MISSING_AUTH", "ErrorSpec", "reasoning_active", "content_piece", "error_body", "error_response", "mask_api_key",
    "openai_headers", "plain_error", "register", "reset_connection", "validate_request",
]

WORDS = (" from", " the", " modelwatch", " simulator", ",", " streaming", " one", " token", " at", " a", " time", ".")
RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 200_000
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# Efforts that turn reasoning off (none) or as good as off (minimal) in the simulator.
_NO_REASONING = ("none", "minimal")


@dataclass(frozen=True)
class ErrorSpec:
    """How OpenAI answers one error kind; ``message`` may use {model} and {key}."""

    status: int
    reason: str
    type: str | None
    code: str | None
    message: str
    param: str | None = None
    retry_after_s: float | None = None
    html: bool = False


ERRORS: dict[str, ErrorSpec] = {
    "auth_error": ErrorSpec(
        401, "Unauthorized", "invalid_request_error", "invalid_api_key",
        "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    "quota_exhausted": ErrorSpec(
        429, "Too Many Requests", "insufficient_quota", "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "rate_limited": ErrorSpec(
        429, "Too Many Requests", "tokens", "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-modelwatchsim on tokens per min (TPM): Limit 200000, "
        "Used 199850, Requested 600. Please try again in 1s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        retry_after_s=1,
    ),
    "overloaded": ErrorSpec(
        503, "Service Unavailable", "service_unavailable_error", "slow_down",
        "The engine is currently overloaded, please try again later", retry_after_s=2,
    ),
    "server_error": ErrorSpec(
        500, "Internal Server Error", "server_error", None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_gateway": ErrorSpec(502, "Bad Gateway", None, None, "502 Bad Gateway", html=True),
    "gateway_timeout": ErrorSpec(504, "Gateway Time-out", None, None, "504 Gateway Time-out", html=True),
    "model_unavailable": ErrorSpec(
        404, "Not Found", "invalid_request_error", "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    "bad_request": ErrorSpec(
        400, "Bad Request", "invalid_request_error", "unsupported_parameter",
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        param="max_tokens",
    ),
    # Groq's flex tier; the body layout is a best guess (PROTOCOLS.md §7 gives only the status).
    "capacity_exceeded": ErrorSpec(
        498, "Capacity Exceeded", "service_unavailable_error", "capacity_exceeded",
        "Flex tier capacity exceeded. Please try again later.", retry_after_s=1,
    ),
}

# Azure OpenAI's own error bodies [OBS: bodies quoted in public issue threads]; other kinds use ERRORS.
AZURE_ERRORS: dict[str, tuple[int, str, str]] = {
    "auth_error": (401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                   "provide a valid key for an active subscription and use a correct regional API endpoint for "
                   "your resource."),
    "model_unavailable": (404, "DeploymentNotFound", "The API deployment for this resource does not exist. If you "
                          "created the deployment within the last 5 minutes, please wait a moment and try again."),
    "rate_limited": (429, "429", "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                     "{version} have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry "
                     "after 1 second. Please go here: https://aka.ms/oai/quotaincrease if you would like to further "
                     "increase the default rate limit."),
    "no_api_version": (404, "404", "Resource not found"),
}
_AZURE_FILTER = {name: {"filtered": False, "severity": "safe"}
                 for name in ("hate", "self_harm", "sexual", "violence")}
# Ollama's /v1 error types by status [SRC ollama openai/openai.go].
_OLLAMA_TYPES = {400: "invalid_request_error", 404: "not_found_error"}

# Class-like ``type`` names used by vLLM's flat error objects.
_VLLM_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
               429: "RateLimitError", 498: "ServiceUnavailableError", 503: "ServiceUnavailableError"}
_GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                    498: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_CDN_PAGE = (
    "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    "<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
MISSING_AUTH = "Missing bearer or basic authentication in header"
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you "
    "have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def error_body(spec: ErrorSpec, shape: str, message: str) -> Any:
    """The JSON error body for ``spec`` in one of the ``error_shape`` layouts (§4.4, §7)."""
    if shape == "openai_numeric_code":
        return {"error": {"message": message, "type": spec.type, "param": spec.param, "code": spec.status}}
    if shape == "vllm_flat":
        vllm_type = _VLLM_TYPES.get(spec.status, "InternalServerError")
        return {"object": "error", "message": message, "type": vllm_type, "param": spec.param, "code": spec.status}
    if shape == "gemini_array":
        status = _GOOGLE_STATUSES.get(spec.status, "UNKNOWN")
        return [{"error": {"code": spec.status, "message": message, "status": status}}]
    if shape == "mistral_detail":
        return {"detail": "Unauthorized" if spec.status == 401 else message}
    return {"error": {"message": message, "type": spec.type, "param": spec.param, "code": spec.code}}


def plain_error(
    status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
    param: str | None = None, headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI-shaped JSON error response (auth, validation, routing)."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers, dumps=_to_json)


def error_response(kind: str, shape: str, *, model: str, api_key: str) -> web.Response:
    """The response for an error kind: JSON in ``shape``, or a CDN HTML page (shared with Realtime)."""
    spec = ERRORS[kind]
    if spec.html:
        page = _CDN_PAGE.format(title=spec.message)
        return web.Response(status=spec.status, reason=spec.reason, text=page, content_type="text/html")
    message = spec.message.format(model=model, key=mask_api_key(api_key))
    return web.json_response(error_body(spec, shape, message), status=spec.status, reason=spec.reason,
                             dumps=_to_json)


def azure_error_response(kind: str, version: str = "v1") -> web.Response:
    """Azure OpenAI's own body for ``kind`` (a key in ``AZURE_ERRORS``)."""
    status, code, message = AZURE_ERRORS[kind]
    body = {"error": {"code": code, "message": message.format(version=version)}}
    return web.json_response(body, status=status, dumps=_to_json)


def ollama_error_response(kind: str, model: str) -> web.Response:
    """Ollama's ``/v1`` error for ``kind``: OpenAI's layout, Ollama's types and messages."""
    spec = ERRORS[kind]
    message = (f'model "{model}" not found, try pulling it first' if kind == "model_unavailable"
               else spec.message.format(model=model, key=""))
    body = {"error": {"message": message, "type": _OLLAMA_TYPES.get(spec.status, "api_error"), "param": None,
                      "code": None}}
    return web.json_response(body, status=spec.status, reason=spec.reason, dumps=_to_json)


# LiteLLM proxy 1.x exception class names by status (litellm/exceptions.py), prefixed to messages.
_LITELLM_CLASSES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 408: "Timeout",
                    429: "RateLimitError", 498: "RateLimitError", 503: "ServiceUnavailableError"}


def litellm_error_response(kind: str, model: str, call_id: str) -> web.Response:
    """LiteLLM proxy's error for ``kind``: OpenAI's layout with ``type: "None"`` and a string code.

    ``overloaded`` is its router's answer once every deployment of the model
    failed and went into cooldown: a 429, although the upstream is down.
    """
    if kind == "overloaded":
        status = 429
        message = (f"No deployments available for selected model, Try again in 5 seconds. Passed model={model}. "
                   f"pre-call-checks=False, cooldown_list=[('{call_id[:8]}', {{'exception_received': "
                   f"'litellm.ServiceUnavailableError: The engine is currently overloaded', 'status_code': '503', "
                   f"'timestamp': 1765100000.0, 'cooldown_time': 5}})]")
        etype = "None"
    else:
        spec = ERRORS[kind]
        status, etype = spec.status, spec.type or "None"
        name = _LITELLM_CLASSES.get(status, "InternalServerError")
        message = f"litellm.{name}: {spec.message.format(model=model, key='')}"
    body = {"error": {"message": message, "type": etype, "param": None, "code": str(status)}}
    return web.json_response(body, status=status, dumps=_to_json)


def reasoning_active(effort: Any, reasoning: Any = None) -> bool:
    """Whether a request leaves reasoning on: no effort ``none``/``minimal`` and no ``enabled: false``."""
    if isinstance(reasoning, dict):
        if reasoning.get("enabled") is False:
            return False
        effort = effort if effort is not None else reasoning.get("effort")
    return effort not in _NO_REASONING


def openai_headers(request_id: str, elapsed_s: float, uptime_s: float, kind: str | None = None) -> dict[str, str]:
    """``x-request-id``, ``x-ratelimit-*`` and retry hints, as OpenAI sends them (shared with Realtime)."""
    left_in_minute = 60 - uptime_s % 60
    headers = {
        "x-request-id": request_id,
        "openai-version": "2020-10-01",
        "openai-processing-ms": str(round(elapsed_s * 1000)),
        "x-ratelimit-limit-requests": str(RATE_LIMIT_REQUESTS),
        "x-ratelimit-limit-tokens": str(RATE_LIMIT_TOKENS),
        "x-ratelimit-remaining-requests": str(RATE_LIMIT_REQUESTS - 1),
        "x-ratelimit-remaining-tokens": "0" if kind == "rate_limited" else str(RATE_LIMIT_TOKENS - 1000),
        "x-ratelimit-reset-requests": go_duration(left_in_minute),
        "x-ratelimit-reset-tokens": "1s" if kind == "rate_limited" else "0s",
    }
    retry_after = ERRORS[kind].retry_after_s if kind in ERRORS else None
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    return headers


def mask_api_key(key: str) -> str:
    """Echo a key the way OpenAI's 401 message does: first 8, stars, last 4."""
    if len(key) <= 12:
        return key[:2] + "*" * max(4, len(key) - 2)
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


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


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """Roughly count prompt tokens: ~4 characters a token plus OpenAI's per-message overhead."""
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        # Odd content types are the client's problem, not a reason to fail the count.
        total += 4 + math.ceil(len(content if isinstance(content, str) else "") / 4)
    return total


def content_piece(index: int) -> str:
    """The text of content chunk ``index``: "OK", then words."""
    return "OK" if index == 0 else WORDS[(index - 1) % len(WORDS)]


def register(app: web.Application, state: SimState) -> None:
    """Add the Chat Completions routes to the simulator app."""
    handler = ChatCompletions(state)
    app.router.add_post("/v1/chat/completions", handler.chat_completions)
    app.router.add_post("/openai/v1/chat/completions", handler.azure_v1)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", handler.azure_dated)


@dataclass
class _Call(LoggedExchange):
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

    def _begin(self, request: web.Request) -> _Call:
        """Start the clocks and the log entry before anything can await."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        return _Call(request, record, draws, t0_perf, t0_loop)

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

    async def _handle(self, call: _Call) -> web.StreamResponse:
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

    async def _answer(self, call: _Call) -> web.StreamResponse:
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
        kind = behaviour.injected_error(self.state.uptime_s(), call.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await _sleep_until(call.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(call, kind, self._error_response(call, kind, behaviour.error_shape))
        call.record.outcome = kind or "ok"
        delay_ms = behaviour.first_token_delay_ms(call.draws.jitter_roll)
        if call.reasoning and call.record.outcome == "ok":
            delay_ms += behaviour.reasoning_ms
        call.record.injected_ttft_s = delay_ms / 1000
        if body.get("stream") is True:
            return await _Stream(call, self._headers(call)).run()
        return await self._complete(call)

    async def _read_json(self, call: _Call, deployment: str | None) -> Any:
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

    def _authenticate(self, call: _Call) -> web.Response | None:
        """Check the key like OpenAI (Azure: ``api-key`` or bearer); None when it is accepted."""
        if call.ollama:
            return None  # Ollama takes any bearer token, or none
        key = call.request.headers.get("api-key", "").strip() if call.azure else ""
        if not key:
            scheme, _, token = call.request.headers.get("Authorization", "").strip().partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            missing = azure_error_response("auth_error") if call.azure else plain_error(401, MISSING_AUTH)
            return self._reject(call, "auth_error", missing)
        call.api_key = key
        if not self.state.scenario.accepts_key(key):
            return self._reject(call, "auth_error", self._error_response(call, "auth_error", "openai"))
        return None

    def _reject(self, call: _Call, outcome: str, response: web.Response) -> web.Response:
        """Add OpenAI's headers to an error response, log it and hand it back."""
        call.record.outcome = outcome
        if call.behaviour.error_framing == "sse" and response.content_type == "application/json":
            # a gateway that frames the error body as one SSE event, status kept
            response = web.Response(status=response.status, body=b"data: " + response.body + b"\n\n",
                                    content_type="text/event-stream")
        response.headers.update(self._headers(call, outcome))
        call.finish(response.status)
        return response

    def _error_response(self, call: _Call, kind: str, shape: str) -> web.Response:
        """The response for an error kind: Azure's or Ollama's own, JSON in ``shape``, or a CDN HTML page."""
        if call.azure and kind in AZURE_ERRORS:
            return azure_error_response(kind, call.request.query.get("api-version", "v1"))
        if call.ollama and not ERRORS[kind].html:
            return ollama_error_response(kind, call.model)
        if call.behaviour.dialect == "litellm" and not ERRORS[kind].html:
            return litellm_error_response(kind, call.model, call.litellm_call_id)
        return error_response(kind, shape, model=call.model, api_key=call.api_key)

    def _headers(self, call: _Call, kind: str | None = None) -> dict[str, str]:
        """``x-request-id``, ``x-ratelimit-*`` and retry hints, as OpenAI sends them."""
        headers = openai_headers(call.request_id, call.elapsed_s(), self.state.uptime_s(), kind)
        if call.behaviour.dialect == "litellm":  # LiteLLM names the call its own way
            del headers["x-request-id"]
            headers["x-litellm-call-id"] = call.litellm_call_id
        return headers

    async def _complete(self, call: _Call) -> web.Response:
        """A non-streaming ``chat.completion``, sent when the last token would be."""
        behaviour = call.behaviour
        count, finish_reason = _token_plan(call)
        first_at = call.t0_loop + call.record.injected_ttft_s
        await _sleep_until(first_at + max(count - 1, 0) * behaviour.inter_token_ms / 1000)
        text = "".join(content_piece(i) for i in range(count))
        message = {"role": "assistant", "content": text if count else None, "refusal": None, "annotations": []}
        if call.reasoning_field and call.reasoning_tokens:
            message[call.reasoning_field] = "".join(_reasoning_piece(i) for i in range(call.reasoning_tokens))
        body = {
            "id": call.completion_id, "object": "chat.completion", "created": call.created, "model": call.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": _usage(call, count), "service_tier": "default", "system_fingerprint": _fingerprint(call.model),
        }
        headers = self._headers(call)
        call.finish(200)
        return web.json_response(body, headers=headers, dumps=_to_json)


class _Stream(FaultyStream):
    """One SSE answer: role chunk, keep-alives, content, faults, finish, usage, [DONE]."""

    def __init__(self, call: _Call, headers: dict[str, str]) -> None:
        self.call = self.exchange = call
        self.behaviour = call.behaviour
        self.count, self.finish_reason = _token_plan(call)
        self.first_at = call.t0_loop + call.record.injected_ttft_s
        self.headers = headers
        # OpenAI puts "usage": null on every chunk once the usage chunk is promised.
        self.usage_chunk = call.include_usage and self.behaviour.usage_mode in ("include_usage", "x_groq")

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        call, behaviour = self.call, self.behaviour
        await _sleep_until(call.t0_loop + behaviour.ttfb_ms / 1000)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        response.headers["openai-processing-ms"] = str(round(call.elapsed_s() * 1000))
        call.response = response
        call.record.status = 200
        await response.prepare(call.request)
        if call.azure:
            await self._send(_azure_prompt_filter_chunk())
        await self._send(self._chunk({"role": "assistant", "content": ""}))
        await self._stream_reasoning(call.t0_loop + behaviour.ttfb_ms / 1000)
        await self.keepalive_until(self.first_at)
        if not await self.stream_deltas(self.count):
            return response
        # With no content (content_blocked, tokens: 0) the verdict still takes until ttft.
        await _sleep_until(self.first_at)
        await self._finish()
        await response.write_eof()
        return response

    async def _stream_reasoning(self, start: float) -> None:
        """Reasoning deltas spread evenly between the headers and the first content."""
        field_name, count = self.call.reasoning_field, self.call.reasoning_tokens
        if not field_name or not count:
            return
        gap = (self.first_at - start) / (count + 1)
        for index in range(count):
            await _sleep_until(start + (index + 1) * gap)
            await self._send(self._chunk({"role": "assistant", "content": "",
                                          field_name: _reasoning_piece(index)}))

    async def send_delta(self, index: int, count: int) -> None:
        await self._send(self._chunk({"content": content_piece(index)}))

    async def send_malformed(self) -> None:
        await self._send("{not json")

    async def send_midstream_error(self, index: int) -> None:
        await self._send(_to_json(_midstream_error(self.behaviour.error_shape)))
        await self.call.response.write_eof()

    async def send_keepalive(self) -> None:
        """A ``: keep-alive`` comment (DeepSeek style)."""
        await self.call.response.write(b": keep-alive\n\n")

    async def send_interrupted(self) -> None:
        """``[DONE]`` with no finish_reason chunk before it, as an interrupted llama-cpp-python stream ends."""
        await self._send("[DONE]")
        await self.call.response.write_eof()

    async def _finish(self) -> None:
        """Finish chunk, usage chunk and [DONE]; the log is stamped before the last one."""
        call, mode = self.call, self.behaviour.usage_mode
        usage = _usage(call, self.count if self.finish_reason != "content_filter" else 0)
        extra: dict[str, Any] = {}
        if mode == "always_final":
            extra["usage"] = usage
        elif mode == "x_groq":
            extra["x_groq"] = {"id": call.request_id, "usage": {**_groq_times(call), **_basic_usage(usage)}}
        events = [self._chunk({}, self.finish_reason, **extra)]
        if self.usage_chunk:
            events.append(self._chunk(None, usage=usage))
        if self.behaviour.done:
            events.append("[DONE]")
        for event in events[:-1]:
            await self._send(event)
        call.finish()
        await self._send(events[-1])

    def _chunk(self, delta: dict | None, finish_reason: str | None = None, **extra: Any) -> str:
        """One ``chat.completion.chunk``; ``delta=None`` means the ``choices: []`` usage chunk."""
        call = self.call
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if call.azure and choices:
            filtered = finish_reason == "content_filter"
            choices[0]["content_filter_results"] = {
                name: {"filtered": filtered, "severity": "high" if filtered and name == "violence" else "safe"}
                for name in _AZURE_FILTER}
        chunk: dict[str, Any] = {
            "id": call.completion_id, "object": "chat.completion.chunk", "created": call.created,
            "model": call.model, "service_tier": "default", "system_fingerprint": _fingerprint(call.model),
            "choices": choices,
        }
        if call.ollama:
            chunk["system_fingerprint"] = "fp_ollama"
            del chunk["service_tier"]
        if self.usage_chunk:
            chunk["usage"] = None
        chunk.update(extra)
        if call.obfuscate and not call.ollama:
            chunk["obfuscation"] = _obfuscation(call.request_id, call.chunks_written)
        call.chunks_written += 1
        return _to_json(chunk)

    async def _send(self, data: str) -> None:
        """Write one SSE event in one write, so no event is split across TCP sends by us."""
        await self.call.response.write(f"data: {data}\n\n".encode())


def _token_plan(call: _Call) -> tuple[int, str]:
    """How many content chunks to send and the finish_reason, honouring max tokens.

    Reasoning tokens are spent first and count against the cap, as on OpenAI;
    the plan's reasoning count is kept on the call for the usage and deltas.
    """
    behaviour = call.behaviour
    call.reasoning_tokens = 0
    if call.record.outcome == "content_blocked":
        return 0, "content_filter"
    reasoning = behaviour.thinking_tokens if call.reasoning else 0
    cap = call.body.get("max_tokens") if call.ollama else (
        call.body.get("max_completion_tokens") or call.body.get("max_tokens"))
    if cap is not None and reasoning + behaviour.tokens > cap:
        call.reasoning_tokens = min(reasoning, cap)
        return min(behaviour.tokens, cap - call.reasoning_tokens), "length"
    call.reasoning_tokens = reasoning
    return behaviour.tokens, behaviour.finish_reason


def _usage(call: _Call, content_tokens: int) -> dict[str, Any]:
    """A full Chat Completions usage object; completion counts reasoning, total = prompt + completion."""
    prompt = estimate_prompt_tokens(call.body.get("messages", []))
    completion = content_tokens + call.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": call.reasoning_tokens, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _reasoning_piece(index: int) -> str:
    """The text of reasoning delta ``index``."""
    return "Thinking" if index == 0 else " it over"


def _azure_prompt_filter_chunk() -> str:
    """The chunk an Azure stream opens with: no choices, no model, the prompt's filter verdict."""
    return _to_json({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}]})


def _basic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """The three token counts, without the details objects (Groq's layout)."""
    return {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _groq_times(call: _Call) -> dict[str, float]:
    """Groq's timing fields inside ``x_groq.usage``, from the real elapsed time."""
    total = call.elapsed_s()
    first = call.record.actual_ttft_s or total
    return {"queue_time": 0.0, "prompt_time": round(first, 6), "completion_time": round(total - first, 6),
            "total_time": round(total, 6)}


def _midstream_error(shape: str) -> Any:
    """The ``data:`` payload of a mid-stream server error in ``shape``."""
    spec = ERRORS["server_error"]
    body = error_body(spec, shape, spec.message)
    # vLLM wraps its flat error object in "error" when it fails mid-stream (§7).
    return {"error": body} if shape == "vllm_flat" else body


def _obfuscation(request_id: str, index: int) -> str:
    """Deterministic filler for the ``obfuscation`` field (real OpenAI pads chunks with it)."""
    return hashlib.blake2s(f"{request_id}:{index}".encode(), digest_size=6).hexdigest()


def _fingerprint(model: str) -> str:
    """A stable ``system_fingerprint`` per model name."""
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration, as OpenAI's reset headers do: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
