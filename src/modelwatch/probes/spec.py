"""What the registry knows about a provider type and a probe kind: the specs, and their estimates.

A :class:`ProviderType` is the config's ``providers.*.type``: how its key
travels, which error taxonomy it speaks and which settings only it accepts. A
:class:`ProbeSpec` is one prober and everything the rest of modelwatch needs
to know about it: config validation, ``check-config``, the cost estimate of
``probe --dry-run`` and the daily budget all read it, none keeps its own
switch over kinds or types. Each provider module declares its own specs; the
registry (:mod:`modelwatch.probes`) only lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome
from modelwatch.probes.audio import prompt_audio_seconds
from modelwatch.probes.base import Prober

Classifier = Callable[[int | None, Any], tuple[Outcome, str, str]]
# Upper-bound tokens of one probe: (text in, text out, audio in, audio out).
Tokens = tuple[int, int, int, int]
Estimate = Callable[[ProbeJob], Tokens]

PROMPT_OVERHEAD_TOKENS = 8  # chat framing around the prompt
REALTIME_INSTRUCTION_TOKENS = 12  # "Reply with one word." plus session framing
PROMPT_AUDIO_S = prompt_audio_seconds()
# Input audio tokens per second of the spoken prompt: Google documents 32; OpenAI's realtime
# models bill about 10 [MEM].
DEFAULT_AUDIO_TOKENS_PER_S = 10
# A barge-in probe's output cap: room for an answer long enough to interrupt (the cancel ends it sooner).
INTERRUPT_MAX_TOKENS = 400


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderType:
    """A provider type: the wire family behind ``providers.*.type``."""

    name: str
    auth: Callable[[ProbeJob], dict[str, str]]  # the credential headers (a key never goes in a URL)
    classify: Classifier  # its error taxonomy, for answers outside any stream
    doc: str
    needs_key: bool = True  # openai-compatible servers may run without one
    provider_keys: frozenset[str] = frozenset()  # provider settings only this type accepts
    probe_options: frozenset[str] = frozenset()  # restricted probe options all its probes honour
    api_version_in_query: bool = False  # ``api_version`` travels as ``?api-version=`` (Azure)
    # Its model list names what targets call ``model`` (Azure's lists base models, not deployments).
    lists_models_by_target_name: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class DetailSeries:
    """The extra series a probe exports beside the common ones (metrics.py renders them)."""

    stages: tuple[str, ...] = ()  # modelwatch_probe_stage_seconds{stage}
    turn_bands: tuple[str, ...] = ()  # modelwatch_probe_turn_ttft_seconds{turn_band}
    interrupt: bool = False  # modelwatch_probe_interrupt_seconds


NO_DETAILS = DetailSeries()


def _no_details(job: ProbeJob) -> DetailSeries:
    return NO_DETAILS


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One prober: the kind and provider types it serves, and what it costs."""

    kind: str
    provider_types: tuple[str, ...]
    prober: Prober
    classify: Classifier
    estimate: Estimate
    doc: str
    api: str = "chat"  # the ``api`` setting that selects it, when a kind has more than one wire API
    transport: Literal["http", "websocket", "webrtc"] = "http"
    paid: bool = True  # spends tokens: a spent daily budget pauses it
    # Restricted probe options (RESTRICTED_OPTIONS) it honours, and for which of its provider types.
    options: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    details: Callable[[ProbeJob], DetailSeries] = _no_details
    # Upper-bound USD of one probe, for a probe priced stage by stage (None: price ``estimate``'s
    # tokens at the target's price, as every single-model probe is).
    cost: Callable[[ProbeJob], float | None] | None = None


# Probe options only some probes honour (every other option applies everywhere), and what
# check-config says when one is set elsewhere. ``{kinds}``, ``{types}`` and ``{apis}`` name the
# kinds, provider types and APIs whose specs honour it, in registry order.
RESTRICTED_OPTIONS: dict[str, str] = {
    "thinking_level": "applies to {types} providers only",
    "extra_body": "applies to {kinds} probes of {types} providers with api: {apis}",
    "stt_model": "applies to {kinds} probes only ({types} providers)",
    "tts_model": "applies to {kinds} probes only ({types} providers)",
    "stt_stream": "applies to {kinds} probes only ({types} providers)",
    "tts_format": "applies to {kinds} probes only ({types} providers)",
    "tts_stream_format": "applies to {kinds} probes only ({types} providers)",
    "turns": "applies to {kinds} probes only ({types} providers)",
    "interrupt_after": "applies to {kinds} probes of {types} providers (it sends response.cancel)",
}


def text_tokens(job: ProbeJob, min_output: int = 0) -> Tokens:
    """A REST probe: the prompt with its framing in, at most the output cap out."""
    p = job.probe
    return PROMPT_OVERHEAD_TOKENS + max(1, len(p.prompt) // 4), max(p.max_tokens, min_output), 0, 0


def realtime_tokens(audio_tokens_per_s: int = DEFAULT_AUDIO_TOKENS_PER_S) -> Estimate:
    """A realtime session's estimate: instructions plus the text prompt, or the spoken prompt."""
    def estimate(job: ProbeJob) -> Tokens:
        p = job.probe
        if p.modality == "audio":  # the spoken prompt replaces the text one; the reply is audio
            cap = p.max_tokens if p.interrupt_after is None else max(p.max_tokens, INTERRUPT_MAX_TOKENS)
            return REALTIME_INSTRUCTION_TOKENS, 0, round(PROMPT_AUDIO_S * audio_tokens_per_s), cap
        text_in, text_out, _, _ = text_tokens(job)
        return text_in + REALTIME_INSTRUCTION_TOKENS, text_out, 0, 0
    return estimate


def no_tokens(job: ProbeJob) -> Tokens:
    """A check that spends no tokens."""
    return 0, 0, 0, 0
