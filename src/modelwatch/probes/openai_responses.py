"""OpenAI Responses API streaming probe (``api: responses``; PROTOCOLS.md §4.5).

Sends ``POST {base_url}/responses`` with a tiny prompt, ``stream: true``, a
small ``max_output_tokens`` and ``store: false`` (a probe must not leave a
stored response behind every minute), then times: response headers
(``ttfb_s``), the first ``response.output_text.delta`` with a non-empty delta
(``ttft_s``; reasoning-summary and refusal deltas do not count) and the
terminal event (``duration_s``): ``response.completed``, ``response.failed``
or ``response.incomplete``. There is no ``[DONE]``; a stream that closes
before a terminal event is a ``protocol_error`` / ``no_terminator``.

Non-200 answers and in-stream error objects are classified with the Chat
Completions helpers (same error shapes, same taxonomy); ``response.failed``
codes go through :func:`classify_response_error` first, which knows the
Responses-only codes. Decoding is a pure class fed SSE events, tested with
captures. The registry picks this probe or the Chat Completions one by
``probe.api``: both are ``kind: rest`` specs of the OpenAI family.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.logs import fields
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.http import ErrorReading, stream_request
from modelwatch.probes.openai_family import FAMILY, classify_openai_error, openai_auth
from modelwatch.probes.parsing import as_int, error_fields
from modelwatch.probes.spec import ProbeSpec, Tokens, text_tokens

log = logging.getLogger("modelwatch.probe")

# The Responses API rejects max_output_tokens below 16 [PROTOCOLS MEM]; its probe never asks for less.
MIN_OUTPUT_TOKENS = 16

TERMINAL = ("response.completed", "response.failed", "response.incomplete")

# response.failed codes (SDK ``response_error.py``) that mean the request was at fault.
_CLIENT_CODES = {"invalid_prompt", "data_residency_mismatch", "empty_image_file", "image_file_not_found",
                 "failed_to_download_image", "unsupported_image_media_type", "image_file_too_large"}
_POLICY_CODES = {"bio_policy", "misalignment_policy_violation", "image_content_policy_violation"}


def build_request(job: ProbeJob) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request."""
    p = job.probe
    body: dict[str, Any] = {
        "model": job.model,
        "input": p.prompt,
        "stream": True,
        "max_output_tokens": max(p.max_tokens, MIN_OUTPUT_TOKENS),
        "store": False,
    }
    if p.reasoning_effort is not None:
        body["reasoning"] = {"effort": p.reasoning_effort}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **openai_auth(job)}
    url = f"{job.provider.base_url}/responses"
    if job.provider.type == "azure-openai" and job.provider.api_version:
        # v1 form: base_url .../openai/v1. Dated form: base_url .../openai plus ?api-version=
        # (the Responses API takes the deployment as ``model`` in both).
        url += f"?api-version={quote(job.provider.api_version)}"
    return url, headers, json.dumps(body).encode()


def classify_response_error(error: Any) -> tuple[Outcome, str, str]:
    """Outcome, error code and message for ``response.error`` or an ``error`` event's fields."""
    if not isinstance(error, dict):
        return classify_openai_error(None, {"error": error})
    code = str(error.get("code") or "").lower()
    message = str(error.get("message") or "")
    if code in _POLICY_CODES:
        return Outcome.CONTENT_BLOCKED, code, message
    fields = {key: error.get(key) for key in ("code", "message", "param", "type")}
    if not fields["type"] and (code in _CLIENT_CODES or code.startswith(("invalid_", "image_"))):
        fields["type"] = "invalid_request_error"  # a bad_request, not the server's fault
    return classify_openai_error(None, {"error": fields})


class ResponsesStream:
    """State of one Responses API stream, fed with each SSE event."""

    __slots__ = ("done", "closed", "status", "text_deltas", "refusal", "usage", "incomplete_reason",
                 "response_id", "events")

    def __init__(self) -> None:
        self.done = False  # a terminal event arrived
        self.closed = False  # the server sent [DONE] (compatible servers); nothing more will come
        self.status: str | None = None
        self.text_deltas = 0
        self.refusal = False
        self.usage: dict | None = None
        self.incomplete_reason: str | None = None
        self.response_id: str | None = None
        self.events = 0

    @property
    def finished(self) -> bool:
        """A terminal event, or a compatible server's ``[DONE]``, arrived."""
        return self.done or self.closed

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event; True if it carried non-empty output text."""
        if self.done or self.closed:
            return False
        if data.startswith("[DONE]"):
            self.closed = True
            return False
        obj = _json_object(data, event)
        self.events += 1
        kind = obj.get("type") or event
        if not isinstance(kind, str) or not kind:
            if obj.get("error") or obj.get("object") == "error":  # a Chat-style error chunk
                raise ProbeFailure(*classify_openai_error(None, obj))
            return False
        if kind == "response.output_text.delta":
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self.text_deltas += 1
                return True
        elif kind == "response.refusal.delta":
            self.refusal = True
        elif kind == "error":
            # SDK shape: code/message/param beside ``type: error``; some streams nest an ``error`` object.
            inner = obj.get("error")
            fields = inner if isinstance(inner, dict) else {k: obj.get(k) for k in ("code", "message", "param")}
            raise ProbeFailure(*classify_response_error(fields))
        elif kind.startswith("response."):
            self._lifecycle(kind, obj.get("response"))
        return False

    def _lifecycle(self, kind: str, response: Any) -> None:
        """Track created/queued/in_progress and handle the three terminal events."""
        if not isinstance(response, dict):
            if kind in TERMINAL:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_event", f"{kind} without a response object")
            return
        self.response_id = self.response_id or response.get("id")
        if kind not in TERMINAL:
            return
        self.done = True
        self.status = response.get("status") or kind.removeprefix("response.")
        if isinstance(response.get("usage"), dict):
            self.usage = response["usage"]
        if kind == "response.failed":
            error = response.get("error")
            if not error:
                raise ProbeFailure(Outcome.SERVER_ERROR, "response_failed", "response.failed without an error")
            raise ProbeFailure(*classify_response_error(error))
        if kind == "response.incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.incomplete_reason = str(reason) if reason else "unknown"

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.refusal or self.incomplete_reason == "content_filter":
            return ProbeFailure(Outcome.CONTENT_BLOCKED, self.incomplete_reason or "refusal",
                                "the model refused or the content filter stopped it")
        if not self.done:
            ended = "[DONE]" if self.closed else "end of stream"
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator",
                                f"{ended} before response.completed, failed or incomplete")
        reason = self.incomplete_reason
        if reason not in (None, "max_output_tokens"):
            return ProbeFailure(Outcome.PROTOCOL_ERROR, f"incomplete_{reason}",
                                f"response incomplete ({reason})")
        if not self.text_deltas:
            why = " (max_output_tokens reached, e.g. by reasoning)" if reason else ""
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content", f"response {self.status} without text{why}")
        return None

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens from the terminal event's usage, if any."""
        u = self.usage or {}
        return as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))


def _json_object(data: str, event: str) -> dict:
    """The event's JSON object; a broken payload is a protocol error, a bare error text classified."""
    try:
        obj = json.loads(data)
    except ValueError:
        if event == "error":  # llama.cpp-style ``error:`` field with a text payload (see sse.py)
            raise ProbeFailure(*classify_openai_error(None, data)) from None
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                           f"malformed JSON in stream: {data[:60]}") from None
    if isinstance(obj, list) and obj:  # Gemini-compat style error array
        raise ProbeFailure(*classify_openai_error(None, obj))
    if not isinstance(obj, dict):
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream event is not an object")
    return obj


def _is_response(body: Any) -> bool:
    """A whole Response object (a server that ignored ``stream``): not an error body."""
    return isinstance(body, dict) and body.get("object") == "response"


def _is_error(body: Any) -> bool:
    """A JSON error object that came with status 200 instead of a stream."""
    return isinstance(body, (dict, list)) and bool(error_fields(body)[2]) and not _is_response(body)


ERRORS = ErrorReading(classify_openai_error, is_error=_is_error)


async def probe_openai_responses(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One streamed Responses API request, timed phase by phase."""
    stream = ResponsesStream()
    await stream_request(http, m, build_request(job), stream, ERRORS)
    if stream.incomplete_reason:
        log.debug("probe ok at the output cap", extra=fields(target=job.target, reason=stream.incomplete_reason,
                                                             output_tokens=m.output_tokens))


def estimate(job: ProbeJob) -> Tokens:
    """As a chat request, with the output cap raised to what the API accepts."""
    return text_tokens(job, MIN_OUTPUT_TOKENS)


SPEC = ProbeSpec("rest", FAMILY, probe_openai_responses, classify_openai_error, estimate,
                 "Responses API streaming (api: responses)", api="responses")
