"""Talking to systemd: readiness notifications and the watchdog, without libsystemd.

The protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines sent to the
unix socket named by ``$NOTIFY_SOCKET``: a path, or an abstract name written with
a leading ``@``. Outside systemd the variable is unset and every call is a no-op.
A notification never raises into the daemon and never blocks its loop: the
socket is non-blocking, and a failure is logged once, at debug level, since
systemd itself will say loudly enough if readiness or a watchdog ping is missed.

The watchdog ping is sent by a task on the daemon's event loop, not by a
thread: if the loop is stuck, the pings stop and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from modelwatch.logs import fields

log = logging.getLogger("modelwatch.systemd")

_failure_logged = False


def notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; True if it was sent."""
    global _failure_logged
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
        return True
    except (OSError, ValueError) as exc:
        if not _failure_logged:
            _failure_logged = True
            log.debug("sd_notify failed", extra=fields(socket=env.get("NOTIFY_SOCKET"), error=exc))
        return False


def reloading_message() -> str:
    """``RELOADING=1`` with the monotonic timestamp systemd 253+ asks for."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None if off.

    ``$WATCHDOG_PID``, when set, must be this process: the variables may have been
    inherited by a child that systemd is not watching.
    """
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def watchdog(interval: float, send: Callable[[str], object] = notify,
                   alive: Callable[[], bool] = lambda: True) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds, from the event loop, until cancelled.

    Only while ``alive()``: a running loop whose scheduler died probes nothing, and
    silence lets systemd restart it.
    """
    while True:
        if alive():
            send("WATCHDOG=1")
        await asyncio.sleep(interval)
