"""OpenAI Realtime over WebRTC (``transport: webrtc``): the transport browsers and phones use.

A WebSocket probe can be green while signalling, ICE, DTLS or media fail for
every browser. This probe is a WebRTC peer (aiortc) that makes a call the way
a browser does and times each phase, with its budget and its name in
``error_code`` if it fails::

    connect    TCP/TLS to the API, for signalling                   -> connect_s
    signal     the SDP offer answered (POST /realtime/calls, 201)   -> signal_s
    ice        ICE connectivity checks succeeded                    -> ice_s
    dtls       DTLS handshake done                                  -> dtls_s
    channel    the ``oai-events`` data channel open                 -> channel_s
    session    ``session.created`` on the channel                   -> ttfb_s
    configure  ``session.update`` -> ``session.updated``
    ttft       the prompt (text) + ``response.create`` -> the first text delta, or with
               ``modality: audio`` the first AUDIBLE RTP packet     -> ttft_s
    response   ``response.done``                                    -> duration_s
    hangup     POST /realtime/calls/{id}/hangup, peer closed (best effort, off the clock)

Signalling (``signalling``): ``ephemeral`` (default), as a browser does: the
key mints a client secret (``POST /realtime/client_secrets``) and the offer
goes as raw SDP with it; ``multipart``: the offer and the session in one
multipart request with the key, as a server in the path does.

Time to first audio is the arrival of the first RTP packet whose Opus payload
is larger than silence (digital silence encodes to 1-3 bytes; speech to
tens or hundreds): packets are tapped as they leave SRTP, before any jitter
buffer, and never decoded, so the probe spends no CPU on Opus. The prompt is
sent as text (a probe has no microphone), the answer asked in audio.

No STUN or TURN server unless ``ice_servers`` names them (an unreachable one
stalls gathering). Host candidates (:mod:`modelwatch.ice`): loopback alone for a
provider on this machine (the simulator), else the address that routes to the
provider, found without listing interfaces (the hardened unit allows no netlink). aiortc is imported on the
first WebRTC probe, so daemons without one never load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from modelwatch import ice
from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement, say_goodbye
from modelwatch.probes.http import ErrorReading, read_body, refuse, request_id_from
from modelwatch.probes.openai_family import classify_openai_error, openai_auth
from modelwatch.probes.parsing import parse_body
from modelwatch.probes.realtime_events import INSTRUCTIONS, RealtimeSession
from modelwatch.probes.spec import ProbeSpec, realtime_tokens

LABEL = "oai-events"
AUDIBLE_MIN_BYTES = 16  # an Opus payload above this is sound, not silence (docs/probes.md)
MEDIA_GAP_S = 1.0  # audio started, then no RTP for this long before response.done: the media stopped
SECRET_TTL_S = 60  # the client secret's life: one call
HANGUP_TIMEOUT_S = 2.0
ERRORS = ErrorReading(classify_openai_error)
WEBRTC_TYPES = ("openai", "azure-openai")



def session_config(job: ProbeJob) -> dict:
    """The session a call asks for: modality, one-word instructions, the cap, the voice."""
    p = job.probe
    audio = p.modality == "audio"
    session: dict[str, Any] = {"type": "realtime", "model": job.model,
                               "output_modalities": ["audio"] if audio else ["text"],
                               "instructions": INSTRUCTIONS, "max_output_tokens": p.max_tokens}
    if audio:
        session["audio"] = {"input": {"turn_detection": None}, "output": {"voice": p.voice}}
    return session


def user_turn(job: ProbeJob) -> list[dict]:
    """The prompt as text, then ``response.create``."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": job.probe.prompt}]}
    return [{"type": "conversation.item.create", "item": item}, {"type": "response.create"}]


class Call:
    """One call's events as they arrive: phases, data-channel messages and the first audible packet."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, float, Any]] = asyncio.Queue()
        self.packets = 0
        self.last_packet: float | None = None
        self.first_audible: float | None = None
        self.location: str | None = None

    def put(self, what: str, data: Any = None) -> None:
        self.queue.put_nowait((what, time.perf_counter(), data))

    async def tap(self, packet: Any, arrival_time_ms: int = 0) -> None:
        """Stands in for the receiver's RTP handling: note the packet, never decode it."""
        now = time.perf_counter()
        self.packets += 1
        self.last_packet = now
        if self.first_audible is None and len(packet.payload) > AUDIBLE_MIN_BYTES:
            self.first_audible = now
            self.queue.put_nowait(("audible", now, None))


async def signal(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement, offer: str, call: Call) -> str:
    """Send the offer, return the SDP answer (stamps ``signal_s``)."""
    base = job.provider.base_url
    headers = {"User-Agent": "modelwatch", **job.provider.headers}
    if job.probe.signalling == "multipart":
        form = aiohttp.FormData()
        form.add_field("sdp", offer, content_type="application/sdp")
        form.add_field("session", json.dumps(session_config(job)), content_type="application/json")
        request = {"data": form, "headers": {**headers, **openai_auth(job), "Accept": "application/sdp"}}
    else:
        secret = await mint_secret(job, http, m, headers)
        request = {"data": offer.encode(), "headers": {**headers, "Authorization": f"Bearer {secret}",
                                                        "Content-Type": "application/sdp",
                                                        "Accept": "application/sdp"}}
    async with http.post(f"{base}/realtime/calls", allow_redirects=False, **request) as resp:
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers) or m.request_id
        if resp.status not in (200, 201):
            await refuse(resp, m, ERRORS)
        answer = (await read_body(resp, m.byte_limit)).decode("utf-8", "replace")
        call.location = resp.headers.get("Location")
    m.signal_s = m.elapsed()
    if not answer.lstrip().startswith("v="):
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "bad_sdp", f"the answer is not SDP: {answer[:60]!r}")
    if "a=candidate" not in answer:
        raise ProbeFailure(Outcome.CONNECT_ERROR, "ice_no_candidates", "the SDP answer offers no ICE candidate")
    return answer


async def mint_secret(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement, headers: dict) -> str:
    """An ephemeral client secret for one call, as a browser's server mints it."""
    body = {"expires_after": {"anchor": "created_at", "seconds": SECRET_TTL_S}, "session": session_config(job)}
    async with http.post(f"{job.provider.base_url}/realtime/client_secrets", data=json.dumps(body).encode(),
                         headers={**headers, **openai_auth(job), "Content-Type": "application/json"},
                         allow_redirects=False) as resp:
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers)
        if resp.status != 200:
            await refuse(resp, m, ERRORS)
        answer = parse_body(await read_body(resp, 65536))
    secret = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(secret, str) or not secret:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_client_secret", "client_secrets answered without a value")
    return secret


async def _until(call: Call, session: RealtimeSession, m: Measurement, goal: str) -> float:
    """Wait for ``goal`` (a phase, a session stage, or ``audible``); return when it came."""
    while True:
        timeout = None
        if goal == "response" and call.first_audible is not None:  # audio started: it must keep coming
            timeout = max(0.0, (call.last_packet or 0) + MEDIA_GAP_S - time.perf_counter())
        try:
            what, at, data = await asyncio.wait_for(call.queue.get(), timeout)
        except TimeoutError:
            if call.last_packet is not None and time.perf_counter() - call.last_packet >= MEDIA_GAP_S:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "media_stopped",
                                   f"no RTP for {MEDIA_GAP_S:g}s in the middle of the answer") from None
            continue
        if what == "event":
            try:
                reached = session.feed(session.decode(data))
            except ProbeFailure as exc:
                if goal == "audible" and exc.error_code == "no_content":  # the decoder's word for it
                    raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_audio", "response.done before any audible "
                                       f"RTP packet ({call.packets} packets, none louder than silence)") from None
                raise
            if reached == goal or (goal == "audible" and reached == "response"):
                if goal == "audible":
                    raise ProbeFailure(Outcome.PROTOCOL_ERROR, "no_audio", "response.done before any audible "
                                       f"RTP packet ({call.packets} packets, none louder than silence)")
                return at
        elif what == goal:
            return at
        elif what in _FAILURES:
            raise ProbeFailure(*_FAILURES[what])


_FAILURES = {
    "ice_failed": (Outcome.CONNECT_ERROR, "ice", "ICE connectivity checks failed"),
    "failed": (Outcome.CONNECT_ERROR, "dtls", "the peer connection failed after ICE (DTLS)"),
    "channel_closed": (Outcome.PROTOCOL_ERROR, "channel_closed", "the oai-events data channel closed"),
}


def _watch(pc: Any, channel: Any, call: Call) -> None:
    """Turn the peer's callbacks into the call's events."""
    @pc.on("iceconnectionstatechange")
    def _ice() -> None:
        state = pc.iceConnectionState
        if state in ("connected", "completed"):
            call.put("ice")
        elif state == "failed":
            call.put("ice_failed")

    @pc.on("connectionstatechange")
    def _conn() -> None:
        if pc.connectionState == "connected":
            call.put("dtls")
        elif pc.connectionState == "failed":
            call.put("failed")

    channel.on("open", lambda: call.put("channel"))
    channel.on("message", lambda message: call.put("event", message))
    channel.on("close", lambda: call.put("channel_closed"))


async def converse(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement, pc: Any, call: Call) -> RealtimeSession:
    """The call from offer to ``response.done``, phase by phase."""
    from aiortc import RTCSessionDescription

    audio = job.probe.modality == "audio"
    session = RealtimeSession(job.probe.modality)
    channel = pc.createDataChannel(LABEL)
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    transceiver.receiver._handle_rtp_packet = call.tap  # RTP as it arrives, before the jitter buffer
    _watch(pc, channel, call)
    await pc.setLocalDescription(await pc.createOffer())  # gathers the candidates
    answer = await signal(job, http, m, pc.localDescription.sdp, call)
    for phase, stamp in (("ice", "ice_s"), ("dtls", "dtls_s"), ("channel", "channel_s")):
        m.enter(phase)
        if phase == "ice":
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        setattr(m, stamp, await _until(call, session, m, phase) - m.start)
    m.enter("session")
    m.ttfb_s = await _until(call, session, m, "session") - m.start
    m.enter("configure")
    channel.send(json.dumps({"type": "session.update", "session": _update(session_config(job))}))
    await _until(call, session, m, "configure")
    m.enter("ttft")
    for event in user_turn(job):
        channel.send(json.dumps(event))
    first = await _until(call, session, m, "audible" if audio else "ttft")
    m.ttft_s = first - m.start
    m.enter("total")
    if audio:
        session.output = True  # the first audio came as RTP, not as a delta event
    m.duration_s = await _until(call, session, m, "response") - m.start
    return session


def _update(session: dict) -> dict:
    return {k: v for k, v in session.items() if k != "model"}  # the call chose the model


async def probe_openai_webrtc(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One Realtime call over WebRTC, timed phase by phase, hung up off the clock."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

    servers = [RTCIceServer(urls=url) for url in job.probe.ice_servers or ()]
    call = Call()
    addresses = await _host_addresses(job)
    with ice.host_addresses(addresses) if addresses else contextlib.nullcontext():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        session: RealtimeSession | None = None
        try:
            session = await converse(job, http, m, pc, call)
        except BaseException:
            _hang_up(job, http, pc, call)  # the outcome is decided: the goodbye must not stretch it
            raise
        finally:
            if session is not None:
                m.input_tokens, m.output_tokens, m.input_audio_tokens, m.output_audio_tokens = session.tokens()
            m.request_id = m.request_id or call.location
    # A success hangs up before returning, on a grace of its own (off the clock: duration_s is
    # stamped), so that `modelwatch probe` leaves no call open behind it.
    m.finishing(2 * HANGUP_TIMEOUT_S + 0.5)
    await _hangup(job, http, pc, call.location)


async def _host_addresses(job: ProbeJob) -> tuple[str, ...] | None:
    """The host candidates to offer: loopback for a provider on this machine, else the address
    that routes to the provider (None: aioice's own choice, if no route is known)."""
    host = urlsplit(job.provider.base_url).hostname or ""
    if ice.is_loopback(host):
        return ice.LOOPBACK
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, 443, type=socket.SOCK_DGRAM)
    except OSError:
        return None  # the signalling request will name the DNS failure
    routes = {ice.route_address(info[4][0]) for info in found} - {None}
    return tuple(sorted(routes)) or None


def _hang_up(job: ProbeJob, http: aiohttp.ClientSession, pc: Any, call: Call) -> None:
    """End the call in the background: the provider's hangup, then the peer (its goodbyes are slow)."""
    say_goodbye(_hangup(job, http, pc, call.location))


async def _hangup(job: ProbeJob, http: aiohttp.ClientSession, pc: Any, location: str | None) -> None:
    with contextlib.suppress(Exception):
        if location:
            call_id = location.rstrip("/").rsplit("/", 1)[-1]
            async with asyncio.timeout(HANGUP_TIMEOUT_S):
                async with http.post(f"{job.provider.base_url}/realtime/calls/{call_id}/hangup",
                                     headers={"User-Agent": "modelwatch", **job.provider.headers, **openai_auth(job)},
                                     allow_redirects=False) as resp:
                    await resp.read()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(HANGUP_TIMEOUT_S):
            await pc.close()


SPEC = ProbeSpec("realtime", WEBRTC_TYPES, probe_openai_webrtc, classify_openai_error, realtime_tokens(),
                 "Realtime over WebRTC (transport: webrtc): signalling, ICE, DTLS, data channel, first audible "
                 "RTP packet", transport="webrtc")
