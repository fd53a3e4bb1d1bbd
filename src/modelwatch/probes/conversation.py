"""Conversation probes (``kind: conversation``): one session of ``turns`` short turns, timed turn by turn.

A voice agent's session ages: the realtime context grows with every turn, and
published figures show its time to first audio climbing after 20 turns while
stateless REST stays flat. This kind measures exactly that, continuously::

    api: realtime   one OpenAI/Azure Realtime or Gemini Live WebSocket session:
                    the session set up once, then per turn the prompt (text, or
                    the spoken prompt with ``modality: audio``) and its answer
    api: chat       (default; openai, azure-openai, openai-compatible) the
                    stateless baseline: one Chat Completions request per turn,
                    each resending the growing history (user prompt, the answer
                    the model actually gave, ...)

Each turn's ``ttft_s`` and ``duration_s`` count from the end of the turn's
input (``response.create``, ``turnComplete``/``activityEnd`` sent, or the REST
request sent) and go to ``probe_turns`` and, by band of turns, to
``modelwatch_probe_turn_ttft_seconds``. The probe's own ``ttft_s`` is turn 1's
from the probe's start; ``duration_s`` the whole session. A failure at turn k
(an error, a session cap such as ``session_expired``, a close, Gemini's
``goAway``) ends the probe with its outcome and ``turnK:`` in ``error_code``;
the turns before it are kept. Tokens are the sums over the turns (each turn's
input is the whole context so far: that is what is billed).
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import TURN_BANDS, TurnTiming
from modelwatch.probes.base import Measurement, round_s
from modelwatch.probes.http import stream_request
from modelwatch.probes.openai_chat import ERRORS, ChatStream, build_request
from modelwatch.probes.openai_family import FAMILY, classify_openai_error
from modelwatch.probes.spec import (DEFAULT_AUDIO_TOKENS_PER_S, PROMPT_AUDIO_S, PROMPT_OVERHEAD_TOKENS,
                                    REALTIME_INSTRUCTION_TOKENS, DetailSeries, ProbeSpec, Tokens)

DEFAULT_TURNS = 20


def turns_of(job: ProbeJob) -> int:
    """How many turns the probe's session has."""
    return job.probe.turns or DEFAULT_TURNS


async def probe_rest_conversation(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """``turns`` Chat Completions requests, each with the whole history so far: the stateless baseline."""
    history: list[dict] = []
    totals = [None, None]
    turns = turns_of(job)
    for k in range(1, turns + 1):  # connect_timeout, then turn 1's first token bounds the wait (base.probe_trace)
        m.stage = f"turn{k}"
        history.append({"role": "user", "content": job.probe.prompt})
        step = m.child(first_output_ends_ttft=k == 1)
        start_s = step.start - m.start
        stream = ChatStream(require_done=job.provider.type == "openai",
                            require_finish=job.provider.finish_reason == "required")
        try:
            await stream_request(http, step, build_request(job, history), stream, ERRORS)
        finally:
            tokens = stream.tokens()
            totals = add_counts(totals, tokens)
            m.input_tokens, m.output_tokens = totals
            m.turns.append(TurnTiming(k, round_s(start_s), round_s(step.ttft_s), round_s(step.duration_s),
                                      *tokens))
            m.took_step(step)
            if k == 1:
                m.ttfb_s = None if step.ttfb_s is None else start_s + step.ttfb_s
                m.ttft_s = None if step.ttft_s is None else start_s + step.ttft_s
        history.append({"role": "assistant", "content": stream.answer()})
    m.stage = None
    m.duration_s = m.elapsed()


def add_counts(totals: Sequence[int | None], more: Sequence[int | None]) -> list[int | None]:
    """Token counts summed position by position; a count stays None until some step reports it."""
    return [t if n is None else (t or 0) + n for t, n in zip(totals, more, strict=True)]



def conversation_tokens(realtime: bool, audio_tokens_per_s: int = DEFAULT_AUDIO_TOKENS_PER_S):
    """Upper-bound tokens of a conversation: turn k sends the whole context of the k-1 turns before it."""
    def estimate(job: ProbeJob) -> Tokens:
        p, n = job.probe, turns_of(job)
        framing = PROMPT_OVERHEAD_TOKENS + (REALTIME_INSTRUCTION_TOKENS if realtime else 0)
        if realtime and p.modality == "audio":
            heard = round(PROMPT_AUDIO_S * audio_tokens_per_s)
            # context of turn k: k spoken prompts and k-1 spoken answers
            audio_in = sum(k * heard + (k - 1) * p.max_tokens for k in range(1, n + 1))
            return framing * n, 0, audio_in, n * p.max_tokens
        prompt = max(1, len(p.prompt) // 4)
        text_in = sum(framing + k * prompt + (k - 1) * p.max_tokens for k in range(1, n + 1))
        return text_in, n * p.max_tokens, 0, 0
    return estimate


def turn_details(job: ProbeJob) -> DetailSeries:
    """The turn bands a conversation of the job's length exports."""
    n = turns_of(job)
    return DetailSeries(turn_bands=tuple(label for first, label in TURN_BANDS if first <= n))


_DOC = "one session of `turns` turns (default {n}); per-turn timings in probe_turns".format(n=DEFAULT_TURNS)
SPEC_REST = ProbeSpec("conversation", FAMILY, probe_rest_conversation, classify_openai_error,
                      conversation_tokens(False), f"REST Chat Completions with the growing history: {_DOC}",
                      details=turn_details, options={"turns": FAMILY})
