"""OpenAI's HTTP conventions, shared by every OpenAI-style route of the simulator.

Chat Completions, Responses, the Realtime handshake, the model lists and the
app's own 404s answer with these: the error table by error kind (``ERRORS``,
PROTOCOLS.md §4.4) and its body layouts (``error_shape``, §7), Azure's, Ollama's
and LiteLLM's own bodies, the ``x-request-id`` / ``x-ratelimit-*`` / retry
headers, the key masking of OpenAI's 401, and the reasoning efforts requests
may name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .common import to_json as _to_json

__all__ = [
    "AZURE_ERRORS", "EFFORTS", "ERRORS", "MISSING_AUTH", "RATE_LIMIT_REQUESTS", "RATE_LIMIT_TOKENS", "ErrorSpec",
    "azure_error_response", "error_body", "error_response", "go_duration", "litellm_error_response",
    "mask_api_key", "ollama_error_response", "openai_headers", "plain_error", "reasoning_active",
]

RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 200_000
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


def request_key(headers: Any, azure: bool) -> str:
    """The key a request carries: Azure's ``api-key`` header (on Azure routes), else a bearer token; "" if none."""
    key = headers.get("api-key", "").strip() if azure else ""
    if not key:
        scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    return key


def mask_api_key(key: str) -> str:
    """Echo a key the way OpenAI's 401 message does: first 8, stars, last 4."""
    if len(key) <= 12:
        return key[:2] + "*" * max(4, len(key) - 2)
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration, as OpenAI's reset headers do: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
