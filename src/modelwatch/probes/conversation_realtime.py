"""Realtime conversations (``kind: conversation``, ``api: realtime``): turns on one WebSocket session.

OpenAI/Azure Realtime or Gemini Live: the session is set up once (the realtime
probes' own opening stages), then each turn sends the prompt (text, or the
spoken prompt with ``modality: audio``) and reads its answer to the end with
the provider's sans-I/O session decoder, reset between turns. What a turn's
timings mean, and how failures name their turn, is in :mod:`modelwatch.probes.conversation`.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure, TurnTiming
from modelwatch.probes import gemini_live, openai_realtime
from modelwatch.probes.base import Measurement, round_s
from modelwatch.probes.conversation import DEFAULT_TURNS, add_counts, conversation_tokens, turn_details, turns_of
from modelwatch.probes.google_family import classify_google_error
from modelwatch.probes.openai_family import FAMILY, classify_openai_error
from modelwatch.probes.spec import ProbeSpec
from modelwatch.probes.websocket import Stage, read_until, run_session, send_messages


class TurnTotals:
    """A realtime session decoder whose tokens are the sums over the turns ended so far."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.decode = inner.decode
        self.feed = inner.feed
        self.passes = inner.passes
        self.close_failure = inner.close_failure
        self.request_id = inner.request_id
        self._totals: list[int | None] = [None, None, None, None]

    def end_turn(self) -> tuple[int | None, ...]:
        """Add the turn's tokens to the totals; return them."""
        turn = self.inner.tokens()
        self._totals = add_counts(self._totals, turn)
        return turn

    def tokens(self) -> tuple[int | None, int | None, int | None, int | None]:
        return tuple(self._totals)  # type: ignore[return-value]


def _turn_failure_on_go_away(session: Any, turn: int, turns: int) -> None:
    if getattr(session, "go_away", False) and turn < turns:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "go_away",
                           f"the server announced the session's end (goAway) after turn {turn} of {turns}")


async def realtime_turns(job: ProbeJob, ws: aiohttp.ClientWebSocketResponse, totals: TurnTotals, m: Measurement,
                         messages: list[dict], done_stage: str) -> None:
    """The turns of a realtime conversation, on a session already set up."""
    turns, at = turns_of(job), time.perf_counter()
    for k in range(1, turns + 1):
        m.stage = f"turn{k}"
        totals.inner.next_turn()
        if k == 1:
            m.enter("ttft")
        await send_messages(ws, totals, m, messages)
        sent = time.perf_counter()
        ttft = done = None
        try:
            reached, at = await read_until(ws, totals, m, "ttft")
            ttft = at - sent
            if k == 1:
                m.ttft_s = at - m.start
                m.enter("total")
            if not totals.passes(reached, done_stage):
                reached, at = await read_until(ws, totals, m, done_stage)
            done = at - sent
        finally:
            tokens = totals.end_turn()
            m.turns.append(TurnTiming(k, round_s(sent - m.start), round_s(ttft), round_s(done), tokens[0], tokens[1]))
        _turn_failure_on_go_away(totals.inner, k, turns)
    m.stage = None
    m.duration_s = at - m.start


async def probe_realtime_conversation(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """An OpenAI/Azure Realtime session of ``turns`` turns."""
    totals = TurnTotals(openai_realtime.RealtimeSession(job.probe.modality))
    opening = openai_realtime.STAGES[:2]  # session.created, session.updated
    await run_session(job, http, m, openai_realtime.realtime_endpoint(job), classify_openai_error, totals, opening,
                      then=lambda ws: realtime_turns(job, ws, totals, m, openai_realtime.user_turn(job), "response"))


async def probe_live_conversation(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """A Gemini Live session of ``turns`` turns."""
    totals = TurnTotals(gemini_live.LiveSession(job.probe.modality))
    opening = (Stage("session", send=gemini_live.setup, stamp="ttfb_s"),)
    await run_session(job, http, m, gemini_live.live_endpoint(job), classify_google_error, totals, opening,
                      then=lambda ws: realtime_turns(job, ws, totals, m, gemini_live.user_turn(job), "total"))


_DOC = "one session of `turns` turns (default {n}); per-turn timings in probe_turns".format(n=DEFAULT_TURNS)
SPEC_REALTIME = ProbeSpec("conversation", FAMILY, probe_realtime_conversation, classify_openai_error,
                          conversation_tokens(True), f"Realtime WebSocket: {_DOC}", api="realtime",
                          transport="websocket", details=turn_details, options={"turns": FAMILY})
SPEC_LIVE = ProbeSpec("conversation", ("gemini",), probe_live_conversation, classify_google_error,
                      conversation_tokens(True, 32), f"Gemini Live WebSocket: {_DOC}", api="realtime",
                      transport="websocket", details=turn_details, options={"turns": ("gemini",)})
