"""The responses of an OpenAI Realtime session (PROTOCOLS.md §2.9): plan, deltas, done events, cancel.

A response streams its text deltas, or its audio deltas (PCM16 24 kHz, a quiet
tone, real-time paced) interleaved with transcript deltas, from ``ttft_ms``
(plus the turn's ``turn_ttft_ms`` growth) after its ``response.create``; every
wait is an absolute deadline. The t-th ``response.create`` of a session is its
turn t. The response faults (``fail_response_with``, ``error_event``,
``close_code`` at the first delta, ``drop_after_deltas``, ``content_blocked``,
``audio_after_cancel``) are decided here, for turns from ``faults_from_turn``
on. ``response.cancel`` lets the response stream on for ``cancel_ms`` before
its ``response.done`` (status ``cancelled``). Each turn gets an entry in the
session's ``record.turns``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .common import SessionEnd, sleep_until
from .content import audio_chunk_b64, content_piece
from .openai_http import RATE_LIMIT_REQUESTS, RATE_LIMIT_TOKENS
from .openai_realtime_events import (OUTPUT_AUDIO_MS_PER_TOKEN, ClientError, SessionOver, error_object,
                                     usage_object)

__all__ = ["RealtimeResponse", "ResponseFlow"]


@dataclass
class RealtimeResponse:
    """One response being generated: its ids, plan and progress."""

    id: str
    item_id: str
    audio: bool
    count: int
    first_at: float
    status: str = "completed"
    reason: str | None = None
    faulty: bool = True  # the response faults apply (turn >= faults_from_turn)
    log: dict[str, Any] = field(default_factory=dict)  # this turn's entry in record.turns
    received_perf: float = 0.0  # perf_counter at its response.create, the origin of the turn's times
    pieces: list[str] = field(default_factory=list)
    audio_ms_sent: float = 0.0
    audio_chunks_sent: int = 0
    task: asyncio.Task | None = None
    cancel_task: asyncio.Task | None = None


class ResponseFlow:
    """The response half of ``RealtimeSession``: its response events, on the session's state.

    A mixin, not an object of its own: a response reads and changes the
    session's conversation, token counts and active response at every step.
    """

    # ------------------------------------------------------------ responses

    async def _response_create(self, event: dict[str, Any]) -> None:
        """Start a response (or the configured failure) unless one is active."""
        received, received_perf = asyncio.get_running_loop().time(), time.perf_counter()
        if self.active is not None:
            raise ClientError("conversation_already_has_active_response",
                              f"Conversation already has an active response in progress: {self.active.id}. "
                              "Wait until the response is finished before creating a new one.")
        self.turns_started += 1
        turn = self.turns_started
        if self.b.error_event is not None and self.b.faulty_turn(turn):
            self.turn_log(turn, "error_event")
            if self.default_close_due():
                await self.finish(SessionEnd(self.b.close_code, self.b.close_reason), "error_event", self.b.error_event)
            self.conn.record.outcome = "error_event"
            await self.send_error(self.b.error_event)
            return
        overrides = event.get("response") if isinstance(event.get("response"), dict) else {}
        response = self._plan(overrides, received, turn)
        response.received_perf = received_perf
        self.active = response
        self.conn.idle = False
        response.task = asyncio.create_task(self._guard(self._stream(response)))

    def turn_log(self, turn: int, outcome: str | None = None, injected_ttft_s: float | None = None) -> dict[str, Any]:
        """Add turn ``turn``'s entry to the session's ``record.turns`` and return it, to fill in later."""
        entry = {"turn": turn, "injected_ttft_s": injected_ttft_s, "actual_ttft_s": None, "outcome": outcome}
        self.conn.record.turns.append(entry)
        return entry

    def _plan(self, overrides: dict[str, Any], received: float, turn: int) -> RealtimeResponse:
        """Decide a response's modality, delta count, final status and first-delta deadline."""
        b = self.b
        roll = self.conn.draws.jitter_roll if self.responses == 0 else self.state.rng.random()
        delay_s = (max(0.0, b.ttft_ms + (2 * roll - 1) * b.jitter_ms) + b.turn_growth_ms(turn)) / 1000
        response = RealtimeResponse(self.new_id("resp"), self.new_id("item"), self._audio_out(overrides), b.tokens,
                                    received + delay_s, faulty=b.faulty_turn(turn))
        response.log = self.turn_log(turn, injected_ttft_s=delay_s)
        cap = self._token_cap(overrides)
        if self.content_blocked and response.faulty:
            response.count, response.status, response.reason = 0, "incomplete", "content_filter"
        elif cap is not None and cap < b.tokens:
            response.count, response.status, response.reason = cap, "incomplete", "max_output_tokens"
        elif b.finish_reason != "stop":
            response.status = "incomplete"
            response.reason = "max_output_tokens" if b.finish_reason == "length" else "content_filter"
        if self.responses == 0:
            self.conn.record.injected_ttft_s = response.first_at - self.conn.t0_loop
        self.responses += 1
        return response

    async def _stream(self, response: RealtimeResponse) -> None:
        """Send one response from ``response.created`` to ``rate_limits.updated``."""
        try:
            failure = self.b.fail_response_with if response.faulty else None
            await self.send({"type": "response.created",
                             "response": self._response_object(response, "in_progress", None, [], None)})
            if failure is None:
                await self._open_output(response)
            await sleep_until(response.first_at)
            if self.default_close_due() and response.faulty:
                response.log["outcome"] = "close"
                self.end(SessionEnd(self.b.close_code, self.b.close_reason), "close")
                return
            if failure is not None:
                await self._fail(response, failure)
                return
            await self._deltas(response)
            await self._close_output(response)
        finally:
            # A response being cancelled stays active until its cancelled response.done is out.
            if self.active is response and response.cancel_task is None:
                self.active = None
                self.conn.idle = True

    async def _open_output(self, response: RealtimeResponse) -> None:
        """The assistant item and its content part, before the first delta."""
        item = self._item(response, "in_progress", [])
        ids = {"response_id": response.id, "output_index": 0}
        await self.send({"type": "response.output_item.added", **ids, "item": item})
        previous = self.items[-1] if self.items else None
        self.items.append(response.item_id)
        if response.audio:
            self.item_audio_ms[response.item_id] = 0.0
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send({"type": added, "previous_item_id": previous, "item": item})
        await self.send({"type": "response.content_part.added", **ids, "item_id": response.item_id,
                         "content_index": 0, "part": self._part(response, "")})

    def _schedule(self, response: RealtimeResponse) -> list[tuple[float, int, int]]:
        """(deadline, kind, index) of every delta: 0 text/transcript, 1 audio; time order, text first."""
        gap = self.b.inter_token_ms / 1000
        schedule = [(response.first_at + i * gap, 0, i) for i in range(response.count)]
        if response.audio and not self.content_blocked:
            chunks = math.ceil(self.b.audio_ms / self.b.audio_chunk_ms)
            schedule += [(response.first_at + k * self.b.audio_chunk_ms / 1000, 1, k) for k in range(chunks)]
        return sorted(schedule)

    async def _deltas(self, response: RealtimeResponse) -> None:
        """Send the deltas at their deadlines; ``drop_after_deltas`` may cut the connection."""
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        drop = self.b.drop_after_deltas if response.faulty else None
        for at, kind, index in self._schedule(response):
            await sleep_until(at)
            if drop is not None and self.faulty_deltas_sent >= drop:
                response.log["outcome"] = "disconnect"
                self.end(SessionEnd(drop=True), "disconnect")
                raise SessionOver
            if kind == 0:
                piece = content_piece(index)
                response.pieces.append(piece)
                name = self.name("transcript.delta" if response.audio else "text.delta")
                await self.send({"type": name, **ids, "delta": piece})
            else:
                await self._send_audio(response, index)
            self.faulty_deltas_sent += response.faulty
            self.output_sent(response, kind == 1)

    def output_sent(self, response: RealtimeResponse, audio: bool) -> None:
        """Stamp the first output of the turn and of the session (a WebRTC call stamps audio at RTP instead)."""
        if response.log["actual_ttft_s"] is None:
            response.log["actual_ttft_s"] = time.perf_counter() - response.received_perf
        if self.conn.record.actual_ttft_s is None:
            self.conn.record.actual_ttft_s = self.conn.elapsed_s()

    async def _send_audio(self, response: RealtimeResponse, index: int) -> None:
        """Audio delta ``index`` of a response (past its planned audio: another chunk of the tone)."""
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        b = self.b
        planned = math.ceil(b.audio_ms / b.audio_chunk_ms)
        total_ms = b.audio_ms if index < planned else (index + 1) * b.audio_chunk_ms
        await self.send({"type": self.name("audio.delta"), **ids,
                         "delta": audio_chunk_b64(index, b.audio_chunk_ms, total_ms)})
        response.audio_ms_sent = min(total_ms, (index + 1) * b.audio_chunk_ms)
        response.audio_chunks_sent = index + 1
        self.item_audio_ms[response.item_id] = response.audio_ms_sent

    async def _close_output(self, response: RealtimeResponse) -> None:
        """The done events, ``response.done`` and ``rate_limits.updated``."""
        text = "".join(response.pieces)
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        if response.audio:
            await self.send({"type": self.name("audio.done"), **ids})
            await self.send({"type": self.name("transcript.done"), **ids, "transcript": text})
        else:
            await self.send({"type": self.name("text.done"), **ids, "text": text})
        part = self._part(response, text)
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        item = self._item(response, "completed" if response.status == "completed" else "incomplete", [part])
        await self.send({"type": "response.output_item.done", "response_id": response.id, "output_index": 0,
                         "item": item})
        if not self.beta:
            await self.send({"type": "conversation.item.done", "previous_item_id": self._previous(response),
                             "item": item})
        details = None if response.reason is None else {"type": response.status, "reason": response.reason}
        usage = self._usage(response)
        await self._send_done(response, self._response_object(response, response.status, details, [item], usage))
        response.log["outcome"] = "content_blocked" if response.reason == "content_filter" else "ok"
        self._remember_output(response, usage)
        await self.send({"type": "rate_limits.updated", "rate_limits": self._rate_limits(usage["total_tokens"])})

    def _remember_output(self, response: RealtimeResponse, usage: dict[str, Any]) -> None:
        """Add what a response said to the conversation, so the next response's input grows by it."""
        self.context_text_tokens += len(response.pieces)
        self.context_audio_tokens += usage["output_token_details"]["audio_tokens"]

    async def _fail(self, response: RealtimeResponse, code: str) -> None:
        """``response.done`` with ``status: failed`` and the configured error, no output, zero usage."""
        self.conn.record.outcome = response.log["outcome"] = "response_failed"
        error = error_object(code, **self._message_fields())
        details = {"type": "failed", "error": {"type": error["type"], "code": code, "message": error["message"]}}
        nothing = usage_object(0, 0, 0, 0)
        await self._send_done(response, self._response_object(response, "failed", details, [], nothing))

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        """Cancel the active response: it streams on for ``cancel_ms``, then ends ``cancelled``.

        The wait runs in its own task, so the client's next events (a
        ``conversation.item.truncate``) are answered meanwhile; a second cancel
        during it changes nothing.
        """
        response = self.active
        if response is None or response.task is None:
            raise ClientError("response_cancel_not_active", "Cancellation failed: no active response found.")
        if response.cancel_task is None:
            received, received_perf = asyncio.get_running_loop().time(), time.perf_counter()
            response.cancel_task = asyncio.create_task(self._guard(self._cancel(response, received, received_perf)))

    async def _cancel(self, response: RealtimeResponse, received: float, received_perf: float) -> None:
        """After ``cancel_ms``: stop the response, send its ``response.done`` cancelled, then any late audio."""
        await sleep_until(received + self.b.cancel_ms / 1000)
        if response.task is not None and not response.task.done():
            response.task.cancel()
            await asyncio.gather(response.task, return_exceptions=True)
        if self.active is not response:
            return  # it finished on its own within cancel_ms: there is nothing left to cancel
        details = {"type": "cancelled", "reason": "client_cancelled"}
        usage = self._usage(response)
        await self._send_done(response, self._response_object(response, "cancelled", details, [], usage))
        response.log["outcome"] = "cancelled"
        response.log["cancel_latency_s"] = time.perf_counter() - received_perf
        self._remember_output(response, usage)
        if response.audio and response.faulty and self.b.audio_after_cancel:
            first = response.audio_chunks_sent
            for index in range(first, first + self.b.audio_after_cancel):
                await self._send_audio(response, index)
            response.log["audio_after_cancel"] = self.b.audio_after_cancel

    async def _send_done(self, response: RealtimeResponse, response_object: dict[str, Any]) -> None:
        """Send ``response.done``, free the conversation for the next response, stamp the log."""
        await self.send({"type": "response.done", "response": response_object})
        if response.cancel_task is not None and asyncio.current_task() is not response.cancel_task:
            response.cancel_task.cancel()  # it ended on its own before its cancel took effect
        if self.active is response:
            self.active = None
            self.conn.idle = True
        if self.conn.record.actual_duration_s is None:
            self.conn.record.actual_duration_s = self.conn.elapsed_s()

    # ------------------------------------------------------------ shapes

    def _previous(self, response: RealtimeResponse) -> str | None:
        """The item before a response's output item in the conversation."""
        index = self.items.index(response.item_id) if response.item_id in self.items else 0
        return self.items[index - 1] if index > 0 else None

    def _part(self, response: RealtimeResponse, text: str) -> dict[str, Any]:
        """A content part: GA ``output_text``/``output_audio``, beta ``text``/``audio``."""
        prefix = "" if self.beta else "output_"
        if response.audio:
            return {"type": prefix + "audio", "transcript": text}
        return {"type": prefix + "text", "text": text}

    def _item(self, response: RealtimeResponse, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        """The assistant message item of a response."""
        return {"id": response.item_id, "object": "realtime.item", "type": "message", "status": status,
                "role": "assistant", "content": content}

    def _response_object(self, response: RealtimeResponse, status: str, details: dict[str, Any] | None,
                         output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        """The ``response`` of response.created/done in this session's shape (§2.9)."""
        body: dict[str, Any] = {"object": "realtime.response", "id": response.id, "status": status,
                                "status_details": details, "output": output,
                                "conversation_id": self.conversation_id, "usage": usage, "metadata": None}
        if self.beta:
            return {**body, "modalities": ["text", "audio"] if response.audio else ["text"],
                    "voice": self.config.get("voice"), "output_audio_format": self.config.get("output_audio_format"),
                    "temperature": self.config.get("temperature"),
                    "max_output_tokens": self.config.get("max_response_output_tokens")}
        audio_out = (self.config.get("audio") or {}).get("output") or {}
        return {**body, "output_modalities": ["audio"] if response.audio else ["text"],
                "max_output_tokens": self.config.get("max_output_tokens"),
                "audio": {"output": {"format": audio_out.get("format"), "voice": audio_out.get("voice")}}}

    def _usage(self, response: RealtimeResponse) -> dict[str, Any]:
        """A response's usage: the conversation so far in, its deltas and audio out."""
        output_audio = math.ceil(response.audio_ms_sent / OUTPUT_AUDIO_MS_PER_TOKEN)
        return usage_object(self.context_text_tokens, self.context_audio_tokens, len(response.pieces), output_audio)

    def _rate_limits(self, tokens_used: int) -> list[dict[str, Any]]:
        """The ``rate_limits.updated`` entries after a response."""
        reset_s = round(60 - self.state.uptime_s() % 60, 3)
        return [
            {"name": "requests", "limit": RATE_LIMIT_REQUESTS, "remaining": RATE_LIMIT_REQUESTS - 1,
             "reset_seconds": reset_s},
            {"name": "tokens", "limit": RATE_LIMIT_TOKENS, "remaining": max(0, RATE_LIMIT_TOKENS - tokens_used),
             "reset_seconds": reset_s},
        ]

