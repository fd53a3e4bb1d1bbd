"""The staged-session driver both realtime probes share: open, converse stage by stage, close.

:func:`run_session` is the whole life of a realtime probe: upgrade (a refused
upgrade is classified with the provider's own error classifier), then for
each :class:`Stage` enter its budget, send what it sends and read frames
until the provider's :class:`StagedSession` decoder says the stage is
reached, stamping the frame's arrival time. A provider module supplies only
the URL and headers, its stages' messages and its sans-I/O session decoder.

Both realtime probes (OpenAI Realtime, Gemini Live) decide their outcome
before the socket is closed. A clean close then gets its own short grace
(:func:`close_within_grace`); after a failure the close runs in the
background (:func:`close_in_background`) so the recorded duration is when
the failure was seen, not when a slow server acknowledged the close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement, say_goodbye
from modelwatch.probes.parsing import parse_body, status_failure

CLOSE_GRACE_S = 1.0  # also the ws_close timeout the probes pass to ws_connect

def close_in_background(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Start closing ``ws`` without waiting for it (the probe has already failed)."""
    if not ws.closed:
        say_goodbye(_close_quietly(ws))


async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        await ws.close()
    except (ConnectionError, aiohttp.ClientError, asyncio.CancelledError):
        pass


async def close_within_grace(ws: aiohttp.ClientWebSocketResponse, m: Measurement) -> None:
    """Close cleanly if the server answers within a grace period; never fail the probe over it.

    The outcome is already decided, so the close gets its own short budget
    instead of what is left of the probe's (``ws_close`` bounds aiohttp's wait).
    """
    m.finishing(CLOSE_GRACE_S + 0.5)
    try:
        await ws.close()
    except (ConnectionError, aiohttp.ClientError):
        pass


async def open_websocket(http: aiohttp.ClientSession, url: str, headers: dict[str, str], m: Measurement,
                         classify: Callable[[int | None, Any], tuple[Outcome, str, str]]
                         ) -> aiohttp.ClientWebSocketResponse:
    """Upgrade to a WebSocket for the probe; a refused upgrade is classified from its status and body."""
    m.websocket = True  # lets the trace keep a refused upgrade's body (base.probe_trace)
    try:
        ws = await http.ws_connect(url, headers=headers, autoping=True, compress=0, max_msg_size=m.byte_limit,
                                   timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_GRACE_S))
    except aiohttp.WSServerHandshakeError as exc:
        m.http_status = exc.status
        if exc.status == 101:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "bad_handshake", exc.message) from None
        classified = classify(exc.status, parse_body(m.handshake_body or b""))
        raise status_failure(classified, exc.status, exc.request_info) from None
    m.http_status = 101
    return ws


class StagedSession(Protocol):
    """A provider's realtime session decoder (sans-I/O), fed one decoded server message at a time."""

    def decode(self, data: str | bytes) -> Any:
        """A frame's JSON; malformed JSON raises a ``malformed_event`` failure."""

    def feed(self, message: Any) -> str | None:
        """Consume one message; return the stage it reaches, if any (raises ProbeFailure)."""

    def passes(self, reached: str, stage: str) -> bool:
        """Whether reaching ``reached`` completes ``stage``."""

    def close_failure(self, code: int | None, reason: str) -> ProbeFailure:
        """The failure an unexpected close (or a broken connection, 1006) means."""

    def tokens(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(input, output, input audio, output audio) tokens reported so far."""

    def request_id(self, from_headers: str | None) -> str | None:
        """The request id to record, given the one the upgrade's headers carried."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stage:
    """One step of a session: its name is also its budget's phase and a timeout's ``error_code``."""

    name: str
    send: Callable[[ProbeJob], list[dict]] | None = None  # sent on entering the stage
    stamp: str | None = None  # the Measurement field its arrival time goes to (ttfb_s, ttft_s, duration_s)


# What a session does after its stages, on the open socket (a conversation's turns, a barge-in).
Then = Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]]


async def run_session(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement,
                      endpoint: tuple[str, dict[str, str]], classify: Callable[[int | None, Any], Any],
                      session: StagedSession, stages: tuple[Stage, ...], then: Then | None = None) -> None:
    """One staged realtime session, timed stage by stage, closed without stretching its timings."""
    url, headers = endpoint
    ws = await open_websocket(http, url, headers, m, classify)
    try:
        await _converse(job, ws, session, m, stages)
        if then is not None:
            await then(ws)
    except BaseException:
        close_in_background(ws)  # the outcome is decided: don't let the goodbye stretch the duration
        raise
    finally:
        m.input_tokens, m.output_tokens, m.input_audio_tokens, m.output_audio_tokens = session.tokens()
        m.request_id = session.request_id(m.request_id)
    await close_within_grace(ws, m)


async def _converse(job: ProbeJob, ws: aiohttp.ClientWebSocketResponse, session: StagedSession,
                    m: Measurement, stages: tuple[Stage, ...]) -> None:
    reached, at = None, 0.0
    for stage in stages:
        m.enter(stage.name)
        if stage.send is not None:
            await send_messages(ws, session, m, stage.send(job))
            reached, at = await read_until(ws, session, m, stage.name)
        elif reached is None or not session.passes(reached, stage.name):
            # A frame may complete several stages (Gemini's one-message answer brings turnComplete
            # with its first text): a stage that sends nothing may then be complete already.
            reached, at = await read_until(ws, session, m, stage.name)
        if stage.stamp is not None:
            setattr(m, stage.stamp, at - m.start)


async def read_until(ws: aiohttp.ClientWebSocketResponse, session: StagedSession, m: Measurement,
                     stage: str, until: float | None = None) -> tuple[str | None, float]:
    """Read frames until ``stage`` is reached; return the stage reached and when its frame arrived.

    With ``until`` (a ``perf_counter()`` time), stop reading then if the stage
    has not come: (None, now).
    """
    while True:
        if until is None:
            msg = await ws.receive()
        else:
            remaining = until - time.perf_counter()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                return None, time.perf_counter()
        now = time.perf_counter()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            m.bytes_read += len(msg.data)
            if m.bytes_read > m.byte_limit:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "response_too_large",
                                   f"session exceeded {m.byte_limit} bytes")
            reached = session.feed(session.decode(msg.data))
            if reached is not None and session.passes(reached, stage):
                return reached, now
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            # A CLOSE frame carries its code; after CLOSING/CLOSED the socket remembers it.
            code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
            raise session.close_failure(code, str(msg.extra or ""))
        elif msg.type == aiohttp.WSMsgType.ERROR:
            exc = msg.data
            if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "frame_too_large", str(exc))
            raise session.close_failure(1006, f"{type(exc).__name__}: {exc}")


async def send_messages(ws: aiohttp.ClientWebSocketResponse, session: StagedSession, m: Measurement,
                        messages: list[dict]) -> None:
    """Send messages; if the server closed meanwhile, report what it said before closing."""
    try:
        for message in messages:
            await ws.send_str(json.dumps(message))
    except (ConnectionError, RuntimeError):
        # Frames and the close the server sent before going are still queued: read them for the reason.
        await read_until(ws, session, m, "never")
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "abnormal_close", "closed while sending") from None
