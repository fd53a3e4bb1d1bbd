"""Parsing every provider shares: error bodies of any shape, missing endpoints, gateway cooldowns.

Pure functions over bytes and dicts. Provider modules import from here (and
from their family's taxonomy module), never from one another.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.sse import SSEDecoder

ERROR_BODY_LIMIT = 65536
ENDPOINT_NOT_FOUND = "endpoint_not_found"
GATEWAY_COOLDOWN = "gateway_cooldown"
# LiteLLM's router (1.x) answers 429 "No deployments available for selected model, Try again in
# 5 seconds ... cooldown_list=[...]" once every upstream deployment of a model failed and is
# cooling down: the provider side is down, not our rate limit.
_COOLDOWN = re.compile(r"no deployments available for selected model|deployments for selected model "
                       r"are in cooldown|cooldown_list=", re.I)
_NAMES_MODEL = re.compile(r"\b(?:models?|deployments?)\b", re.I)
_URL_PATH = re.compile(r"/\S*")  # "Invalid URL (POST /openai/deployments/x/...)" names a path, not a model
_TITLE = re.compile(r"<title>(.*?)</title>", re.I | re.S)


def as_int(value: Any) -> int | None:
    """``value`` if it is a JSON integer (not a bool), else None: token counts from untrusted JSON."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


def html_title(text: str) -> str | None:
    """``HTML body: <title>`` for an HTML page (a gateway's error page), else None."""
    title = _TITLE.search(text)
    return f"HTML body: {title.group(1).strip()}" if title else None


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
    return "", "", html_title(text) or text.strip(), None


def _google_reason(inner: dict) -> str:
    """The ErrorInfo ``reason`` of a Google-style error (e.g. API_KEY_INVALID), lower-cased."""
    for detail in inner.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return _norm(detail["reason"])
    return ""


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
