"""The probe registry: every provider type and every prober, each declared once as a spec.

Config validation (provider types, kinds, which options apply where),
``check-config``, the cost estimate of ``probe --dry-run``, the daily budget
and the daemon all read their answers here; none keeps a list of its own.
A provider module declares its :class:`~modelwatch.probes.spec.ProbeSpec`
(and, for a new wire family, its :class:`~modelwatch.probes.spec.ProviderType`);
adding one is a line below. See docs/contributing.md.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.probes import (anthropic, conversation, conversation_realtime, gemini, gemini_live, openai_chat,
                               openai_realtime, openai_responses, openai_webrtc, voice_chain)
from modelwatch.probes.base import Measurement, Prober
from modelwatch.probes.google_family import GEMINI
from modelwatch.probes.models import models_spec
from modelwatch.probes.openai_family import AZURE_OPENAI, OPENAI, OPENAI_COMPATIBLE
from modelwatch.probes.spec import NO_DETAILS, RESTRICTED_OPTIONS, DetailSeries, ProbeSpec, ProviderType

# In the order config messages list them.
PROVIDERS: dict[str, ProviderType] = {p.name: p for p in (
    OPENAI, AZURE_OPENAI, anthropic.ANTHROPIC, GEMINI, OPENAI_COMPATIBLE)}

SPECS: tuple[ProbeSpec, ...] = (
    openai_chat.SPEC,  # Chat Completions; openai_responses with ``api: responses``
    openai_responses.SPEC,
    anthropic.SPEC,
    gemini.SPEC,
    openai_realtime.SPEC,
    openai_webrtc.SPEC,  # transport: webrtc
    gemini_live.SPEC,
    voice_chain.SPEC,
    conversation.SPEC_REST,
    conversation_realtime.SPEC_REALTIME,
    conversation_realtime.SPEC_LIVE,
    *(models_spec(p) for p in PROVIDERS.values()),  # the free check, every provider type
)

PROVIDER_TYPES: tuple[str, ...] = tuple(PROVIDERS)
PROBE_KINDS: tuple[str, ...] = tuple(dict.fromkeys(spec.kind for spec in SPECS))
PROBE_APIS: tuple[str, ...] = tuple(dict.fromkeys(spec.api for spec in SPECS))  # the ``api`` setting's values
# WebRTC specs stand beside the WebSocket ones of the same kind and API: ``transport: webrtc``
# picks them, and only them.
_BY_KEY: dict[tuple[str, str, str], ProbeSpec] = {
    (ptype, spec.kind, spec.api): spec for spec in SPECS if spec.transport != "webrtc"
    for ptype in spec.provider_types}
_WEBRTC: dict[tuple[str, str, str], ProbeSpec] = {
    (ptype, spec.kind, spec.api): spec for spec in SPECS if spec.transport == "webrtc"
    for ptype in spec.provider_types}


def spec_for(provider_type: str, kind: str, api: str = "chat", transport: str | None = None) -> ProbeSpec | None:
    """The spec of a provider type's kind (and ``api``, and ``transport: webrtc``), or None if it has none."""
    return (_WEBRTC if transport == "webrtc" else _BY_KEY).get((provider_type, kind, api))


def job_spec(job: ProbeJob) -> ProbeSpec:
    """The spec a valid job runs (config validation guarantees it exists)."""
    return (_WEBRTC if job.probe.transport == "webrtc" else _BY_KEY)[(job.provider.type, job.probe.kind, job.probe.api)]


def webrtc_provider_types() -> list[str]:
    """The provider types that have a WebRTC probe, in registry order."""
    return [t for t in PROVIDER_TYPES if any(ptype == t for (ptype, _, _) in _WEBRTC)]


def detail_series(job: ProbeJob) -> DetailSeries:
    """The extra series (stages, turn bands, interrupt) a job exports; none for an unknown job."""
    spec = spec_for(job.provider.type, job.probe.kind, job.probe.api, job.probe.transport)
    return NO_DETAILS if spec is None else spec.details(job)


def probe_info(job: ProbeJob) -> dict[str, str]:
    """What a probe's series labels do not say: its ``api``, ``modality`` (what its ttft_s times: a
    first token, or a first audio) and ``transport``."""
    spec = spec_for(job.provider.type, job.probe.kind, job.probe.api, job.probe.transport)
    transport = spec.transport if spec is not None else "http"
    if job.probe.kind == "voice-chain":
        modality = "audio"
    elif transport == "websocket":
        modality = job.probe.modality
    else:
        modality = "text"
    return {"api": job.probe.api, "modality": modality, "transport": transport}


def default_api(provider_type: str, kind: str) -> str:
    """The ``api`` a probe that names none gets: ``chat``, or the kind's only API for the type
    (a Gemini conversation is a Live session: it has no REST form yet)."""
    apis = [api for (ptype, k, api) in _BY_KEY if ptype == provider_type and k == kind]
    return apis[0] if len(apis) == 1 else "chat"


def supported_kinds(provider_type: str) -> set[str]:
    """The probe kinds a provider type has."""
    return {kind for (ptype, kind, _) in _BY_KEY if ptype == provider_type}


def _by_api(variants: dict[tuple[str, bool], Prober]) -> Prober:
    """One prober for a kind with several wire APIs or transports: the job's ``api`` and
    ``transport`` pick one."""
    async def probe(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
        await variants[(job.probe.api, job.probe.transport == "webrtc")](job, http, m)
    return probe


def _probers() -> dict[tuple[str, str], Prober]:
    variants: dict[tuple[str, str], dict[tuple[str, bool], Prober]] = {}
    for webrtc, table in ((False, _BY_KEY), (True, _WEBRTC)):
        for (ptype, kind, api), spec in table.items():
            variants.setdefault((ptype, kind), {})[(api, webrtc)] = spec.prober
    return {key: next(iter(by_api.values())) if len(by_api) == 1 else _by_api(by_api)
            for key, by_api in variants.items()}


PROBERS: dict[tuple[str, str], Prober] = _probers()


def prober_for(provider_type: str, kind: str) -> Prober:
    """The prober for a provider type and kind (config validation guarantees it exists)."""
    return PROBERS[(provider_type, kind)]


def _and(names: Iterable[str]) -> str:
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def api_problem(provider_type: str, kind: str, api: str) -> str | None:
    """Why ``api`` does not fit a provider type's kind, or None if a spec speaks it."""
    if spec_for(provider_type, kind, api) is not None:
        return None
    specs = [s for s in SPECS if s.api == api]
    here = [a for (ptype, k, a) in _BY_KEY if ptype == provider_type and k == kind]
    if here and any(provider_type in s.provider_types for s in specs):
        # "api: chat is for ... gemini providers" would contradict the refusal: name what fits instead
        return f"{kind} probes of {provider_type} providers take api: {_and(here)}"
    return (f"api: {api} is for {_and(s.kind for s in specs)} probes of "
            f"{_and(t for s in specs for t in PROVIDER_TYPES if t in s.provider_types)} providers")


def option_problem(spec: ProbeSpec, provider_type: str, probe: object) -> tuple[str, str] | None:
    """The first restricted option set on a probe that neither its spec nor its provider type
    honours, as (option, reason)."""
    provider = PROVIDERS[provider_type]
    for option, reason in RESTRICTED_OPTIONS.items():
        if getattr(probe, option) is None or option in provider.probe_options \
                or provider_type in spec.options.get(option, ()):
            continue
        specs = [s for s in SPECS if s.options.get(option)]
        types = [t for t in PROVIDER_TYPES if option in PROVIDERS[t].probe_options
                 or any(t in s.options[option] for s in specs)]
        return option, reason.format(kinds=_and(s.kind for s in specs) if specs else "all",
                                     types=_and(types), apis=_and(s.api for s in specs) if specs else "any")
    return None
