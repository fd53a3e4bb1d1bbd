"""Anthropic Messages streaming probe (PROTOCOLS.md §5).

Sends ``POST {base_url}/messages`` with a tiny prompt, ``stream: true`` and a
small ``max_tokens``; thinking is never enabled (it would bill thinking
tokens every probe). Credentials go the way the official SDK sends them
(``Authorization: Bearer``, ``anthropic-version: 2026-10-21``) unless the
provider sets ``auth_style: x-api-key`` and/or ``api_version``. Times:
response headers (``ttfb_s``), the first ``content_block_delta`` whose delta
is a non-empty ``text_delta`` (``ttft_s``; ``thinking_delta``,
``signature_delta`` and ``ping`` do not count) and ``message_stop``
(``duration_s``). Tokens: input from ``message_start``, output from the
final, cumulative ``message_delta`` usage.

Decoding (:class:`MessageStream`) and classification
(:func:`classify_anthropic_error`) are pure, tested with captures. A
mid-stream ``event: error`` arrives after HTTP 200, so it is classified from
its ``error.type`` (``overloaded_error`` -> ``overloaded``), never the status.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure, outcome_for_status
from modelwatch.probes.base import Measurement
from modelwatch.probes.http import ErrorReading, stream_request
from modelwatch.probes.parsing import (ENDPOINT_NOT_FOUND, GATEWAY_COOLDOWN, as_int, error_fields, is_gateway_cooldown,
                                       is_missing_endpoint)
from modelwatch.probes.spec import ProbeSpec, ProviderType, text_tokens

ANTHROPIC_VERSION = "2026-10-21"  # what the official SDK sends (PROTOCOLS.md section 5.1)

# error.details.error_code values that say more than error.type (SDK ``_error_classes.py``).
_DETAIL_OUTCOMES = {
    "contract_spend_limit_reached": Outcome.QUOTA_EXHAUSTED,
    "enforced_spend_limit_reached": Outcome.QUOTA_EXHAUSTED,
    "linked_organization_billing_unavailable": Outcome.QUOTA_EXHAUSTED,
    "linked_organization_spend_limit_reached": Outcome.QUOTA_EXHAUSTED,
    "ramp_limit_exceeded": Outcome.RATE_LIMITED,
    "request_body_too_large_after_decoding": Outcome.BAD_REQUEST,
}
_TYPE_OUTCOMES = {
    "authentication_error": Outcome.AUTH_ERROR,
    "permission_error": Outcome.AUTH_ERROR,
    "billing_error": Outcome.QUOTA_EXHAUSTED,
    "rate_limit_error": Outcome.RATE_LIMITED,
    "overloaded_error": Outcome.OVERLOADED,
    "api_error": Outcome.SERVER_ERROR,
    "timeout_error": Outcome.SERVER_ERROR,
    "not_found_error": Outcome.MODEL_UNAVAILABLE,
    "invalid_request_error": Outcome.BAD_REQUEST,
    "request_too_large": Outcome.BAD_REQUEST,
    "conflict_error": Outcome.BAD_REQUEST,
}
# Statuses that decide on their own, whatever error.type says: 503 has no type of its own and
# 529 is always overload; a 401/403 from a proxy or with an odd type is still about the key.
_STATUS_OUTCOMES = {401: Outcome.AUTH_ERROR, 403: Outcome.AUTH_ERROR, 402: Outcome.QUOTA_EXHAUSTED,
                    503: Outcome.OVERLOADED, 529: Outcome.OVERLOADED}
# An empty prepaid balance comes as a plain 400 invalid_request_error with only this message
# to tell it apart (observed 2025-2026 in public bug reports); it is quota, not a bad request.
_CREDIT_TOO_LOW = "credit balance is too low"


def anthropic_auth(job: ProbeJob) -> dict[str, str]:
    """``anthropic-version`` always; the key as ``Authorization: Bearer`` (what the SDK sends) or,
    with ``auth_style: x-api-key``, as ``x-api-key``."""
    headers = {"anthropic-version": job.provider.api_version or ANTHROPIC_VERSION}
    if job.api_key is not None:
        if job.provider.auth_style == "x-api-key":
            headers["x-api-key"] = job.api_key.reveal()
        else:
            headers["Authorization"] = f"Bearer {job.api_key.reveal()}"
    return headers


def build_request(job: ProbeJob) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request."""
    p = job.probe
    body = {
        "model": job.model,
        "max_tokens": p.max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": p.prompt}],
    }
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **anthropic_auth(job)}
    return f"{job.provider.base_url}/messages", headers, json.dumps(body).encode()


def anthropic_error_fields(body: Any) -> tuple[str, str, str]:
    """(error.type, error.details.error_code, message) of an error body, lower-cased codes.

    Anthropic's shape is ``{"type": "error", "error": {"type", "message",
    "details": {"error_code"}}, "request_id"}``; anything else (HTML from a
    gateway, plain text, other JSON) yields its best message and empty codes.
    """
    inner = body.get("error") if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return "", "", error_fields(body)[2]
    details = inner.get("details")
    detail = details.get("error_code") if isinstance(details, dict) else None
    etype = inner.get("type")
    return (_code(etype), _code(detail), str(inner.get("message") or ""))


def _code(value: Any) -> str:
    code = value.strip().lower() if isinstance(value, str) else ""
    return "" if code in ("none", "null") else code  # LiteLLM writes a missing type as "None"


def classify_anthropic_error(status: int | None, body: Any) -> tuple[Outcome, str, str]:
    """Outcome, error code and message for an error status or a mid-stream ``error`` event.

    ``status`` is None (or 200) for an error inside a stream. The error code is
    the most specific one the body has: ``details.error_code``, else
    ``error.type``, else ``http_<status>``.
    """
    etype, detail, message = anthropic_error_fields(body)
    status = None if status == 200 else status
    code = detail or etype or (f"http_{status}" if status else "stream_error")
    message = message or (f"HTTP {status}" if status else "error event without a message")
    if detail in _DETAIL_OUTCOMES:
        return _DETAIL_OUTCOMES[detail], code, message
    if is_gateway_cooldown(message):  # LiteLLM's Messages bridge answers in OpenAI's error shape
        return Outcome.OVERLOADED, GATEWAY_COOLDOWN, message
    if status == 408:
        return Outcome.TIMEOUT, "http_408", message
    if is_missing_endpoint(status, False, message):
        return Outcome.MODEL_UNAVAILABLE, ENDPOINT_NOT_FOUND, message
    if status in _STATUS_OUTCOMES:
        return _STATUS_OUTCOMES[status], code, message
    if _CREDIT_TOO_LOW in message.lower():
        return Outcome.QUOTA_EXHAUSTED, code, message
    if etype in _TYPE_OUTCOMES:
        return _TYPE_OUTCOMES[etype], code, message
    if status is None:
        return Outcome.SERVER_ERROR, code, message
    return outcome_for_status(status), code, message


class MessageStream:
    """State of one Messages stream, fed with each SSE event."""

    __slots__ = ("started", "done", "stop_reason", "text_deltas", "input_tokens", "output_tokens",
                 "message_id", "require_stop")

    def __init__(self, require_stop: bool = True) -> None:
        # message_stop with text but no stop_reason is a cut answer, as a Chat Completions [DONE]
        # without finish_reason is; ``finish_reason: optional`` providers are excused.
        self.require_stop = require_stop
        self.started = False  # message_start seen
        self.done = False  # message_stop seen
        self.stop_reason: str | None = None
        self.text_deltas = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.message_id: str | None = None

    @property
    def finished(self) -> bool:
        """``message_stop`` arrived."""
        return self.done

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event; True if it carried non-empty answer text."""
        if self.done or event == "ping" or not data:
            return False  # the SDK skips pings and empty data the same way
        obj = _json_object(data, event)
        kind = obj.get("type") or event
        if kind == "ping":
            return False
        if kind == "error" or event == "error":
            raise ProbeFailure(*classify_anthropic_error(None, obj))
        if kind == "message_start":
            self._start(obj.get("message"))
            return False
        if not self.started and kind in ("content_block_start", "content_block_delta", "message_delta",
                                         "message_stop"):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "out_of_order", f"{kind} before message_start")
        if kind == "content_block_delta":
            return self._delta(obj.get("delta"))
        if kind == "message_delta":
            self._message_delta(obj)
        elif kind == "message_stop":
            self.done = True
        return False  # content_block_start/stop and future event types carry no answer text

    def _start(self, message: Any) -> None:
        if not isinstance(message, dict):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event", "message_start without a message")
        self.started = True
        self.message_id = message.get("id")
        self._usage(message.get("usage"))

    def _delta(self, delta: Any) -> bool:
        # Only text answers count: thinking, signature, tool-input and citation deltas do not.
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                self.text_deltas += 1
                return True
        return False

    def _message_delta(self, obj: dict) -> None:
        delta = obj.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self.stop_reason = str(delta["stop_reason"])
        self._usage(obj.get("usage"))

    def _usage(self, usage: Any) -> None:
        """Take each count from the latest event that carries it: counts are cumulative, and
        LiteLLM's Messages bridge sends ``input_tokens: 0`` at the start, the real count at the end."""
        if not isinstance(usage, dict):
            return
        for name in ("input_tokens", "output_tokens"):
            value = as_int(usage.get(name))
            if value is not None:
                setattr(self, name, value)

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.stop_reason == "refusal":
            return ProbeFailure(Outcome.CONTENT_BLOCKED, "refusal", "the model refused (stop_reason refusal)")
        if not self.done:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator", "stream ended without message_stop")
        if self.require_stop and not self.stop_reason:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_finish_reason",
                                f"message_stop after {self.text_deltas} text deltas without a stop_reason: "
                                "the answer was cut off")
        if not self.text_deltas:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                                f"message stopped ({self.stop_reason or 'no stop_reason'}) without text")
        return None

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens as reported so far."""
        return self.input_tokens, self.output_tokens


def _json_object(data: str, event: str) -> dict:
    """The event's JSON object; broken JSON is a protocol error, a bare error text is classified."""
    try:
        obj = json.loads(data)
    except ValueError:
        if event == "error":
            raise ProbeFailure(*classify_anthropic_error(None, data)) from None
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                           f"malformed JSON in stream: {data[:60]}") from None
    if not isinstance(obj, dict):
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream event is not an object")
    return obj


def _is_error(body: Any) -> bool:
    return isinstance(body, dict) and body.get("type") == "error"


# The request id comes as ``request-id``, and in error bodies when a proxy drops the header.
ERRORS = ErrorReading(classify_anthropic_error, is_error=_is_error, request_id_header="request-id",
                      request_id_in_body=True, byte_capped=True)


async def probe_anthropic(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One streamed Messages request, timed phase by phase."""
    stream = MessageStream(require_stop=job.provider.finish_reason == "required")
    await stream_request(http, m, build_request(job), stream, ERRORS)


ANTHROPIC = ProviderType("anthropic", anthropic_auth, classify_anthropic_error, "Anthropic's Messages API",
                         provider_keys=frozenset({"auth_style"}))
SPEC = ProbeSpec("rest", ("anthropic",), probe_anthropic, classify_anthropic_error, text_tokens,
                 "Messages streaming")
