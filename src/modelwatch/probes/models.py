"""The free check: list the provider's models (``kind: models``).

``GET {base_url}/models`` costs no tokens, so it keeps running when a daily
budget pauses the paid probes. It proves the endpoint answers, the key is
accepted and, when the provider's list is complete on its first page, that the
target's model is still offered (a retired model fails as
``model_unavailable`` before any paid probe would). Timed: response headers
(``ttfb_s``) and the whole body (``duration_s``); there is no first token.

Every provider type has it: :func:`models_spec` makes the spec of one type,
with that type's key header and error taxonomy (from its :class:`ProviderType`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.http import read_body, request_id_from
from modelwatch.probes.parsing import parse_body, status_failure
from modelwatch.probes.spec import ProbeSpec, ProviderType, no_tokens

OFF_LOOP_BYTES = 256 * 1024


def models_request(job: ProbeJob, ptype: ProviderType) -> tuple[str, dict[str, str]]:
    """URL and headers of the model list request."""
    provider = job.provider
    url = f"{provider.base_url}/models"
    if ptype.api_version_in_query and provider.api_version:
        url += f"?api-version={quote(provider.api_version)}"
    headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "modelwatch",
               **provider.headers, **ptype.auth(job)}
    return url, headers


def listed_models(body: Any) -> tuple[set[str], bool] | None:
    """(model ids, whether the list is complete) from any provider's list shape, or None.

    OpenAI and compatible servers: ``{"data": [{"id": ...}]}``; Anthropic adds
    ``has_more``; Gemini: ``{"models": [{"name": "models/..."}], "nextPageToken"}``.
    """
    if not isinstance(body, dict):
        return None
    items = body.get("data") if isinstance(body.get("data"), list) else body.get("models")
    if not isinstance(items, list):
        return None
    ids: set[str] = set()
    for item in items:
        if isinstance(item, dict):
            name = item.get("id") or item.get("name") or ""
            ids.add(str(name).removeprefix("models/"))
    complete = not body.get("has_more") and not body.get("nextPageToken")
    return ids, complete


_DATED = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


def is_listed(model: str, ids: set[str]) -> bool:
    """Whether ``model`` is in the list, itself or as an alias of a dated snapshot.

    Anthropic lists only dated ids (``claude-haiku-4-5-20251001``) while
    ``claude-haiku-4-5`` is what people configure; a date suffix is the only
    difference allowed, so ``gpt-4o`` is not taken as listed by ``gpt-4o-mini``.
    """
    return model in ids or any(i.startswith(model) and _DATED.fullmatch(i[len(model):]) for i in ids)


def models_spec(provider: ProviderType) -> ProbeSpec:
    """The model-list check of one provider type: free, so a spent budget does not pause it."""
    async def probe(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
        await probe_models(job, http, m, provider)
    return ProbeSpec("models", (provider.name,), probe, provider.classify, no_tokens,
                     "GET /models: key accepted, model still listed (no tokens)", paid=False)


async def probe_models(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement, provider: ProviderType) -> None:
    """One model-list request: reachable, authorised, and the model still listed."""
    url, headers = models_request(job, provider)
    async with http.get(url, headers=headers, allow_redirects=False) as resp:
        m.ttfb_s = m.elapsed()
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers)
        m.enter("total")
        raw = await read_body(resp, job.probe.max_response_bytes + 1)
        m.duration_s = m.elapsed()
    if len(raw) > job.probe.max_response_bytes:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "response_too_large",
                           f"response exceeded {job.probe.max_response_bytes} bytes")
    if resp.status != 200:
        raise status_failure(provider.classify(resp.status, parse_body(raw)), resp.status, resp.request_info)
    try:
        # OpenRouter's full list is megabytes: parsing it on the loop would delay other probes' reads.
        parsed = await asyncio.to_thread(json.loads, raw) if len(raw) > OFF_LOOP_BYTES else json.loads(raw)
        listing = listed_models(parsed)
    except ValueError:
        listing = None
    if listing is None:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "not_a_model_list", "the answer is not a model list")
    ids, complete = listing
    # Azure lists base models, not deployments, so its list says nothing about the target.
    if complete and provider.lists_models_by_target_name and not is_listed(job.model, ids):
        raise ProbeFailure(Outcome.MODEL_UNAVAILABLE, "not_listed",
                           f"model {job.model} is not in the provider's model list ({len(ids)} listed)")
