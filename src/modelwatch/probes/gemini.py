"""Google Gemini REST streaming probe (``streamGenerateContent?alt=sse``).

Sends a tiny fixed prompt with a small output cap (and ``thinkingBudget`` or ``thinkingLevel`` when
configured), the key only in ``x-goog-api-key``, then times: response headers
(``ttfb_s``), the first chunk with a non-empty ``parts[].text`` that is not a
thought (``ttft_s``) and the end of the body (``duration_s``): Gemini has no
terminator, the last chunk carries ``finishReason`` and the stream just ends.

Usage comes from the last chunk that reports counts. Output tokens are
``candidatesTokenCount + thoughtsTokenCount``: Google bills thinking tokens as
output, so a probe's cost includes them.

Errors arrive as a Google RPC body on a non-200 status, as a ``data:
{"error": ...}`` event, or as raw (possibly pretty-printed) JSON written into the
stream without SSE framing; :class:`GeminiStream` reassembles the latter, and
:func:`classify_google_error` is the one place that maps them to outcomes.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.config import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure, outcome_for_status
from modelwatch.probes.auth import auth_headers
from modelwatch.probes.base import BodyReader, Measurement, read_body, request_id_from
from modelwatch.probes.openai_chat import ENDPOINT_NOT_FOUND, is_missing_endpoint, parse_body, status_failure
from modelwatch.sse import SSEDecoder

ERROR_BODY_LIMIT = 65536

# finishReason / blockReason values that mean a filter stopped the answer (types.FinishReason).
BLOCKED_FINISH = frozenset({"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"})
GOOD_FINISH = frozenset({"STOP", "MAX_TOKENS"})

# google.rpc.Code names -> outcome, when nothing more specific applies.
_BY_RPC_STATUS = {
    "INVALID_ARGUMENT": Outcome.BAD_REQUEST, "FAILED_PRECONDITION": Outcome.BAD_REQUEST,
    "OUT_OF_RANGE": Outcome.BAD_REQUEST, "UNIMPLEMENTED": Outcome.BAD_REQUEST,
    "UNAUTHENTICATED": Outcome.AUTH_ERROR, "PERMISSION_DENIED": Outcome.AUTH_ERROR,
    "NOT_FOUND": Outcome.MODEL_UNAVAILABLE, "RESOURCE_EXHAUSTED": Outcome.RATE_LIMITED,
    "UNAVAILABLE": Outcome.OVERLOADED, "INTERNAL": Outcome.SERVER_ERROR, "UNKNOWN": Outcome.SERVER_ERROR,
    "DEADLINE_EXCEEDED": Outcome.SERVER_ERROR, "ABORTED": Outcome.SERVER_ERROR,
    "CANCELLED": Outcome.SERVER_ERROR, "DATA_LOSS": Outcome.SERVER_ERROR,
}
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_BAD_KEY_WORDS = ("api key not valid", "api key expired")
_FRAMED = ("data:", ":", "event:", "id:", "retry:")


def thinking_config(p: Any) -> dict[str, Any]:
    """``thinkingConfig`` from the probe settings: a budget (2.5 models) or a level (3.x), or nothing.

    The level goes out upper-case, as the google-genai SDK sends its
    ``ThinkingLevel`` names; config validation keeps the two apart.
    """
    if p.thinking_budget is not None:
        return {"thinkingBudget": p.thinking_budget}
    if p.thinking_level is not None:
        return {"thinkingLevel": p.thinking_level.upper()}
    return {}


def build_request(job: ProbeJob) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request; the key goes in a header only."""
    p = job.probe
    config: dict[str, Any] = {"maxOutputTokens": p.max_tokens}
    thinking = thinking_config(p)
    if thinking:
        config["thinkingConfig"] = thinking
    body = {"contents": [{"role": "user", "parts": [{"text": p.prompt}]}], "generationConfig": config}
    # "gemini-2.5-flash" is models/gemini-2.5-flash; "tunedModels/x" names its own collection.
    name = job.model if "/" in job.model else f"models/{job.model}"
    url = f"{job.provider.base_url}/{quote(name, safe='/')}:streamGenerateContent?alt=sse"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **auth_headers(job)}
    return url, headers, json.dumps(body).encode()


def google_error_fields(body: Any) -> tuple[int | None, str, str, list[dict]]:
    """(numeric code, RPC status, message, details) from a Google error body of any layout.

    Handles ``{"error": {...}}``, the same wrapped in a one-element list, the
    bare inner object, ``{"error": "text"}``, plain text and HTML pages.
    """
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code")
            if isinstance(code, str) and code.isdigit():
                code = int(code)
            number = code if isinstance(code, int) and not isinstance(code, bool) else None
            details = [d for d in inner.get("details") or () if isinstance(d, dict)]
            return number, str(inner.get("status") or "").upper(), str(inner.get("message") or ""), details
        return None, "", str(inner), []
    text = body.decode("utf-8", errors="replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    if title:
        return None, "", f"HTML body: {title.group(1).strip()}", []
    return None, "", text.strip(), []


def _detail(details: list[dict], kind: str) -> list[dict]:
    """The details entries whose ``@type`` ends in ``kind`` (e.g. ``rpc.QuotaFailure``)."""
    return [d for d in details if str(d.get("@type", "")).endswith(kind)]


def _snake(name: str) -> str:
    """``GenerateRequestsPerDayPerProjectPerModel-FreeTier`` -> ``generate_requests_per_day_..._free_tier``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).replace("-", "_").lower()[:96]


def _quota_verdict(details: list[dict], message: str) -> tuple[Outcome, str | None]:
    """Per-day (or zero free-tier) quota -> quota_exhausted; per-minute or RetryInfo -> rate_limited."""
    violations = [v for q in _detail(details, "QuotaFailure") for v in q.get("violations") or ()
                  if isinstance(v, dict)]
    for v in violations:
        quota_id = str(v.get("quotaId") or "")
        if "PerDay" in quota_id or str(v.get("quotaValue")) == "0" or v.get("limit") == 0:
            return Outcome.QUOTA_EXHAUSTED, _snake(quota_id) if quota_id else "quota_exhausted"
    if re.search(r"\blimit: 0\b", message):  # a model the free tier does not include at all
        return Outcome.QUOTA_EXHAUSTED, "free_tier_limit_0"
    first = next((str(v["quotaId"]) for v in violations if v.get("quotaId")), None)
    return Outcome.RATE_LIMITED, _snake(first) if first else None


def classify_google_error(status: int | None, body: Any) -> tuple[Outcome, str, str]:
    """Outcome, error code and message for a Google RPC error body.

    ``status`` is the HTTP status, or None for an error that arrived inside a
    200 stream (then the body's own ``code`` stands in for it).
    """
    code, rpc, message, details = google_error_fields(body)
    http = status if status is not None else (code if code and 100 <= code < 600 else None)
    infos = _detail(details, "ErrorInfo")
    reason = str(infos[0].get("reason") or "").upper() if infos else ""
    error_code = reason.lower() or rpc.lower() or (f"http_{http}" if http else "stream_error")
    lowered = message.lower()
    if reason in _BAD_KEY_REASONS or any(w in lowered for w in _BAD_KEY_WORDS):
        return Outcome.AUTH_ERROR, reason.lower() or "api_key_invalid", message
    if http in (401, 403) or rpc in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return Outcome.AUTH_ERROR, error_code, message
    if http == 408:
        return Outcome.TIMEOUT, "http_408", message
    # An unknown path gets Google's HTML 404; an RPC NOT_FOUND is about the model (or resource).
    if is_missing_endpoint(http, rpc == "NOT_FOUND", message):
        return Outcome.MODEL_UNAVAILABLE, ENDPOINT_NOT_FOUND, message
    if http == 429 or rpc == "RESOURCE_EXHAUSTED":
        outcome, quota_code = _quota_verdict(details, message)
        return outcome, reason.lower() or quota_code or error_code, message
    if rpc in _BY_RPC_STATUS:
        return _BY_RPC_STATUS[rpc], error_code, message
    if http is None:  # an in-stream error without status or code: the server failed
        return Outcome.SERVER_ERROR, error_code, message
    outcome = Outcome.SERVER_ERROR if http == 504 else outcome_for_status(http)
    return outcome, error_code, message


class _Unframed:
    """Text written outside SSE framing, reassembled into JSON values.

    Google sometimes writes an error into an open stream as raw, pretty-printed
    JSON; the SSE decoder drops such lines. A value ends where its braces and
    brackets balance (ignoring those inside strings), as the SDK does.
    """

    __slots__ = ("_tail", "_parts", "_depth", "_in_string", "_escaped", "junk_lines")

    def __init__(self) -> None:
        self._tail = b""
        self._parts: list[str] = []
        self._depth = 0
        self._in_string = self._escaped = False
        self.junk_lines = 0

    def feed(self, data: bytes, final: bool = False) -> list[Any]:
        """Consume bytes; return the JSON values they complete."""
        buf = self._tail + data
        lines = buf.splitlines()
        self._tail = b"" if final or not lines or buf.endswith((b"\r", b"\n")) else lines.pop()
        values = [v for raw in lines if (v := self._line(raw.decode("utf-8", "replace"))) is not None]
        if final and self._parts:  # unbalanced at EOF: try what there is
            text, self._parts = "".join(self._parts), []
            values.extend(self._parse(text))
        return values

    def _line(self, line: str) -> Any:
        if not line.strip() or (not self._parts and line.startswith(_FRAMED)):
            return None
        if not self._parts and not line.lstrip().startswith(("{", "[")):
            self.junk_lines += 1
            return None
        self._parts.append(line)
        self._scan(line)
        if self._depth > 0:
            return None
        text, self._parts, self._depth = "".join(self._parts), [], 0
        parsed = self._parse(text)
        return parsed[0] if parsed else None

    def _scan(self, line: str) -> None:
        for ch in line:
            if self._escaped:
                self._escaped = False
            elif self._in_string:
                self._escaped = ch == "\\"
                self._in_string = ch != '"'
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1

    def _parse(self, text: str) -> list[Any]:
        try:
            return [json.loads(text)]
        except ValueError:
            self.junk_lines += 1
            return []


class GeminiStream:
    """State of one ``streamGenerateContent`` answer, fed with the raw body bytes."""

    __slots__ = ("_sse", "_unframed", "chunks", "text_parts", "thought_parts", "finish_reason",
                 "block_reason", "usage", "response_id", "require_finish")

    def __init__(self, require_finish: bool = True) -> None:
        # finishReason is Gemini's only end marker; a provider with ``finish_reason: optional``
        # (a compatible server that never sends one) is judged by its text and EOF alone.
        self.require_finish = require_finish
        self._sse = SSEDecoder()
        self._unframed = _Unframed()
        self.chunks = 0
        self.text_parts = 0
        self.thought_parts = 0
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.usage: dict | None = None
        self.response_id: str | None = None

    def feed(self, data: bytes, final: bool = False) -> bool:
        """Consume body bytes (``final`` at EOF); True if they carried non-thought text."""
        text = False
        for event in self._sse.feed(data):
            try:
                obj = json.loads(event.data)
            except ValueError:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                                   f"malformed JSON in stream: {event.data[:60]}") from None
            text = self._value(obj) or text
        for obj in self._unframed.feed(data, final):
            text = self._value(obj) or text
        return text

    def _value(self, obj: Any) -> bool:
        """One JSON value: a response chunk, an error, or (unframed) an array of chunks."""
        if isinstance(obj, list):  # the non-SSE layout: one array of chunks
            return any([self._value(item) for item in obj])
        if not isinstance(obj, dict):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream chunk is not an object")
        if "error" in obj:
            raise ProbeFailure(*classify_google_error(None, obj))
        self.chunks += 1
        self.response_id = self.response_id or _str(obj.get("responseId"))
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict) and usage.keys() & {"promptTokenCount", "candidatesTokenCount",
                                                         "thoughtsTokenCount"}:
            self.usage = usage
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.block_reason = str(feedback["blockReason"])
        text = False
        for candidate in obj.get("candidates") or ():
            text = self._candidate(candidate) or text
        return text

    def _candidate(self, candidate: Any) -> bool:
        if not isinstance(candidate, dict):
            return False
        if candidate.get("finishReason"):
            self.finish_reason = str(candidate["finishReason"])
        content = candidate.get("content")
        text = False
        for part in (content.get("parts") if isinstance(content, dict) else None) or ():
            if not isinstance(part, dict) or not isinstance(part.get("text"), str) or not part["text"]:
                continue  # e.g. the final part that only carries a thoughtSignature
            if part.get("thought") is True:
                self.thought_parts += 1
            else:
                self.text_parts += 1
                text = True
        return text

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.block_reason:
            return ProbeFailure(Outcome.CONTENT_BLOCKED, self.block_reason.lower(),
                                f"prompt blocked ({self.block_reason})")
        reason = self.finish_reason
        if reason in BLOCKED_FINISH:
            return ProbeFailure(Outcome.CONTENT_BLOCKED, reason.lower(), f"answer stopped by {reason}")
        if reason is None and (self.require_finish or not self.text_parts):
            junk = f"; {self._unframed.junk_lines} unrecognised lines" if self._unframed.junk_lines else ""
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator",
                                f"stream ended without a finishReason after {self.chunks} chunks{junk}")
        if reason is not None and reason not in GOOD_FINISH:  # OTHER, MALFORMED_RESPONSE, ...: the model gave up
            return ProbeFailure(Outcome.SERVER_ERROR, reason.lower(), f"answer ended with finishReason {reason}")
        if not self.text_parts:
            only = f", only {self.thought_parts} thought parts" if self.thought_parts else ""
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                                f"stream finished ({reason}) without text{only}")
        return None

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens; output counts the billed thinking tokens too."""
        u = self.usage or {}
        candidates, thoughts = _int(u.get("candidatesTokenCount")), _int(u.get("thoughtsTokenCount"))
        output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
        return _int(u.get("promptTokenCount")), output


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def probe_gemini(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One ``streamGenerateContent`` request, timed phase by phase."""
    url, headers, body = build_request(job)
    async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        m.ttfb_s = m.elapsed()
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers)
        m.enter("ttft")
        if resp.status != 200:
            raw = await read_body(resp, ERROR_BODY_LIMIT)
            if 300 <= resp.status < 400:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "redirect",
                                   f"HTTP {resp.status} redirect (not followed)")
            raise status_failure(classify_google_error(resp.status, parse_body(raw)), resp.status, resp.request_info)
        await _read_stream(job, resp, m)


async def _read_stream(job: ProbeJob, resp: aiohttp.ClientResponse, m: Measurement) -> None:
    """Read to EOF (Gemini's only terminator), stamping the first text chunk."""
    stream, body = GeminiStream(require_finish=job.provider.finish_reason == "required"), BodyReader(resp, m)
    try:
        while True:
            chunk = await body.read()
            now = body.arrived
            text_before = stream.text_parts
            try:
                stream.feed(chunk, final=not chunk)
            finally:  # text and an error in one read: the text still came first
                if stream.text_parts > text_before and m.ttft_s is None:
                    m.ttft_s = now - m.start
                    m.enter("total")
            if not chunk:
                break
    finally:
        m.request_id = m.request_id or stream.response_id
        m.input_tokens, m.output_tokens = stream.tokens()
    m.duration_s = now - m.start
    failure = stream.verdict()
    if failure is not None:
        raise failure
