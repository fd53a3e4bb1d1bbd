"""Small helpers every simulator protocol module uses: waits, resets, JSON, ids."""

from __future__ import annotations

import asyncio
import json
import time
import socket
import struct
from typing import Any

__all__ = ["base62", "reset_connection", "sleep_until", "to_json"]

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
