"""What Google's two protocols share: the provider type, its key header, the RPC error taxonomy.

Gemini's REST API (``streamGenerateContent``) and its Live API (WebSocket)
answer errors as ``google.rpc.Status`` bodies (``{"error": {"code",
"status", "message", "details"}}``); :func:`classify_google_error` is the one
place that maps them to outcomes. The key travels only in ``x-goog-api-key``
(never ``?key=``, which would put it in every logged URL).
"""

from __future__ import annotations

import re
from typing import Any

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, outcome_for_status
from modelwatch.probes.parsing import ENDPOINT_NOT_FOUND, html_title, is_missing_endpoint
from modelwatch.probes.spec import ProviderType

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
    return None, "", html_title(text) or text.strip(), []


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


def google_auth(job: ProbeJob) -> dict[str, str]:
    """``x-goog-api-key: <key>``."""
    return {} if job.api_key is None else {"x-goog-api-key": job.api_key.reveal()}


GEMINI = ProviderType("gemini", google_auth, classify_google_error,
                      "Google's Gemini API (REST streaming and the Live WebSocket)",
                      probe_options=frozenset({"thinking_level"}))
