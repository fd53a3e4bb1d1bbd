"""Which host candidates a WebRTC peer offers (modelwatch.ice), with real aiortc peers."""

from __future__ import annotations

import asyncio

from modelwatch import ice


def offered_addresses(addresses: tuple[str, ...] | None) -> set[str]:
    """The addresses of the host candidates a real aiortc offer carries."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def offer() -> str:
        async def gather() -> str:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.createDataChannel("oai-events")
            await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp
            await pc.close()
            return sdp
        if addresses is None:
            return await gather()
        with ice.host_addresses(addresses):
            return await gather()
    sdp = asyncio.run(offer())
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate")}


def test_loopback_is_offered_only_when_chosen():
    assert offered_addresses(ice.LOOPBACK) == {"127.0.0.1"}
    assert "127.0.0.1" not in offered_addresses(None)  # aioice's own choice never includes it


def test_the_choice_is_the_current_tasks_only():
    async def both() -> tuple[list[str], list[str]]:
        import aioice.ice
        ice.install()
        async def chosen() -> list[str]:
            with ice.host_addresses(("127.0.0.1",)):
                await asyncio.sleep(0.01)
                return aioice.ice.get_host_addresses(True, False)
        async def other() -> list[str]:
            await asyncio.sleep(0.005)  # runs while the other task holds its choice
            return aioice.ice.get_host_addresses(True, False)
        return await asyncio.gather(chosen(), other())
    mine, theirs = asyncio.run(both())
    assert mine == ["127.0.0.1"] and "127.0.0.1" not in theirs


def test_the_route_address_is_the_local_end_of_the_route():
    assert ice.route_address("127.0.0.1") == "127.0.0.1"
    assert ice.route_address("::1") in ("::1", None)  # None where IPv6 is off
    assert ice.route_address("not an address") is None


def test_loopback_names():
    assert all(ice.is_loopback(h) for h in ("localhost", "127.0.0.1", "127.3.4.5", "::1", "[::1]"))
    assert not any(ice.is_loopback(h) for h in ("api.openai.com", "10.0.0.1", "192.0.2.1", ""))
