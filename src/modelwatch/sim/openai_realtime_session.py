"""One OpenAI Realtime session after the upgrade (PROTOCOLS.md §2): lifecycle, reading, configuration.

The session speaks GA or beta shapes (the ``OpenAI-Beta: realtime=v1`` header
decides, modulated by ``realtime_mode``): ``session.created`` at ``ttfb_ms``;
``session.update``, ``conversation.item.create``, ``conversation.item.truncate``,
``input_audio_buffer.append/commit/clear``, ``response.create`` and
``response.cancel`` are answered; anything else gets an ``error`` event and the
session goes on. Responses are ``openai_realtime_response``'s part of the
session; the session-wide faults (``close_after_events``,
``ignore_client_after``, ``session_max_s``) are here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from modelwatch.logs import fields

from .common import SessionEnd, base62, close_session, sleep_until, to_json
from .content import text_tokens
from .openai_http import mask_api_key
from .openai_realtime_events import (BETA_RETIRED_REASON, BETA_SESSION_KEYS, BYTES_PER_MS, CLIENT_EVENTS,
                                     EVENT_NAMES, GA_SESSION_KEYS, INPUT_AUDIO_MS_PER_TOKEN, INSTRUCTIONS,
                                     MIN_COMMIT_BYTES, PCM, TURN_DETECTION, ClientError, SessionOver,
                                     error_object, merge_session, session_expired_minutes)
from .openai_realtime_response import RealtimeResponse, ResponseFlow
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import SimState
    from .openai_realtime import RealtimeConnection

__all__ = ["RealtimeSession"]

log = logging.getLogger("modelwatch.sim")


class RealtimeSession(ResponseFlow):
    """One upgraded connection: its config, conversation, active response and faults."""

    def __init__(self, state: SimState, conn: RealtimeConnection, ws: web.WebSocketResponse,
                 behaviour: ModelBehaviour, beta_requested: bool) -> None:
        self.state, self.conn, self.ws, self.b = state, conn, ws, behaviour
        mode = behaviour.realtime_mode
        self.retired = mode == "beta_retired" and beta_requested
        self.beta = mode == "beta" or (mode == "ga" and beta_requested)
        self.content_blocked = conn.record.outcome == "content_blocked"
        # OpenAI's limits: 60 minutes for GA sessions, 30 for beta ones (§2.13).
        self.max_session_s = behaviour.session_max_s or (1800 if self.beta else 3600)
        self.rng = random.Random(conn.draws.id_bits)  # ids: reproducible, and apart from the shared RNG
        self.config = self._initial_config()
        self.conversation_id = self.new_id("conv")
        self.items: list[str] = []
        self.context_text_tokens = text_tokens(INSTRUCTIONS)
        self.context_audio_tokens = 0
        self.buffer_bytes = 0
        self.events_sent = self.frames_received = self.faulty_deltas_sent = self.responses = 0
        self.turns_started = 0  # response.create events accepted: the session's turns
        self.item_audio_ms: dict[str, float] = {}  # audio sent per assistant item, for truncate
        conn.record.turns = []
        self.active: RealtimeResponse | None = None
        self.ending = False
        self.ended: asyncio.Future[SessionEnd] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Open the session, read client frames until something ends it, then close."""
        tasks: list[asyncio.Task] = []
        try:
            await self._guard(self._open())
            if not self.ended.done():
                tasks.append(asyncio.create_task(self._guard(self._read_loop())))
                if self.b.session_max_s is not None:
                    tasks.append(asyncio.create_task(self._guard(self._expire())))
                await asyncio.wait([tasks[0], self.ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self.active is not None:
                tasks += [task for task in (self.active.task, self.active.cancel_task) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close_turn_log()
        await self.close_transport(self.ended.result() if self.ended.done() else SessionEnd())

    async def close_transport(self, how: SessionEnd) -> None:
        """End the connection as decided: close frame, TCP reset or nothing (a WebRTC call overrides it)."""
        await close_session(self.ws, self.conn, how)

    def _close_turn_log(self) -> None:
        """Turns the session ended during get its ending as their outcome (``unfinished`` if it had none)."""
        ending = self.conn.record.outcome
        for entry in self.conn.record.turns:
            if entry["outcome"] is None:
                entry["outcome"] = ending if ending not in (None, "ok", "content_blocked") else "unfinished"

    async def _open(self) -> None:
        """``session.created`` (and beta's ``conversation.created``) at ttfb, or the retirement error."""
        if self.b.close_after_events == 0:
            self.end(SessionEnd(self.b.close_code, self.b.close_reason), "close")
            return
        await sleep_until(self.conn.t0_loop + self.b.ttfb_ms / 1000)
        if self.retired:
            await self.finish(SessionEnd(4000, BETA_RETIRED_REASON), "beta_retired", "beta_api_shape_disabled")
            return
        await self.send({"type": "session.created", "session": self.config})
        if self.beta:
            conversation = {"id": self.conversation_id, "object": "realtime.conversation"}
            await self.send({"type": "conversation.created", "conversation": conversation})
        self.conn.idle = True

    async def _expire(self) -> None:
        """End the session with ``session_expired`` once ``session_max_s`` has passed."""
        await sleep_until(self.conn.t0_loop + self.b.session_max_s)
        await self.finish(SessionEnd(1000), "session_expired", "session_expired")

    async def _guard(self, work: Any) -> None:
        """Run one session task; ending, client disconnects and simulator bugs end it cleanly."""
        try:
            await work
        except SessionOver:
            pass
        except ConnectionError:
            self.conn.record.client_disconnected = True
            self.end(SessionEnd(), None)
        except Exception:
            # A simulator bug must cost one session, not the server.
            log.exception("simulator realtime session failed", extra=fields(path=self.conn.request.path))
            self.end(SessionEnd(1011, "simulator error"), None)

    def end(self, how: SessionEnd, outcome: str | None) -> None:
        """Mark the session as ending; the first caller decides how it ends."""
        self.ending = True
        if outcome is not None and not self.ended.done():
            self.conn.record.outcome = outcome
        if not self.ended.done():
            self.ended.set_result(how)

    async def finish(self, how: SessionEnd, outcome: str, code: str | None = None) -> None:
        """Send a last ``error`` event (if ``code``), then end the session; raises SessionOver."""
        if self.ending:
            raise SessionOver
        self.ending = True
        if code is not None:
            await self.send({"type": "error", "error": error_object(code, **self._message_fields())}, last=True)
        self.end(how, outcome)
        raise SessionOver

    # ------------------------------------------------------------ sending

    def new_id(self, prefix: str) -> str:
        """An OpenAI-looking id such as ``event_C9G5RJeJ2gF77mV7f2B1j``."""
        return f"{prefix}_{base62(self.rng.getrandbits(124))}"

    async def send(self, event: dict[str, Any], *, last: bool = False) -> None:
        """Send one server event; stop the caller once the session is ending or closes here."""
        if self.ending and not last:
            raise SessionOver
        payload = {"type": event["type"], "event_id": self.new_id("event"), **event}
        await self.ws.send_str(to_json(payload))
        self.events_sent += 1
        limit = self.b.close_after_events
        if limit is not None and self.events_sent >= limit and not last:
            self.end(SessionEnd(self.b.close_code, self.b.close_reason), "close")
            raise SessionOver

    async def send_error(self, code: str, message: str | None = None, *, param: str | None = None,
                         event_id: str | None = None) -> None:
        """Send an ``error`` event; the session goes on."""
        error = error_object(code, message, param=param, event_id=event_id, **self._message_fields())
        await self.send({"type": "error", "error": error})

    def _message_fields(self) -> dict[str, str]:
        """What the ``REALTIME_ERRORS`` messages may mention."""
        return {"model": self.conn.model, "key": mask_api_key(self.conn.api_key),
                "minutes": session_expired_minutes(self.max_session_s)}

    def name(self, kind: str) -> str:
        """The event name for ``kind`` in this session's shape (beta, or GA with legacy names)."""
        ga, beta = EVENT_NAMES[kind]
        return beta if self.beta or self.b.legacy_event_names else ga

    def default_close_due(self) -> bool:
        """Whether ``close_code`` closes at the first delta (no other trigger configured)."""
        b = self.b
        return b.close_code is not None and b.close_after_events is None and b.ignore_client_after is None

    # ------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        """Answer client frames in order until the client closes or ``ignore_client_after``."""
        limit = self.b.ignore_client_after
        while limit is None or self.frames_received < limit:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if self.active is not None:
                    self.conn.record.client_disconnected = True
                return
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue  # pings and pongs are aiohttp's business
            self.frames_received += 1
            await self._on_frame(msg.data if msg.type is WSMsgType.TEXT else None)
        await self.finish(SessionEnd(self.b.close_code or 1011, self.b.close_reason), "ignore_client",
                          self.b.error_event)

    async def _on_frame(self, data: str | None) -> None:
        """Decode one client frame and dispatch it; refusals become ``error`` events."""
        try:
            event = json.loads(data) if data is not None else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            await self.send_error("invalid_event", "The event is not a valid JSON object.")
            return
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            await self._dispatch(event)
        except ClientError as exc:
            await self.send_error(exc.code, exc.message, param=exc.param, event_id=client_event_id)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        """Route a client event to its handler."""
        kind = event.get("type")
        if not isinstance(kind, str) or not kind:
            raise ClientError("invalid_event", "The 'type' field is missing.", "type")
        handler = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._item_truncate,
            "input_audio_buffer.append": self._buffer_append,
            "input_audio_buffer.commit": self._buffer_commit,
            "input_audio_buffer.clear": self._buffer_clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }.get(kind)
        if handler is None:
            if kind in CLIENT_EVENTS:
                raise ClientError("invalid_event", f"The simulator does not implement '{kind}'.", "type")
            supported = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
            raise ClientError("invalid_event", f"Invalid value: '{kind}'. Supported values are: {supported}.",
                              "type")
        await handler(event)

    # ------------------------------------------------------------ session config

    def _initial_config(self) -> dict[str, Any]:
        """The session object of ``session.created`` in this session's shape (§2.4)."""
        expires_at = int(time.time() + self.max_session_s)
        common = {"id": self.new_id("sess"), "object": "realtime.session", "model": self.conn.model,
                  "expires_at": expires_at, "instructions": INSTRUCTIONS, "tools": [], "tool_choice": "auto",
                  "tracing": None}
        if self.beta:
            return {**common, "modalities": ["text", "audio"], "voice": "alloy", "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16", "input_audio_transcription": None,
                    "input_audio_noise_reduction": None, "turn_detection": dict(TURN_DETECTION),
                    "temperature": 0.8, "max_response_output_tokens": "inf", "speed": 1.0}
        audio = {"input": {"format": dict(PCM), "transcription": None, "noise_reduction": None,
                           "turn_detection": {**TURN_DETECTION, "idle_timeout_ms": None}},
                 "output": {"format": dict(PCM), "voice": "marin", "speed": 1.0}}
        return {"type": "realtime", **common, "output_modalities": ["audio"], "audio": audio,
                "max_output_tokens": "inf", "truncation": "auto", "prompt": None, "include": None}

    async def _session_update(self, event: dict[str, Any]) -> None:
        """Validate a ``session.update`` for this shape, merge it and answer ``session.updated``."""
        session = event.get("session")
        if not isinstance(session, dict):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        allowed = BETA_SESSION_KEYS if self.beta else GA_SESSION_KEYS
        if not self.beta and "type" not in session:
            raise ClientError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                              "session.type")
        for key in session:
            if key not in allowed:
                raise ClientError("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")
        if not self.beta and session["type"] != "realtime":
            raise ClientError("invalid_value", f"Invalid value: '{session['type']}'. This session's type is "
                              "'realtime' and cannot be changed.", "session.type")
        self._check_modalities(session)
        update = {key: value for key, value in session.items() if key != "model"}  # model cannot change
        self.config = merge_session(self.config, update)
        await self.send({"type": "session.updated", "session": self.config})

    def _check_modalities(self, session: dict[str, Any]) -> None:
        """GA takes ["text"] or ["audio"] (not both); beta any non-empty mix of the two."""
        key = "modalities" if self.beta else "output_modalities"
        value = session.get(key)
        if value is None:
            return
        valid = [["text"], ["audio"]] if not self.beta else [["text"], ["audio"], ["text", "audio"],
                                                              ["audio", "text"]]
        if value not in valid:
            raise ClientError("invalid_value", f"Invalid value for 'session.{key}': {to_json(value)}.",
                              f"session.{key}")

    def _audio_out(self, overrides: dict[str, Any]) -> bool:
        """Whether a response speaks: its own modality override, else the session's."""
        key = "modalities" if self.beta else "output_modalities"
        modalities = overrides.get(key, self.config.get(key))
        return isinstance(modalities, list) and "audio" in modalities

    def _token_cap(self, overrides: dict[str, Any]) -> int | None:
        """The response's max output tokens (override, else session); None for "inf"."""
        key = "max_response_output_tokens" if self.beta else "max_output_tokens"
        cap = overrides.get(key, self.config.get(key))
        return cap if isinstance(cap, int) and not isinstance(cap, bool) else None

    # ------------------------------------------------------------ conversation and audio input

    async def _item_create(self, event: dict[str, Any]) -> None:
        """Add a client item to the conversation and announce it."""
        item = event.get("item")
        if not isinstance(item, dict):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        if not isinstance(item.get("type"), str):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'item.type'.",
                              "item.type")
        item = {"id": item.get("id") or self.new_id("item"), "object": "realtime.item", "status": "completed",
                **{k: v for k, v in item.items() if k != "id"}}
        self.context_text_tokens += 4 + sum(text_tokens(str(part.get("text") or part.get("transcript") or ""))
                                            for part in item.get("content") or [] if isinstance(part, dict))
        await self._add_item(item)

    async def _add_item(self, item: dict[str, Any]) -> None:
        """``conversation.item.added`` + ``.done`` (GA) or ``conversation.item.created`` (beta)."""
        previous = self.items[-1] if self.items else None
        self.items.append(item["id"])
        if self.beta:
            await self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": item})
            return
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        """Cut an assistant audio item at ``audio_end_ms`` (what the user heard) and confirm it."""
        item_id = event.get("item_id")
        for name in ("item_id", "content_index", "audio_end_ms"):
            if event.get(name) is None:
                raise ClientError("missing_required_parameter", f"Missing required parameter: '{name}'.", name)
        content_index, audio_end_ms = event["content_index"], event["audio_end_ms"]
        for name, value in (("content_index", content_index), ("audio_end_ms", audio_end_ms)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ClientError("invalid_value", f"Invalid value for '{name}': expected a non-negative integer.",
                                  name)
        if not isinstance(item_id, str) or item_id not in self.items:
            raise ClientError("invalid_value", f"Item with item_id not found: {item_id}", "item_id")
        if item_id not in self.item_audio_ms:
            raise ClientError("invalid_value", "Only model output audio messages can be truncated", "item_id")
        if content_index != 0:
            raise ClientError("invalid_value", f"Invalid value for 'content_index': item {item_id} has no "
                              f"content part {content_index}.", "content_index")
        sent_ms = math.floor(self.item_audio_ms[item_id])
        if audio_end_ms > sent_ms:
            raise ClientError("invalid_value", f"Audio content of {sent_ms}ms is already shorter than "
                              f"{audio_end_ms}ms", "audio_end_ms")
        self.item_audio_ms[item_id] = audio_end_ms
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": content_index, "audio_end_ms": audio_end_ms})

    async def _buffer_append(self, event: dict[str, Any]) -> None:
        """Count appended audio bytes; no reply."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            self.buffer_bytes += len(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError):
            raise ClientError("invalid_value", "Invalid 'audio': expected base64-encoded audio.",
                              "audio") from None

    async def _buffer_commit(self, event: dict[str, Any]) -> None:
        """Turn the buffer into a user item, or refuse less than 100 ms of audio."""
        if self.buffer_bytes < MIN_COMMIT_BYTES:
            ms = self.buffer_bytes / BYTES_PER_MS
            raise ClientError("input_audio_buffer_commit_empty",
                              "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                              f"of audio, but buffer only has {ms:.2f}ms of audio.")
        item_id = self.new_id("item")
        previous = self.items[-1] if self.items else None
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        self.context_audio_tokens += math.ceil(self.buffer_bytes / BYTES_PER_MS / INPUT_AUDIO_MS_PER_TOKEN)
        self.buffer_bytes = 0
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(item)

    async def _buffer_clear(self, event: dict[str, Any]) -> None:
        """Drop the buffered audio."""
        self.buffer_bytes = 0
        await self.send({"type": "input_audio_buffer.cleared"})
