"""OpenAI Chat Completions streaming probe (OpenAI and OpenAI-compatible servers).

Sends a tiny fixed prompt with a small output cap and ``stream_options.
include_usage``, then times: response headers (``ttfb_s``), the first chunk
whose ``delta.content`` is a non-empty string (``ttft_s``; the role-only first
chunk does not count) and ``data: [DONE]`` (``duration_s``). Decoding and
classification are pure functions over bytes and dicts, tested with captures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.config import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure, outcome_for_status
from modelwatch.probes.auth import auth_headers
from modelwatch.probes.base import Measurement, read_body, read_event_stream, request_id_from
from modelwatch.sse import SSEDecoder

ERROR_BODY_LIMIT = 65536

_QUOTA = {"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached",
          "billing_not_active", "insufficient_balance", "payment_required"}
_AUTH = {"invalid_api_key", "invalid_authentication", "unauthorized", "authentication_error",
         "permission_denied", "permission_error", "invalid_organization", "invalid_project",
         "unsupported_country_region_territory", "api_key_invalid"}
_MODEL = {"model_not_found", "deployment_not_found", "deploymentnotfound"}
# Generic "not found" types: the message tells a missing model from a missing endpoint.
_NOT_FOUND = {"not_found_error", "notfounderror", "not_found"}
_RATE = {"rate_limit_exceeded", "rate_limit_error", "capacity_exceeded"}
_OVERLOAD = {"slow_down", "server_is_overloaded", "overloaded", "overloaded_error",
             "service_unavailable_error", "engine_overloaded", "unavailable"}
_SERVER = {"server_error", "internal_error", "internalservererror", "api_error", "internal"}
_CONTENT = {"content_filter", "content_policy_violation", "moderation"}


ENDPOINT_NOT_FOUND = "endpoint_not_found"
GATEWAY_COOLDOWN = "gateway_cooldown"
# LiteLLM's router (1.x) answers 429 "No deployments available for selected model, Try again in
# 5 seconds ... cooldown_list=[...]" once every upstream deployment of a model failed and is
# cooling down: the provider side is down, not our rate limit.
_COOLDOWN = re.compile(r"no deployments available for selected model|deployments for selected model "
                       r"are in cooldown|cooldown_list=", re.I)
_NAMES_MODEL = re.compile(r"\b(?:models?|deployments?)\b", re.I)
_URL_PATH = re.compile(r"/\S*")  # "Invalid URL (POST /openai/deployments/x/...)" names a path, not a model


def is_gateway_cooldown(message: str) -> bool:
    """Whether an error message is a gateway's "every deployment is cooling down" answer."""
    return bool(_COOLDOWN.search(message))


def is_missing_endpoint(status: int | None, names_model: bool, message: str) -> bool:
    """A 404 about the path (FastAPI's ``{"detail": "Not Found"}``, an HTML or empty page), not the model.

    ``names_model``: the body carries a model-specific code (``model_not_found``).
    """
    return status == 404 and not names_model and not _NAMES_MODEL.search(_URL_PATH.sub("", message))


def status_failure(classified: tuple[Outcome, str, str], status: int,
                   request: aiohttp.RequestInfo) -> ProbeFailure:
    """The failure of an error status; a missing endpoint names the URL path (never its query)."""
    outcome, code, message = classified
    if code == ENDPOINT_NOT_FOUND:
        said = f": {message}" if message and message != "HTTP 404" else ""
        message = f"no endpoint at {request.method} {request.url.path} (HTTP 404{said})"
    return ProbeFailure(outcome, code, message, http_status=status)


def build_request(job: ProbeJob) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request."""
    p = job.probe
    cap_field = p.max_tokens_field or (
        "max_completion_tokens" if job.provider.type == "openai" else "max_tokens")
    body = {
        "model": job.model,
        "messages": [{"role": "user", "content": p.prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        cap_field: p.max_tokens,
    }
    if p.reasoning_effort is not None:
        body["reasoning_effort"] = p.reasoning_effort
    if p.extra_body:
        # Validated in config: it never overrides the fields the probe measures or caps by.
        body = {**p.extra_body, **body}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **auth_headers(job)}
    url = f"{job.provider.base_url}/chat/completions"
    if job.provider.type == "azure-openai" and job.provider.api_version:
        # the dated form: the deployment is in the path
        url = (f"{job.provider.base_url}/deployments/{quote(job.model, safe='')}/chat/completions"
               f"?api-version={quote(job.provider.api_version)}")
    return url, headers, json.dumps(body).encode()


def _norm(value: Any) -> str:
    text = str(value).strip().lower() if value is not None else ""
    return "" if text in ("none", "null") else text  # LiteLLM writes a missing type as "None"


def error_fields(body: Any) -> tuple[str, str, str, int | None]:
    """(type, code, message, numeric code) from any error shape OpenAI-like servers send.

    Shapes: ``{"error": {...}}``, ``{"error": "text"}``, vLLM's flat
    ``{"object": "error", ...}``, Gemini-compat's ``[{"error": {...}}]``,
    Mistral's ``{"detail": ...}`` and ``{"message": ...}``, plain text or HTML.
    """
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, list) and inner:
            inner = inner[0]
        if isinstance(inner, str):
            return "", "", inner, None
        if isinstance(inner, dict):
            code = inner.get("code")
            if isinstance(code, str) and code.isdigit():
                code = int(code)  # Azure writes statuses as strings: {"code": "429"}
            number = code if isinstance(code, int) and not isinstance(code, bool) else None
            status = inner.get("status")  # Google-style "UNAVAILABLE", "NOT_FOUND", ...
            message = inner.get("message") or inner.get("detail") or body.get("detail") or ""
            etype = inner.get("type") or status or ""
            code = _google_reason(inner) or ("" if number is not None else _norm(code))
            return _norm(etype), code, str(message), number
        return "", "", str(inner), None
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    text = str(body or "")
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    if title:
        return "", "", f"HTML body: {title.group(1).strip()}", None
    return "", "", text.strip(), None


def _google_reason(inner: dict) -> str:
    """The ErrorInfo ``reason`` of a Google-style error (e.g. API_KEY_INVALID), lower-cased."""
    for detail in inner.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return _norm(detail["reason"])
    return ""


def classify_openai_error(status: int | None, body: Any) -> tuple[Outcome, str, str]:
    """Outcome, error code and message for an error status or an in-stream error object.

    ``status`` is None for an error that arrived inside a 200 stream.
    """
    etype, code, message, number = error_fields(body)
    if status is None and number is not None:
        status = number
    message = message or (f"HTTP {status}" if status else "")
    names = {etype, code} - {""}
    error_code = code or etype or (f"http_{status}" if status else "stream_error")
    if names & _QUOTA or status == 402:
        return Outcome.QUOTA_EXHAUSTED, error_code, message
    if _flagged(body):
        return Outcome.CONTENT_BLOCKED, "moderation", message
    if status in (401, 403) or names & _AUTH:
        return Outcome.AUTH_ERROR, error_code, message
    if names & _CONTENT:
        return Outcome.CONTENT_BLOCKED, error_code, message
    if is_gateway_cooldown(message):
        return Outcome.OVERLOADED, GATEWAY_COOLDOWN, message
    if status == 408:
        return Outcome.TIMEOUT, "http_408", message
    if is_missing_endpoint(status, bool(names & _MODEL), message):
        return Outcome.MODEL_UNAVAILABLE, ENDPOINT_NOT_FOUND, message
    if status == 404 or names & (_MODEL | _NOT_FOUND):
        return Outcome.MODEL_UNAVAILABLE, error_code, message
    if names & _RATE or status in (429, 498):
        return Outcome.RATE_LIMITED, error_code, message
    if names & _OVERLOAD or status in (503, 529):
        return Outcome.OVERLOADED, error_code, message
    if names & _SERVER:
        return Outcome.SERVER_ERROR, error_code, message
    if status is None:
        bad = "invalid_request_error" in names
        return (Outcome.BAD_REQUEST if bad else Outcome.SERVER_ERROR), error_code, message
    return outcome_for_status(status), error_code, message


def _flagged(body: Any) -> bool:
    """OpenRouter's moderation refusal: a 403 whose metadata names the flagged input."""
    inner = body.get("error") if isinstance(body, dict) else None
    meta = inner.get("metadata") if isinstance(inner, dict) else None
    return isinstance(meta, dict) and bool(meta.get("reasons") or meta.get("flagged_input"))


def parse_body(raw: bytes) -> Any:
    """JSON if the body is JSON (also framed as SSE ``data:``, as some gateways send errors), else its text."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith(("data:", "event:")):
        for event in SSEDecoder().feed(raw.lstrip() + b"\n\n"):
            try:
                return json.loads(event.data)
            except ValueError:
                continue
    return text


class ChatStream:
    """State of one Chat Completions stream, fed with each SSE ``data`` payload."""

    __slots__ = ("done", "finish_reason", "usage", "content_chunks", "refusal", "require_done",
                 "require_finish")

    def __init__(self, require_done: bool = True, require_finish: bool = True) -> None:
        # OpenAI always ends with [DONE]; some compatible servers just close after the
        # finish_reason chunk (PROTOCOLS.md section 7), which is not a failure there.
        self.require_done = require_done
        # Content then [DONE] without any finish_reason is a cut answer (llama-cpp-python ends an
        # interrupted stream so); only a provider with ``finish_reason: optional`` never sends one.
        self.require_finish = require_finish
        self.done = False
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.content_chunks = 0
        self.refusal = False

    @property
    def finished(self) -> bool:
        """``[DONE]`` arrived."""
        return self.done

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event payload; True if it carried non-empty content."""
        if data.startswith("[DONE]"):
            self.done = True
            return False
        if event == "error":  # llama.cpp's stray ``error:`` field (see sse.py)
            raise ProbeFailure(*classify_openai_error(None, parse_body(data.encode())))
        try:
            obj = json.loads(data)
        except ValueError:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                               f"malformed JSON in stream: {data[:60]}") from None
        if isinstance(obj, list) or not isinstance(obj, dict):
            raise ProbeFailure(*classify_openai_error(None, obj)) if obj else ProbeFailure(
                Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream chunk is not an object")
        if obj.get("error") or obj.get("object") == "error":
            raise ProbeFailure(*classify_openai_error(None, obj))
        usage = obj.get("usage") or (obj.get("x_groq") or {}).get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        content = False
        for choice in obj.get("choices") or ():
            content = self._choice(choice) or content
        return content

    def _choice(self, choice: Any) -> bool:
        if not isinstance(choice, dict):
            return False
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
            if reason == "error":
                raise ProbeFailure(Outcome.SERVER_ERROR, "finish_reason_error",
                                   "stream finished with finish_reason error")
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and delta.get("refusal"):
            self.refusal = True
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:
            text = choice.get("text")  # legacy completion-style chunks (Together)
        if isinstance(text, str) and text:
            self.content_chunks += 1
            return True
        return False

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.refusal or self.finish_reason == "content_filter":
            return ProbeFailure(Outcome.CONTENT_BLOCKED, self.finish_reason or "refusal",
                                "the model refused or the content filter stopped it")
        if not self.done and (self.require_done or not self.finish_reason):
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator",
                                "stream ended without [DONE]")
        if self.require_finish and not self.finish_reason:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_finish_reason",
                                f"stream ended after {self.content_chunks} content chunks without a "
                                "finish_reason: the answer was cut off")
        if not self.content_chunks:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                                f"stream finished ({self.finish_reason or 'done'}) without content")
        return None

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens from the usage report, if any."""
        u = self.usage or {}
        return _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def probe_openai_chat(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One streamed Chat Completions request, timed phase by phase."""
    url, headers, body = build_request(job)
    async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        m.ttfb_s = m.elapsed()
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers)
        m.enter("ttft")
        await refuse_unless_event_stream(resp)
        await read_event_stream(resp, m, ChatStream(require_done=job.provider.type == "openai",
                                                    require_finish=job.provider.finish_reason == "required"))


async def refuse_unless_event_stream(resp: aiohttp.ClientResponse,
                                     is_answer: Callable[[Any], bool] = lambda body: False) -> None:
    """Raise the failure an error status, or a 200 that is not an event stream, amounts to.

    ``is_answer`` tells a whole non-streamed answer (a server that ignored
    ``stream``) from an error body that came with status 200.
    """
    if resp.status == 200 and "text/event-stream" in resp.headers.get("Content-Type", ""):
        return
    body = parse_body(await read_body(resp, ERROR_BODY_LIMIT))
    if 300 <= resp.status < 400:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "redirect", f"HTTP {resp.status} redirect (not followed)")
    if resp.status != 200:
        raise status_failure(classify_openai_error(resp.status, body), resp.status, resp.request_info)
    if isinstance(body, (dict, list)) and error_fields(body)[2] and not is_answer(body):
        raise ProbeFailure(*classify_openai_error(None, body))
    raise ProbeFailure(Outcome.PROTOCOL_ERROR, "not_event_stream",
                       f"expected text/event-stream, got {resp.headers.get('Content-Type')}")
