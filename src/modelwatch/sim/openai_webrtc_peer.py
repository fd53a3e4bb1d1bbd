"""The server peer of a simulated OpenAI Realtime WebRTC call (PROTOCOLS.md §3.1).

One aiortc ``RTCPeerConnection`` per call, gathering host candidates on
loopback only (``modelwatch.ice``) and no STUN server. The client's
``oai-events`` data channel carries the realtime session of
``openai_realtime_session`` (GA shapes), through :class:`EventChannel`, which
looks to the session like its WebSocket. The outbound audio track
(:class:`ToneTrack`) sends a 20 ms Opus frame every 20 ms: digital silence
(3-byte Opus packets) until an audio answer's first delta is due, then
``audio_ms`` of the quiet 400 Hz tone (about 285-440 bytes a packet at
aiortc's 96 kbit/s), then silence again; the frame carrying the first tone
sample is sent at exactly that deadline. No ``response.output_audio.delta``
event goes on the channel; ``output_audio_buffer.started`` / ``.stopped`` /
``.cleared`` do. ``webrtc_fault`` and ``media_stops_after_ms`` (see
``scenario``) are carried out here.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType

from modelwatch import ice

from .common import SessionEnd, sleep_until
from .content import WEBRTC_SAMPLE_RATE, pcm_tone_48k
from .openai_realtime_events import EVENT_NAMES, merge_session
from .openai_realtime_response import RealtimeResponse
from .openai_realtime_session import RealtimeSession

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from .app import SimState
    from .openai_realtime import RealtimeConnection
    from .scenario import ModelBehaviour

__all__ = ["CHANNEL_LABEL", "FRAME_MS", "EventChannel", "ToneTrack", "WebRTCCall", "WebRTCSession",
           "corrupt_fingerprint", "strip_candidates"]

log = logging.getLogger("modelwatch.sim")

CHANNEL_LABEL = "oai-events"
FRAME_MS = 20
FRAME_SAMPLES = WEBRTC_SAMPLE_RATE * FRAME_MS // 1000  # 960
_TIME_BASE = fractions.Fraction(1, WEBRTC_SAMPLE_RATE)
_SILENCE = bytes(2 * FRAME_SAMPLES)


# ---------------------------------------------------------------- media


@dataclass
class ToneSpan:
    """A stretch of tone on the loop clock, for one response (``owner``)."""

    start: float
    end: float
    owner: Any
    offset: int = 0  # tone samples already played before ``start`` (phase continuity)


class ToneTrack:
    """The call's outbound audio: silence frames, tone where a response speaks; real-time paced.

    Built lazily on aiortc's ``MediaStreamTrack`` (see :func:`make_track`). A
    frame is due every 20 ms; when a tone span starts between two frames the
    schedule moves so that a frame starts exactly at the span's start.
    ``silent`` (``no_media``) sends nothing at all; ``stop_at`` ends the RTP
    for good.
    """

    kind = "audio"

    def setup(self, silent: bool) -> None:
        self.silent = silent
        self.spans: list[ToneSpan] = []
        self.next_at: float | None = None
        self.pts = 0
        self.stop_at: float | None = None
        self.changed = asyncio.Event()
        self.last_owners: list[Any] = []  # the responses whose tone the last frame carried

    def play(self, span: ToneSpan) -> None:
        self.spans.append(span)
        self.changed.set()

    def cut(self, owner: Any | None, at: float) -> None:
        """End the tone of ``owner`` (every owner if None) at ``at``."""
        for span in self.spans:
            if owner is None or span.owner is owner:
                span.end = min(span.end, at)

    def stop_media(self, at: float) -> None:
        self.stop_at = at if self.stop_at is None else min(self.stop_at, at)
        self.changed.set()

    async def next_frame(self) -> Any:
        """Wait for the next frame's time and build it (an ``av.AudioFrame``)."""
        from av import AudioFrame

        loop = asyncio.get_running_loop()
        if self.silent:
            await asyncio.Event().wait()  # no RTP, ever: aiortc cancels this on close
        while True:
            now = loop.time()
            if self.next_at is None:
                self.next_at = now
            at = self.next_at
            for span in self.spans:
                if at - FRAME_MS / 1000 < span.start < at and span.end > span.start:
                    at = span.start  # a frame starts where the tone starts
            if self.stop_at is not None and at >= self.stop_at:
                await asyncio.Event().wait()  # media stopped for good
            if at <= now:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), at - now)
            except asyncio.TimeoutError:
                pass
        self.next_at = at + FRAME_MS / 1000
        pcm, self.last_owners = self._pcm(at)
        self.spans = [span for span in self.spans if span.end > at]
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm)
        frame.sample_rate = WEBRTC_SAMPLE_RATE
        frame.pts, frame.time_base = self.pts, _TIME_BASE
        self.pts += FRAME_SAMPLES
        return frame

    def _pcm(self, at: float) -> tuple[bytes, list[Any]]:
        """The frame starting at loop time ``at``: zeros, with the tone where spans cover it."""
        pcm = bytearray(_SILENCE)
        owners = []
        for span in self.spans:
            if span.start > at + 1e-6:
                continue  # it starts later: a frame of its own will start with it
            first = 0
            last = min(FRAME_SAMPLES, round((span.end - at) * WEBRTC_SAMPLE_RATE))
            if last <= first:
                continue
            played = span.offset + max(0, round((at - span.start) * WEBRTC_SAMPLE_RATE))
            pcm[2 * first:2 * last] = pcm_tone_48k(played, last - first)
            owners.append(span.owner)
        return bytes(pcm), owners


def make_track(silent: bool) -> Any:
    """A :class:`ToneTrack` that is also an aiortc ``MediaStreamTrack``."""
    from aiortc import MediaStreamTrack

    class _Track(ToneTrack, MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            MediaStreamTrack.__init__(self)
            self.setup(silent)

        async def recv(self) -> Any:
            return await self.next_frame()

    return _Track()


def tap_sender(sender: Any, track: ToneTrack, on_audible: Callable[[list[Any]], None]) -> None:
    """Call ``on_audible(owners)`` as each frame with tone, encoded, is handed to the RTP transport.

    aiortc's sender loop fetches a frame from the track, encodes it, then
    writes its packet at once; the wrapper runs between the two.
    """
    fetch = sender._next_encoded_frame

    async def tapped(codec: Any) -> Any:
        encoded = await fetch(codec)
        if encoded is not None and track.last_owners:
            on_audible(track.last_owners)
        return encoded

    sender._next_encoded_frame = tapped


# ---------------------------------------------------------------- the event channel


@dataclass
class _Message:
    type: WSMsgType
    data: Any = None


class EventChannel:
    """The ``oai-events`` data channel as the session's WebSocket: ``send_str``, ``receive``, ``close``."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.inbox: asyncio.Queue[_Message] = asyncio.Queue()
        channel.on("message", self._message)
        channel.on("close", lambda: self.inbox.put_nowait(_Message(WSMsgType.CLOSED)))

    def _message(self, data: Any) -> None:
        kind = WSMsgType.TEXT if isinstance(data, str) else WSMsgType.BINARY
        self.inbox.put_nowait(_Message(kind, data))

    @property
    def closed(self) -> bool:
        return self.channel.readyState != "open"

    async def send_str(self, text: str) -> None:
        if self.channel.readyState != "open":
            raise ConnectionResetError("the oai-events channel is closed")
        self.channel.send(text)
        await asyncio.sleep(0)  # let the SCTP transport write it

    async def receive(self) -> _Message:
        return await self.inbox.get()


# ---------------------------------------------------------------- the session


class WebRTCSession(RealtimeSession):
    """A realtime session over a call's data channel; audio goes to the call's track."""

    def __init__(self, state: SimState, conn: RealtimeConnection, channel: EventChannel, behaviour: ModelBehaviour,
                 call: WebRTCCall, session: dict[str, Any]) -> None:
        super().__init__(state, conn, channel, behaviour, False)
        self.call = call
        if self.beta:  # realtime_mode: beta; WebRTC is GA only
            self.beta = False
            self.max_session_s = behaviour.session_max_s or 3600
            self.config = self._initial_config()
        self.config = merge_session(self.config, session)

    def name(self, kind: str) -> str:
        return EVENT_NAMES[kind][0]

    async def close_transport(self, how: SessionEnd) -> None:
        await self.call.hang_up(abrupt=how.drop)

    async def _open(self) -> None:
        await super()._open()
        self.call.session_created.set()

    async def _dispatch(self, event: dict[str, Any]) -> None:
        if event.get("type") == "response.create":
            self.call.response_requested()
            if self.call.killed:
                return
        if event.get("type") == "output_audio_buffer.clear":
            last = self.call.last_audio_response
            self.call.track.cut(None, asyncio.get_running_loop().time())
            await self.send({"type": "output_audio_buffer.cleared",
                             "response_id": last.id if last is not None else None})
            return
        await super()._dispatch(event)

    def _plan(self, overrides: dict[str, Any], received: float, turn: int) -> RealtimeResponse:
        first = self.responses == 0
        response = super()._plan(overrides, received, turn)
        if first:  # over WebRTC the origin is the response.create, not the call request
            self.conn.record.injected_ttft_s = response.first_at - received
        return response

    async def _open_output(self, response: RealtimeResponse) -> None:
        await super()._open_output(response)
        if response.audio and not self.content_blocked:
            self.call.speak(response, response.first_at, self.b.audio_ms / 1000)

    async def _send_audio(self, response: RealtimeResponse, index: int) -> None:
        """No audio delta event: the track plays the audio; keep the counts, announce its start."""
        b = self.b
        planned = math.ceil(b.audio_ms / b.audio_chunk_ms)
        if index >= planned:  # audio_after_cancel: more tone after the cancelled response.done
            loop_now = asyncio.get_running_loop().time()
            self.call.speak(response, loop_now, b.audio_chunk_ms / 1000, late=True)
        total_ms = b.audio_ms if index < planned else (index + 1) * b.audio_chunk_ms
        response.audio_ms_sent = min(total_ms, (index + 1) * b.audio_chunk_ms)
        response.audio_chunks_sent = index + 1
        self.item_audio_ms[response.item_id] = response.audio_ms_sent
        if index == 0:
            await self.send({"type": "output_audio_buffer.started", "response_id": response.id})

    def output_sent(self, response: RealtimeResponse, audio: bool) -> None:
        """A text answer's first delta stamps its TTFT, from its ``response.create``.

        An audio answer's first output is its first audible RTP packet instead (``WebRTCCall.audible``).
        """
        if not response.audio:
            self.call.first_output(response, time.perf_counter())

    async def _close_output(self, response: RealtimeResponse) -> None:
        await super()._close_output(response)
        if response.audio and response.audio_chunks_sent:
            await sleep_until(response.first_at + self.b.audio_ms / 1000)
            await self.send({"type": "output_audio_buffer.stopped", "response_id": response.id})

    async def _cancel(self, response: RealtimeResponse, received: float, received_perf: float) -> None:
        await super()._cancel(response, received, received_perf)
        if response.audio:
            if not response.log.get("audio_after_cancel"):
                self.call.track.cut(response, asyncio.get_running_loop().time())
            await self.send({"type": "output_audio_buffer.cleared", "response_id": response.id})


# ---------------------------------------------------------------- the call


@dataclass
class WebRTCCall:
    """One call: its peer, track, session and faults."""

    call_id: str
    state: SimState
    conn: RealtimeConnection
    behaviour: ModelBehaviour
    session: dict[str, Any]  # session settings from the request or the client secret
    pc: RTCPeerConnection | None = None
    track: Any = None
    task: asyncio.Task | None = None
    realtime: WebRTCSession | None = None
    killed: bool = False
    ended: bool = False
    last_audio_response: RealtimeResponse | None = None
    session_created: asyncio.Event = field(default_factory=asyncio.Event)
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def fault(self) -> str | None:
        return self.behaviour.webrtc_fault

    async def answer(self, offer_sdp: str) -> str:
        """Set up the peer for ``offer_sdp`` and return the SDP answer (faults applied).

        Raises ValueError for an offer aiortc cannot use.
        """
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        with ice.host_addresses(ice.LOOPBACK):
            self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.on("datachannel", self._on_datachannel)
            pc.on("connectionstatechange", self._on_state)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
                if self.fault == "no_datachannel" and pc.sctp is not None:
                    pc.sctp.start = _never_start  # the association is never initiated nor answered
                self.track = make_track(silent=self.fault == "no_media")
                if any(t.kind == "audio" for t in pc.getTransceivers()):
                    sender = pc.addTrack(self.track)
                    tap_sender(sender, self.track, self.audible)
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:
                await pc.close()
                raise ValueError(str(exc) or type(exc).__name__) from None
            sdp = pc.localDescription.sdp
        if self.fault == "no_candidates":
            await pc.close()  # nobody will ever answer a connectivity check
            sdp = strip_candidates(sdp)
        elif self.fault == "dtls_fail":
            sdp = corrupt_fingerprint(sdp)
        return sdp

    def start(self) -> None:
        """Run the call in the background until it ends."""
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            if self.fault == "kill_peer" and self.behaviour.kill_peer_after_ms > 0:
                asyncio.create_task(self._kill_later())
            if self.fault not in ("no_candidates",):
                opened = asyncio.create_task(self.channel_open.wait())
                gone = asyncio.create_task(self.gone.wait())
                await asyncio.wait([opened, gone], return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
                gone.cancel()
                if self.channel_open.is_set() and not self.gone.is_set() and self.realtime is not None:
                    await self.realtime.run()
                    return
            await self.gone.wait()
        except Exception:
            log.exception("simulator WebRTC call failed")
        finally:
            await self.hang_up(abrupt=self.killed)
            self.conn.finish()

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != CHANNEL_LABEL or self.realtime is not None or self.ended:
            return
        events = EventChannel(channel)
        self.realtime = WebRTCSession(self.state, self.conn, events, self.behaviour, self, self.session)
        self.channel_open.set()

    def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            if self.realtime is not None and self.realtime.active is not None:
                self.conn.record.client_disconnected = True
            self.gone.set()

    # ------------------------------------------------------------ audio

    def speak(self, response: RealtimeResponse, start: float, seconds: float, late: bool = False) -> None:
        """Queue ``seconds`` of tone for ``response`` from loop time ``start`` (faults permitting)."""
        self.last_audio_response = response
        if self.fault == "events_without_audio" and response.faulty:
            return
        if not late:
            stops = self.behaviour.media_stops_after_ms
            if stops is not None and response.faulty:
                self.track.stop_media(start + stops / 1000)
        self.track.play(ToneSpan(start, start + seconds, response, offset=0))

    def audible(self, owners: list[Any]) -> None:
        """A frame with tone of ``owners`` was encoded and goes to the transport now."""
        now = time.perf_counter()
        for response in owners:
            self.first_output(response, now)

    def first_output(self, response: RealtimeResponse, at_perf: float) -> None:
        """Stamp the actual TTFT of ``response`` (and of the call, for its first) unless stamped."""
        if response.log.get("actual_ttft_s") is None:
            response.log["actual_ttft_s"] = at_perf - response.received_perf
            if self.conn.record.actual_ttft_s is None:
                self.conn.record.actual_ttft_s = at_perf - response.received_perf

    # ------------------------------------------------------------ faults and ending

    def response_requested(self) -> None:
        """A ``response.create`` arrived: ``kill_peer`` with no delay strikes now."""
        if self.fault == "kill_peer" and self.behaviour.kill_peer_after_ms == 0 and not self.killed:
            self.kill()

    async def _kill_later(self) -> None:
        await self.session_created.wait()
        await asyncio.sleep(self.behaviour.kill_peer_after_ms / 1000)
        self.kill()

    def kill(self, outcome: str | None = "kill_peer") -> None:
        """Close the peer's sockets: no DTLS alert, no SCTP ABORT, no RTCP BYE can leave."""
        if self.killed or self.ended:
            return
        self.killed = True
        if outcome is not None:
            self.conn.record.outcome = outcome
        for protocol in list(_ice_connection_protocols(self.pc)):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.close()
        if self.realtime is not None:
            self.realtime.end(SessionEnd(drop=True), outcome)
        self.gone.set()

    async def hang_up(self, abrupt: bool = False) -> None:
        """End the call: close the peer (after cutting its sockets if ``abrupt``)."""
        if abrupt and not self.killed:
            self.kill(outcome=None)
        if self.ended:
            return
        self.ended = True
        self.gone.set()
        if self.realtime is not None and not self.realtime.ended.done():
            self.realtime.end(SessionEnd(), None)
        if self.pc is not None:
            try:
                # Shielded: cancelling a close() that waits on another one would break that one.
                await asyncio.wait_for(asyncio.shield(self.pc.close()), 2.0)
            except Exception:  # a peer that cannot close cleanly is closed enough
                log.debug("simulator WebRTC peer close failed", exc_info=True)

    async def close(self) -> None:
        """Hang up and wait for the call's task (simulator shutdown)."""
        await self.hang_up()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def _never_start(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``RTCSctpTransport.start`` under ``no_datachannel``."""


def _ice_connection_protocols(pc: Any) -> list[Any]:
    """The UDP protocols of every aioice connection of ``pc``."""
    protocols = []
    if pc is None:
        return protocols
    transports = {id(t.sender.transport): t.sender.transport for t in pc.getTransceivers()
                  if t.sender.transport is not None}
    if pc.sctp is not None:
        transports[id(pc.sctp.transport)] = pc.sctp.transport
    for dtls in transports.values():
        connection = getattr(dtls.transport, "_connection", None)
        protocols += list(getattr(connection, "_protocols", []) or [])
    return protocols


def strip_candidates(sdp: str) -> str:
    """``sdp`` without its ``a=candidate`` and ``a=end-of-candidates`` lines."""
    lines = [line for line in sdp.splitlines()
             if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


_FINGERPRINT = re.compile(r"^(a=fingerprint:\S+ )([0-9A-Fa-f:]+)$", re.MULTILINE)


def corrupt_fingerprint(sdp: str) -> str:
    """``sdp`` with every ``a=fingerprint`` hash changed (each hex digit flipped), still well-formed."""
    def flipped(match: re.Match) -> str:
        digits = "".join(c if c == ":" else "%X" % (15 - int(c, 16)) for c in match.group(2))
        return match.group(1) + digits
    return _FINGERPRINT.sub(flipped, sdp.replace("\r\n", "\n")).replace("\n", "\r\n")

