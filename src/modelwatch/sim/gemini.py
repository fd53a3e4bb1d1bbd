"""Gemini REST (``generateContent`` and its streaming twin) on the simulator (PROTOCOLS.md §6.1, §6.2).

Routes, for ``v1`` (the google-genai default) and ``v1beta`` (the docs):
``POST /{version}/models/{model}:streamGenerateContent`` (SSE with ``?alt=sse``,
else one JSON array streamed element by element) and
``POST /{version}/models/{model}:generateContent`` (one JSON object, sent when
the last token would have been). Another method after the colon gets 404.

Auth like Google: the key from ``x-goog-api-key`` or ``?key=``; a refused key
gets 400 ``INVALID_ARGUMENT`` with ErrorInfo ``API_KEY_INVALID``, no key 403
``PERMISSION_DENIED``. An unknown model gets 404 ``NOT_FOUND``. Every injected
error kind maps to Google's status and body in ``ERRORS`` (pretty-printed, as
Google's front end writes them; wrapped in a one-element array for a
non-SSE stream request or with ``error_shape: gemini_array``); ``bad_gateway``
and ``gateway_timeout`` are Google front-end HTML pages. ``content_blocked`` is
a 200 answer whose single chunk has ``promptFeedback.blockReason: SAFETY`` and
no candidates. There are no rate-limit headers and no request-id header: the
request-log id is the ``responseId`` of the chunks.

A stream: headers at ``ttfb_ms``; ``thinking_tokens`` parts with ``thought:
true`` spread before ``ttft_ms`` (none when the request sets ``thinkingBudget:
0`` or ``thinkingLevel: MINIMAL``; a ``thinkingLevel`` outside the SDK's
``ThinkingLevel`` names, or one beside a ``thinkingBudget``, is a 400
``INVALID_ARGUMENT``); one chunk per text token from ``ttft_ms`` on, every ``inter_token_ms``,
each with ``usageMetadata`` holding only the prompt count; the last chunk with
``finishReason`` (``STOP``, ``MAX_TOKENS`` when thoughts plus tokens exceed
``maxOutputTokens`` or with ``finish_reason: length``, ``SAFETY`` with
``content_filter``) and the full counts. After thoughts the last chunk holds
only an empty-text part with a ``thoughtSignature``, as observed live. Events
are ``data: <json>\\r\\n\\r\\n`` (always with the space the SDK needs), and the
stream just ends: no terminator. Faults: ``midstream_error_after`` (a ``data:
{"error": ...}`` INTERNAL event, then EOF), ``raw_error_after`` (the same error
as raw pretty-printed JSON without SSE framing, then EOF), ``disconnect_after``,
``stall_after``/``stall_ms``, ``malformed_after``. ``keepalive_every_ms``,
``usage_mode`` and ``done`` do not apply: Google sends no comments (the SDK
would read one as broken JSON) and no terminator.

Request log: ``outcome`` as for chat, plus ``raw_error``; ``actual_ttft_s`` is
stamped right after the first text chunk is written, ``actual_duration_s`` just
before the last write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from .common import FaultyStream, LoggedExchange, sleep_until, to_json
from .content import content_piece, user_turns
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["BAD_KEY", "ERRORS", "GoogleError", "NO_KEY", "NO_KEY_ERROR", "VERSIONS", "google_error_body", "register"]

VERSIONS = ("v1", "v1beta")
METHODS = ("streamGenerateContent", "generateContent")
_TYPE = "type.googleapis.com/google.rpc."
_SERVICE = "generativelanguage.googleapis.com"
BAD_KEY = "API key not valid. Please pass a valid API key."
NO_KEY = ("Method doesn't allow unregistered callers (callers without established identity). "
           "Please use API Key or other form of API consumer identity to call this API.")
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: "
    "https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: {metric}, limit: {value}, model: {model}\n"
    "Please retry in 31.2s.")
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
_GFE_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error {status} ({title})!!1</title>\n"
    "  <p><b>{status}.</b> <ins>That\u2019s an error.</ins>\n  <p>{text}  <ins>That\u2019s all we know.</ins>\n")


def _error_info(reason: str, **metadata: str) -> dict[str, Any]:
    return {"@type": _TYPE + "ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": _SERVICE, **metadata}}


def _quota_details(quota_id: str, metric: str, value: str) -> Callable[[str], list[dict[str, Any]]]:
    """The details of a 429: Help, QuotaFailure (naming the per-day or per-minute quota) and RetryInfo."""
    def details(model: str) -> list[dict[str, Any]]:
        violation = {"quotaMetric": f"{_SERVICE}/{metric}", "quotaId": quota_id,
                     "quotaDimensions": {"location": "global", "model": model}, "quotaValue": value}
        return [{"@type": _TYPE + "Help", "links": [{"description": "Learn more about Gemini API quotas",
                                                      "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                {"@type": _TYPE + "QuotaFailure", "violations": [violation]},
                {"@type": _TYPE + "RetryInfo", "retryDelay": "31s"}]
    return details


@dataclass(frozen=True)
class GoogleError:
    """How Google answers one error kind: status, RPC status name, message ({model}), details."""

    status: int
    rpc: str
    message: str
    details: Callable[[str], list[dict[str, Any]]] | None = None
    html: str | None = None  # a front-end HTML page instead of JSON: its title

    def body(self, model: str, version: str = "v1beta") -> dict[str, Any]:
        """The ``{"error": {...}}`` body for ``model`` on API ``version``."""
        error: dict[str, Any] = {"code": self.status, "message": self.message.format(model=model, version=version),
                                 "status": self.rpc}
        if self.details is not None:
            error["details"] = self.details(model)
        return {"error": error}


def _quota_error(quota_id: str, metric: str, value: str) -> GoogleError:
    """A 429 RESOURCE_EXHAUSTED naming one quota; per-day and per-minute differ only in ``quotaId``."""
    message = _QUOTA_MESSAGE.replace("{metric}", f"{_SERVICE}/{metric}").replace("{value}", value)
    return GoogleError(429, "RESOURCE_EXHAUSTED", message, _quota_details(quota_id, metric, value))


ERRORS: dict[str, GoogleError] = {
    "auth_error": GoogleError(400, "INVALID_ARGUMENT", BAD_KEY, lambda model: [
        _error_info("API_KEY_INVALID"),
        {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": BAD_KEY}]),
    "quota_exhausted": _quota_error("GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                    "generate_content_free_tier_requests", "250"),
    "rate_limited": _quota_error("GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                 "generate_content_free_tier_requests", "10"),
    "capacity_exceeded": _quota_error("GenerateContentInputTokensPerModelPerMinute-FreeTier",
                                      "generate_content_free_tier_input_token_count", "250000"),
    "overloaded": GoogleError(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "server_error": GoogleError(500, "INTERNAL", "An internal error has occurred. Please retry or report in "
                                "https://developers.generativeai.google/guide/troubleshooting"),
    "bad_gateway": GoogleError(502, "", "The server encountered a temporary error and could not complete your "
                               "request.<p>Please try again in 30 seconds.", html="Server Error"),
    "gateway_timeout": GoogleError(504, "", "The server did not answer in time.", html="Gateway Timeout"),
    "model_unavailable": GoogleError(404, "NOT_FOUND", "models/{model} is not found for API version {version}, or is "
                                     "not supported for generateContent. Call ListModels to see the list of "
                                     "available models and their supported methods."),
    "bad_request": GoogleError(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"maxTokens\" "
                               "at 'generation_config': Cannot find field.", lambda model: [
                                   {"@type": _TYPE + "BadRequest", "fieldViolations": [
                                       {"field": "generation_config", "description": "Invalid JSON payload "
                                        "received. Unknown name \"maxTokens\" at 'generation_config': Cannot "
                                        "find field."}]}]),
}
NO_KEY_ERROR = GoogleError(403, "PERMISSION_DENIED", NO_KEY)


THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH")  # google-genai ThinkingLevel


def google_error_body(kind: str, model: str) -> dict[str, Any]:
    """Google's JSON error body for an error kind (for other simulator modules)."""
    return ERRORS[kind].body(model)


def _google_headers(elapsed_s: float) -> dict[str, str]:
    """What Google's front end adds to every answer (and no rate-limit headers)."""
    return {"Server": "scaffolding on HTTPServer2", "Vary": "Origin, X-Origin, Referer",
            "X-XSS-Protection": "0", "X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff",
            "Server-Timing": f"gfet4t7; dur={round(elapsed_s * 1000)}"}


def register(app: web.Application, state: SimState) -> None:
    """Add the Gemini REST routes to the simulator app."""
    handler = GeminiRest(state)
    for version in VERSIONS:
        # aiohttp matches the whole "model:method" segment; the handler splits it.
        app.router.add_post(f"/{version}/models/{{name}}", handler.handle)


@dataclass
class _Exchange(LoggedExchange):
    """One request from arrival to the last byte."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    model: str = ""
    method: str = ""
    behaviour: ModelBehaviour = field(default_factory=ModelBehaviour)
    body: dict[str, Any] = field(default_factory=dict)
    response: web.StreamResponse | None = None

    @property
    def response_id(self) -> str:
        return self.record.request_id

    @property
    def version(self) -> str:
        return self.request.path.split("/", 2)[1]

    @property
    def sse(self) -> bool:
        return self.request.query.get("alt") == "sse"

    def config(self, name: str, snake: str) -> Any:
        """A ``generationConfig`` field, camelCase or snake_case (the REST API takes both)."""
        config = self.body.get("generationConfig") or self.body.get("generation_config") or {}
        return config.get(name, config.get(snake)) if isinstance(config, dict) else None


class GeminiRest:
    """Request handlers for Gemini REST, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST /{version}/models/{model}:{method}``; client disconnects end it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        response_id = base64.urlsafe_b64encode(draws.id_bits.to_bytes(16, "big")).decode().rstrip("=")
        ex = _Exchange(request, self.state.begin(response_id, request.path), draws, t0_perf, t0_loop)
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
        """Method, key, body and model checks; then an injected error, a stream or a whole answer."""
        ex.model, _, ex.method = ex.request.match_info["name"].partition(":")
        ex.record.model = ex.model
        if ex.method not in METHODS:
            return self._reject(ex, "bad_request", GoogleError(404, "NOT_FOUND", "Method not found."))
        key = ex.request.headers.get("x-goog-api-key") or ex.request.query.get("key", "")
        if not key:
            return self._reject(ex, "auth_error", NO_KEY_ERROR)
        if not self.state.scenario.accepts_key(key):
            return self._reject(ex, "auth_error", ERRORS["auth_error"])
        problem = await self._read_body(ex)
        if problem is not None:
            return self._reject(ex, "bad_request", problem)
        behaviour = self.state.scenario.behaviour_for(ex.model)
        if behaviour is None:
            return self._reject(ex, "model_unavailable", ERRORS["model_unavailable"])
        turn = ex.record.turn = user_turns(ex.body["contents"], default_role="user")
        behaviour = ex.behaviour = behaviour.for_turn(turn)
        kind = self.state.injected_error(ex.model, behaviour, ex.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(ex.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(ex, kind, ERRORS[kind])
        ex.record.outcome = kind or "ok"
        ex.record.injected_ttft_s = behaviour.first_token_delay_ms(ex.draws.jitter_roll, turn) / 1000
        if ex.method == "generateContent":
            return await _complete(ex)
        return await _Stream(ex).run()

    async def _read_body(self, ex: _Exchange) -> GoogleError | None:
        """Parse and check the request body like Google; the error to answer, or None."""
        try:
            body = json.loads(await ex.request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return GoogleError(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token.")
        ex.body = body
        ex.record.log_options(body)
        if not isinstance(body.get("contents"), list) or not body["contents"]:
            return GoogleError(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not "
                                                        "specified\n")
        cap = ex.config("maxOutputTokens", "max_output_tokens")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            return GoogleError(400, "INVALID_ARGUMENT", "* GenerateContentRequest.generation_config."
                                                        "max_output_tokens: must be a positive integer\n")
        problem = thinking_problem(ex.config("thinkingConfig", "thinking_config"))
        return GoogleError(400, "INVALID_ARGUMENT", problem) if problem else None


    def _reject(self, ex: _Exchange, outcome: str, error: GoogleError) -> web.Response:
        """Google's error response for ``error``, logged."""
        ex.record.outcome = outcome
        headers = _google_headers(ex.elapsed_s())
        if error.html is not None:
            page = _GFE_PAGE.format(status=error.status, title=error.html, text=error.message)
            response = web.Response(status=error.status, text=page, content_type="text/html",
                                    charset="UTF-8", headers=headers)
        else:
            body: Any = error.body(ex.model, ex.version)
            if ex.behaviour.error_shape == "gemini_array" or (ex.method == "streamGenerateContent" and not ex.sse):
                body = [body]
            response = web.Response(status=error.status, text=json.dumps(body, indent=2) + "\n",
                                    content_type="application/json", charset="UTF-8", headers=headers)
        ex.finish(response.status)
        return response


def thinking_level(thinking: Any) -> str | None:
    """The upper-case ``thinkingLevel`` of a ``thinkingConfig`` (either spelling), or None."""
    if not isinstance(thinking, dict):
        return None
    level = thinking.get("thinkingLevel", thinking.get("thinking_level"))
    return level.upper() if isinstance(level, str) else None


def thinking_problem(thinking: Any) -> str | None:
    """Why Google would refuse a ``thinkingConfig``, or None (shared with Gemini Live).

    ``thinkingLevel`` takes the SDK's ``ThinkingLevel`` names in any case; it
    and ``thinkingBudget`` exclude each other. The wording is ours, the status
    Google's (400 ``INVALID_ARGUMENT``).
    """
    if not isinstance(thinking, dict):
        return None
    raw = thinking.get("thinkingLevel", thinking.get("thinking_level"))
    if raw is None:
        return None
    if not isinstance(raw, str) or raw.upper() not in THINKING_LEVELS:
        return (f"Invalid value at 'generation_config.thinking_config.thinking_level' ({raw!r}): expected one of "
                + ", ".join(THINKING_LEVELS))
    if thinking.get("thinkingBudget", thinking.get("thinking_budget")) is not None:
        return "thinking_budget and thinking_level cannot both be set."
    return None


@dataclass(frozen=True)
class _Plan:
    """What one answer holds: thought parts, text chunks and its finishReason."""

    thoughts: int
    text: int
    finish: str
    prompt_tokens: int

    @classmethod
    def of(cls, ex: _Exchange) -> _Plan:
        """Honour ``maxOutputTokens``, which thinking spends first, and ``thinkingBudget: 0``."""
        b = ex.behaviour
        prompt = _prompt_tokens(ex.body.get("contents"))
        if ex.record.outcome == "content_blocked":
            return cls(0, 0, "SAFETY", prompt)
        thinking = ex.config("thinkingConfig", "thinking_config")
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget")) if isinstance(thinking, dict) else None
        # Budget 0 turns thinking off; level MINIMAL is "little to no thinking", which the simulator makes none.
        thoughts = 0 if budget == 0 or thinking_level(thinking) == "MINIMAL" else b.thinking_tokens
        cap = ex.config("maxOutputTokens", "max_output_tokens")
        if cap is not None and thoughts + b.tokens > cap:
            thoughts = min(thoughts, cap)
            return cls(thoughts, min(b.tokens, cap - thoughts), "MAX_TOKENS", prompt)
        return cls(thoughts, b.tokens, _FINISH[b.finish_reason], prompt)

    def usage(self, final: bool) -> dict[str, Any]:
        """``usageMetadata``: the prompt count on early chunks, every count on the last."""
        usage: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        output = self.text + self.thoughts if final else 0
        if final:
            usage["candidatesTokenCount"] = self.text
        usage["totalTokenCount"] = self.prompt_tokens + output
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt_tokens}]
        if final and self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        return usage


def _prompt_tokens(contents: Any) -> int:
    """Roughly count prompt tokens: ~4 characters a token."""
    chars = 0
    for content in contents if isinstance(contents, list) else ():
        for part in (content.get("parts") or ()) if isinstance(content, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                chars += len(part["text"])
    return max(1, math.ceil(chars / 4))


def _thought_piece(index: int) -> str:
    return "**Answering briefly**\n\nThe user wants a short reply." if index == 0 else " Keep it short."


def _signature(ex: _Exchange) -> str:
    """A stable opaque ``thoughtSignature`` for this answer."""
    return base64.b64encode(f"sig:{ex.response_id}".encode()).decode()


def _chunk(ex: _Exchange, plan: _Plan, parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    """One ``GenerateContentResponse`` chunk (camelCase, as on the wire)."""
    content: dict[str, Any] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    candidate: dict[str, Any] = {"content": content}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": plan.usage(final=finish is not None),
            "modelVersion": ex.model, "responseId": ex.response_id}


def _blocked(ex: _Exchange, plan: _Plan) -> dict[str, Any]:
    """The answer to a blocked prompt: feedback and usage, no candidates."""
    ratings = [{"category": c, "probability": "HIGH" if c == "HARM_CATEGORY_DANGEROUS_CONTENT" else "NEGLIGIBLE"}
               for c in ("HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_HATE_SPEECH",
                         "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_DANGEROUS_CONTENT")]
    return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
            "usageMetadata": plan.usage(final=False), "modelVersion": ex.model, "responseId": ex.response_id}


async def _complete(ex: _Exchange) -> web.Response:
    """A non-streaming ``generateContent`` answer, sent when the last token would be."""
    plan, b = _Plan.of(ex), ex.behaviour
    first_at = ex.t0_loop + ex.record.injected_ttft_s
    await sleep_until(first_at + max(plan.text - 1, 0) * b.inter_token_ms / 1000)
    if ex.record.outcome == "content_blocked":
        body = _blocked(ex, plan)
    else:
        parts: list[dict[str, Any]] = []
        if plan.thoughts:
            parts.append({"text": "".join(_thought_piece(i) for i in range(plan.thoughts)), "thought": True})
        if plan.text:
            parts.append({"text": "".join(content_piece(i) for i in range(plan.text))})
        if plan.thoughts and parts:
            parts[-1]["thoughtSignature"] = _signature(ex)
        body = _chunk(ex, plan, parts, plan.finish)
    headers = _google_headers(ex.elapsed_s())
    ex.finish(200)
    return web.Response(text=json.dumps(body, indent=2) + "\n", content_type="application/json",
                        charset="UTF-8", headers=headers)


class _Stream(FaultyStream):
    """One streamed answer: thoughts, text chunks, faults, the finishReason chunk, EOF."""

    def __init__(self, ex: _Exchange) -> None:
        self.ex = self.exchange = ex
        self.b = self.behaviour = ex.behaviour
        self.plan = _Plan.of(ex)
        self.headers_at = ex.t0_loop + self.b.ttfb_ms / 1000
        self.first_at = ex.t0_loop + ex.record.injected_ttft_s
        self.sent = 0  # JSON values written (the array layout needs commas between them)

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        ex, plan = self.ex, self.plan
        await sleep_until(self.headers_at)
        response = web.StreamResponse(status=200, headers=_google_headers(ex.elapsed_s()))
        response.content_type = "text/event-stream" if ex.sse else "application/json"
        response.charset = None if ex.sse else "UTF-8"
        if ex.sse:
            response.headers["Content-Disposition"] = "attachment"
        ex.response = response
        ex.record.status = 200
        await response.prepare(ex.request)
        if ex.record.outcome == "content_blocked":
            await sleep_until(self.first_at)
            await self._send(_blocked(ex, plan), last=True)
            await response.write_eof()
            return response
        await self._thoughts()
        if not await self.stream_deltas(self.plan.text):
            return response
        if plan.thoughts or not plan.text:
            await sleep_until(self.first_at)
            parts = [{"text": "", "thoughtSignature": _signature(ex)}] if plan.thoughts else []
            await self._send(_chunk(ex, plan, parts, plan.finish), last=True)
        await response.write_eof()
        return response

    async def _thoughts(self) -> None:
        """Thought parts, spread evenly between the headers and the first text."""
        count = self.plan.thoughts
        step = (self.first_at - self.headers_at) / (count + 1)
        for index in range(count):
            await sleep_until(self.headers_at + (index + 1) * step)
            await self._send(_chunk(self.ex, self.plan, [{"text": _thought_piece(index), "thought": True}]))

    async def send_delta(self, index: int, count: int) -> None:
        # Without thoughts the last text chunk carries the finishReason itself.
        last = not self.plan.thoughts and index == count - 1
        finish = self.plan.finish if last else None
        await self._send(_chunk(self.ex, self.plan, [{"text": content_piece(index)}], finish), last=last)

    async def send_malformed(self) -> None:
        await self.ex.response.write(b"data: {not json\r\n\r\n")

    async def send_midstream_error(self, index: int) -> None:
        """A ``data:`` event holding Google's error body, as the SDK expects it."""
        await self._send(ERRORS["server_error"].body(self.ex.model), last=True)
        await self.ex.response.write_eof()

    def fault_points(self) -> tuple[int | None, ...]:
        return (*super().fault_points(), self.b.raw_error_after)

    async def inject_faults(self, index: int) -> bool:
        """The shared faults, plus ``raw_error_after``: an error body outside SSE framing."""
        ex = self.ex
        if index != self.b.raw_error_after:
            return await super().inject_faults(index)
        ex.record.outcome = "raw_error"
        ex.finish()
        # Google's front end writes it as it would a whole error body.
        await ex.response.write((json.dumps(ERRORS["server_error"].body(ex.model), indent=2) + "\n").encode())
        await ex.response.write_eof()
        return False

    async def _send(self, obj: dict[str, Any], last: bool = False) -> None:
        """Write one chunk in one write; before the last one, stamp the log's duration."""
        ex = self.ex
        if last:
            ex.finish()
        if ex.sse:
            data = f"data: {to_json(obj)}\r\n\r\n"
        else:  # the array layout: "[" first, commas between, "]" after the last
            data = ("[" if not self.sent else ",\r\n") + to_json(obj) + ("]" if last else "")
        self.sent += 1
        await ex.response.write(data.encode())
