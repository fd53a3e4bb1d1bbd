"""What the OpenAI family shares: its provider types, how they take a key, one error taxonomy.

The family is OpenAI, Azure OpenAI and every OpenAI-compatible server (vLLM,
Ollama, OpenRouter, Groq, LiteLLM, ...). Chat Completions, Responses and
Realtime all classify errors with :func:`classify_openai_error`; a module
with a wire format of its own adds only the codes that format has.

==================  ================================
provider type       credential header
==================  ================================
openai, compatible  ``Authorization: Bearer <key>``
azure-openai        ``api-key: <key>``
==================  ================================
"""

from __future__ import annotations

from typing import Any

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, outcome_for_status
from modelwatch.probes.parsing import (ENDPOINT_NOT_FOUND, GATEWAY_COOLDOWN, error_fields, is_gateway_cooldown,
                                       is_missing_endpoint)
from modelwatch.probes.spec import ProviderType

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


def bearer_auth(job: ProbeJob) -> dict[str, str]:
    """``Authorization: Bearer <key>`` (no header without a key)."""
    return {} if job.api_key is None else {"Authorization": f"Bearer {job.api_key.reveal()}"}


def azure_auth(job: ProbeJob) -> dict[str, str]:
    """Azure's ``api-key: <key>`` (its ``?api-key=`` form would put the key in URLs)."""
    return {} if job.api_key is None else {"api-key": job.api_key.reveal()}


def openai_auth(job: ProbeJob) -> dict[str, str]:
    """The credential header of any member of the family."""
    return azure_auth(job) if job.provider.type == "azure-openai" else bearer_auth(job)


OPENAI = ProviderType("openai", bearer_auth, classify_openai_error, "OpenAI's own API")
AZURE_OPENAI = ProviderType("azure-openai", azure_auth, classify_openai_error,
                            "Azure OpenAI: deployments as models, api-version dated or v1",
                            api_version_in_query=True, lists_models_by_target_name=False)
OPENAI_COMPATIBLE = ProviderType("openai-compatible", bearer_auth, classify_openai_error,
                                 "any server speaking OpenAI's wire format (vLLM, Ollama, OpenRouter, Groq, ...)",
                                 needs_key=False)
FAMILY = ("openai", "azure-openai", "openai-compatible")
