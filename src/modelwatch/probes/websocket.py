"""A probe's WebSocket session: opening it, and ending it without the goodbye stretching its timings.

:func:`open_websocket` upgrades and classifies a refused upgrade with the
provider's own error classifier.

Both realtime probes (OpenAI Realtime, Gemini Live) decide their outcome
before the socket is closed. A clean close then gets its own short grace
(:func:`close_within_grace`); after a failure the close runs in the
background (:func:`close_in_background`) so the recorded duration is when
the failure was seen, not when a slow server acknowledged the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.openai_chat import parse_body, status_failure

CLOSE_GRACE_S = 1.0  # also the ws_close timeout the probes pass to ws_connect

_closing: set[asyncio.Task] = set()  # strong references until the background closes finish


def close_in_background(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Start closing ``ws`` without waiting for it (the probe has already failed)."""
    if ws.closed:
        return
    task = asyncio.get_running_loop().create_task(_close_quietly(ws))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


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
