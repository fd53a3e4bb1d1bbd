"""Which local addresses a WebRTC peer offers as host candidates (aioice, under aiortc).

aioice gathers host candidates on every interface address except loopback,
and offers no per-connection choice. :func:`host_addresses` chooses the
addresses for the gathering done in the current task (a context variable, so
concurrent peers choose apart); outside it aioice's own choice stands.

* A provider on this machine (the simulator, a local gateway), and the
  simulator itself, use loopback alone: nothing leaves the machine, and a host
  without another interface still works.
* A remote provider gets the one address its traffic leaves from
  (:func:`route_address`): what the kernel picks for a UDP socket "connected" to
  it, no packet sent. aioice's own way lists every interface with
  ``getifaddrs``, which needs a netlink socket, and the hardened systemd unit
  allows none (``RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from contextvars import ContextVar

_CHOSEN: ContextVar[tuple[str, ...] | None] = ContextVar("modelwatch_ice_host_addresses", default=None)
_installed = False


def install() -> None:
    """Let :func:`host_addresses` choose aioice's host candidates (idempotent)."""
    global _installed
    if _installed:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def chosen_or_all(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _CHOSEN.get()
        return original(use_ipv4, use_ipv6) if chosen is None else list(chosen)

    aioice.ice.get_host_addresses = chosen_or_all
    _installed = True


@contextlib.contextmanager
def host_addresses(addresses: tuple[str, ...]) -> Iterator[None]:
    """Gather host candidates on ``addresses`` alone while the block runs (in this task)."""
    install()
    token = _CHOSEN.set(addresses)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK = ("127.0.0.1",)


def route_address(ip: str) -> str | None:
    """The local address traffic to ``ip`` leaves from (a routing lookup: nothing is sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, 9))
            return probe.getsockname()[0]
    except OSError:
        return None
