"""OpenAI Realtime WebSocket probe (OpenAI, Azure OpenAI, compatible servers).

One short, staged session, each stage with its budget and its name in
``error_code`` if it times out::

    connect      TCP/TLS + WebSocket upgrade        -> connect_s
    session      session.created received           -> ttfb_s
    configure    session.update -> session.updated
    ttft         user turn + response.create -> first text delta, or first
                 audio delta with ``modality: audio``  -> ttft_s
    response     response.done                      -> duration_s, tokens
    close        clean close handshake (best effort: a slow close does not fail the probe)

Both event-name families are accepted whatever was asked for (GA
``response.output_text.delta`` / ``response.output_audio.delta``, beta
``response.text.delta`` / ``response.audio.delta``); unknown events and extra
or null fields are ignored. The events, and :class:`RealtimeSession` that
decodes them without I/O, are :mod:`modelwatch.probes.realtime_events`'s: the
WebRTC probe speaks the same ones over a data channel.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.openai_family import FAMILY, classify_openai_error, openai_auth
# Re-exported: the conversation probes and the tests name them here.
from modelwatch.probes.realtime_events import (AUDIO_DELTAS, BYTES_PER_MS, INSTRUCTIONS,  # noqa: F401
                                               INTERRUPT_INSTRUCTIONS, TEXT_DELTAS, RealtimeSession,
                                               classify_close, classify_realtime_error, session_update, user_turn)
from modelwatch.probes.spec import DetailSeries, ProbeSpec, realtime_tokens
from modelwatch.probes.websocket import Stage, read_until, run_session, send_messages

QUIET_S = 0.3  # after the cancel's acknowledgement, how long the probe listens for audio that should not come


def realtime_endpoint(job: ProbeJob) -> tuple[str, dict[str, str]]:
    """The WebSocket URL and upgrade headers for a job."""
    provider = job.provider
    base = "ws" + provider.base_url[4:] if provider.base_url.startswith("http") else provider.base_url
    headers = {"User-Agent": "modelwatch", **provider.headers}
    if provider.type == "azure-openai" and provider.api_version:
        url = (f"{base}/realtime?api-version={quote(provider.api_version)}"
               f"&deployment={quote(job.model, safe='')}")
    else:
        url = f"{base}/realtime?model={quote(job.model, safe='')}"
    headers.update(openai_auth(job))
    if job.probe.interface == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return url, headers


def configure(job: ProbeJob) -> list[dict]:
    """What the configure stage sends: the ``session.update``."""
    return [session_update(job)]


STAGES = (Stage("session", stamp="ttfb_s"), Stage("configure", send=configure),
          Stage("ttft", send=user_turn, stamp="ttft_s"), Stage("response", stamp="duration_s"))


BARGE_IN_STAGES = STAGES[:3]  # the answer's first audio; then barge_in instead of its end


async def probe_openai_realtime(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One staged realtime session, timed stage by stage (with ``interrupt_after``: interrupted)."""
    session = RealtimeSession(job.probe.modality)
    if job.probe.interrupt_after is None:
        await run_session(job, http, m, realtime_endpoint(job), classify_openai_error, session, STAGES)
        return
    await run_session(job, http, m, realtime_endpoint(job), classify_openai_error, session, BARGE_IN_STAGES,
                      then=lambda ws: barge_in(job, ws, session, m))


async def barge_in(job: ProbeJob, ws: aiohttp.ClientWebSocketResponse, session: RealtimeSession,
                   m: Measurement) -> None:
    """Interrupt the answer ``interrupt_after`` past its first audio, as a user talking over it would.

    Sends ``response.cancel`` and truncates the item to the audio heard so far;
    ``interrupt_s`` is cancel sent -> ``response.done`` (cancelled). Audio that
    still comes in the next ``QUIET_S`` fails the probe (``audio_after_cancel``).
    """
    m.enter("interrupt")
    at = m.start + m.ttft_s + job.probe.interrupt_after
    reached, _ = await read_until(ws, session, m, "response", until=at)
    if reached is not None:
        raise ProbeFailure(Outcome.BAD_REQUEST, "interrupt_after_too_long",
                           f"the answer ended {time.perf_counter() - m.start - m.ttft_s:.3f}s after its first audio, "
                           f"before interrupt_after ({job.probe.interrupt_after:g}s): nothing left to interrupt")
    heard_ms = min(round(job.probe.interrupt_after * 1000), session.audio_bytes // BYTES_PER_MS)
    session.cancelling = True
    cancel = [{"type": "response.cancel"}]
    if session.item_id is not None:
        cancel.append({"type": "conversation.item.truncate", "item_id": session.item_id, "content_index": 0,
                       "audio_end_ms": heard_ms})
    sent = time.perf_counter()
    await send_messages(ws, session, m, cancel)
    _, acked = await read_until(ws, session, m, "cancelled")
    m.interrupt_s = acked - sent
    m.duration_s = acked - m.start
    m.finishing(QUIET_S + 0.5)  # measured: the quiet window may outlast the probe's budget
    await read_until(ws, session, m, "never", until=acked + QUIET_S)  # audio past the ack raises


def _details(job: ProbeJob) -> DetailSeries:
    return DetailSeries(interrupt=job.probe.interrupt_after is not None)


SPEC = ProbeSpec("realtime", FAMILY, probe_openai_realtime, classify_openai_error, realtime_tokens(),
                 "Realtime WebSocket session (GA or beta events), text or audio; barge-in with interrupt_after",
                 transport="websocket", details=_details, options={"interrupt_after": FAMILY})
