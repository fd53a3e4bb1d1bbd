"""Small helpers every simulator protocol module uses: waits, resets, JSON, ids."""

from __future__ import annotations

import asyncio
import json
import time
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultyStream", "LoggedExchange", "SessionEnd", "base62", "close_session", "reset_connection",
           "sleep_until", "to_json"]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


async def sleep_until(deadline: float) -> None:
    """Sleep until a loop-clock deadline; absolute deadlines keep delays from adding up."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def reset_connection(transport: asyncio.BaseTransport | None) -> None:
    """Abort a connection with a TCP RST, as a crashed upstream or proxy would."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


@dataclass(frozen=True)
class SessionEnd:
    """How a WebSocket session ends: a close frame (code, reason), a TCP reset, or nothing (client gone)."""

    code: int | None = None
    reason: str = ""
    drop: bool = False


async def close_session(ws: Any, exchange: Any, how: SessionEnd) -> None:
    """Close a session's socket as decided: close frame, TCP reset, or nothing left to do."""
    if how.drop:
        reset_connection(exchange.request.transport)
        return
    if ws.closed:
        return
    try:
        await ws.close(code=how.code or 1000, message=how.reason.encode())
    except ConnectionError:
        exchange.record.client_disconnected = True


def to_json(payload: Any) -> str:
    """Compact JSON, as OpenAI writes it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def base62(number: int) -> str:
    """Encode a non-negative int in [0-9A-Za-z], as OpenAI's ids look."""
    digits = ""
    while True:
        number, digit = divmod(number, 62)
        digits = _BASE62[digit] + digits
        if not number:
            return digits


class LoggedExchange:
    """A request (or session) with a request-log ``record`` and its ``t0_perf`` start."""

    record: Any
    t0_perf: float

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0_perf

    def finish(self, status: int | None = None) -> None:
        """Stamp the log entry: the status, and the duration unless something stamped it first."""
        if status is not None:
            self.record.status = status
        if self.record.actual_duration_s is None:
            self.record.actual_duration_s = self.elapsed_s()


class FaultyStream:
    """The content loop every streaming endpoint shares, with the scenario's mid-stream faults.

    A protocol's stream class sets ``behaviour``, ``exchange`` (a
    :class:`LoggedExchange` with ``request``, ``response`` and ``record``) and
    ``first_at`` (loop time of the first delta), and writes its own events in
    :meth:`send_delta`, :meth:`send_malformed`, :meth:`send_midstream_error`
    and :meth:`send_keepalive` (and may override :meth:`send_interrupted`).
    Deltas go out every ``inter_token_ms`` from ``first_at`` on absolute
    deadlines; after ``n`` deltas come the faults due at ``n``: ``stall_after``
    (silence for ``stall_ms``, or until the client gives up), ``malformed_after``
    (then carry on), ``midstream_error_after``, ``interrupt_after`` and
    ``disconnect_after`` (a TCP reset or FIN), the last three ending the stream.
    """

    behaviour: Any
    exchange: Any
    first_at: float

    async def send_delta(self, index: int, count: int) -> None:
        """Write content delta ``index`` of ``count``."""
        raise NotImplementedError

    async def send_malformed(self) -> None:
        """Write one event whose JSON does not parse."""
        raise NotImplementedError

    async def send_midstream_error(self, index: int) -> None:
        """Write the protocol's in-stream error after ``index`` deltas; nothing follows it."""
        raise NotImplementedError

    async def send_keepalive(self) -> None:
        """Write one keep-alive (an SSE comment, or the protocol's ping event)."""
        raise NotImplementedError

    async def send_interrupted(self) -> None:
        """End the stream as an interrupted server does; by default the body just ends."""
        await self.exchange.response.write_eof()

    def fault_points(self) -> tuple[int | None, ...]:
        """Delta counts after which some fault is due."""
        b = self.behaviour
        return (b.stall_after, b.malformed_after, b.midstream_error_after, b.disconnect_after, b.interrupt_after)

    async def stream_deltas(self, count: int) -> bool:
        """Send ``count`` deltas with the faults due between them; False if a fault ended the stream."""
        b, record = self.behaviour, self.exchange.record
        gap, stall = b.inter_token_ms / 1000, 0.0
        for index in range(count + 1):
            if index == count and index not in self.fault_points():
                break
            if index == b.stall_after:
                record.outcome = "stall"
                if b.stall_ms is None:
                    await asyncio.Event().wait()  # silent until the client gives up
                stall = b.stall_ms / 1000
            await sleep_until(self.first_at + index * gap + stall)
            if not await self.inject_faults(index):
                return False
            if index < count:
                await self.send_delta(index, count)
                if index == 0:
                    record.actual_ttft_s = self.exchange.elapsed_s()
        return True

    async def inject_faults(self, index: int) -> bool:
        """Inject the faults due after ``index`` deltas; False if the stream must end."""
        b, ex = self.behaviour, self.exchange
        if index == b.malformed_after:
            ex.record.outcome = "malformed"
            await self.send_malformed()
        if index == b.midstream_error_after:
            ex.record.outcome = "midstream_error"
            ex.finish()
            await self.send_midstream_error(index)
            return False
        if index == b.interrupt_after:
            ex.record.outcome = "interrupted"
            ex.finish()
            await self.send_interrupted()
            return False
        if index == b.disconnect_after:
            ex.record.outcome = "disconnect"
            ex.finish()
            if b.disconnect_style == "close" and ex.request.transport is not None:
                ex.request.transport.close()  # FIN mid-body: the chunked framing never ends
            else:
                reset_connection(ex.request.transport)
            return False
        return True

    async def keepalive_until(self, deadline: float) -> None:
        """Send keep-alives every ``keepalive_every_ms`` while the first delta is pending."""
        every_s = (self.behaviour.keepalive_every_ms or 0) / 1000
        if not every_s:
            return
        at = asyncio.get_running_loop().time() + every_s
        while at < deadline:
            await sleep_until(at)
            await self.send_keepalive()
            at += every_s
