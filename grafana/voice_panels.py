"""The voice-agent panels (issue 13): time to first audio of a realtime session beside a REST voice
chain, what each stage of a chain adds, time to first token as a conversation ages, and barge-in.

Both dashboards build their "Voice agents" row from these, each with its own variables
(:class:`probe_promql.ProbeQueries`). ``modelwatch_probe_info`` says what a probe's ttft times:
``modality="audio"`` is a time to first audio (realtime audio probes, voice chains, audio
conversations); ``api`` is ``realtime`` (a WebSocket session) or ``chat`` (REST with history).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import timeseries

import dashboard_parts as parts
from dashboard_parts import FIRST_AUDIO_THRESHOLDS, INTERRUPT_THRESHOLDS, TTFT_THRESHOLDS, graph, query, thresholds
from probe_promql import ProbeQueries

LEGEND = "{{target}} ({{kind}})"
# A voice chain's stages in the order they run, so the stack reads bottom-up as the chain does.
STAGES = ("stt", "llm", "tts")


def first_audio(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """p50 (dashed) and p95 time to first audio of every probe whose ttft is one."""
    audio = q.info('modality="audio"')
    panel = graph(
        "Time to first audio: realtime vs chain",
        "How long a caller waits for the first sound of the answer, p50 dashed and p95 solid, per "
        "target and kind: a realtime audio session (kind realtime: the first audio delta), a REST "
        "voice chain (kind voice-chain: transcription, chat, then speech, to the first audio "
        "byte) and an audio conversation's first turn. Only probes whose modelwatch_probe_info has "
        'modality="audio" are drawn, so text probes of the same model stay out. Pick the targets of '
        "one model family to see what the chain costs against the realtime session.",
        "s", [query(q.quantile(0.5, "ttft", "$__rate_interval", join=audio), f"{LEGEND} p50", ref="A"),
              query(q.quantile(0.95, "ttft", "$__rate_interval", join=audio), f"{LEGEND} p95", ref="B")],
        span=span, height=9)
    return parts.dashed_query(panel.thresholds(thresholds("green", *FIRST_AUDIO_THRESHOLDS)), "A")


def chain_stages(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """p50 of each voice-chain stage, stacked stt, llm, tts."""
    queries = [query(q.quantile(0.5, "stage", "$__rate_interval", by="target, stage", extra=[f'stage="{stage}"']),
                     "{{target}} {{stage}}", ref=ref)
               for ref, stage in zip("ABC", STAGES)]
    panel = graph(
        "Voice chain stages",
        "What each stage of a voice chain adds to its time to first audio, p50 per stage and "
        "target, stacked in the order they run (modelwatch_probe_stage_seconds): stt until the "
        "transcript is complete, llm until the answer's text is complete, tts until the first "
        "audio byte. The top of the stack is about the chain's time to first audio (a sum of "
        "medians, not the median of the sum). Stacks of several chains pile on each other: pick "
        "one Target to read its stack.",
        "s", queries, span=span, height=9, stacked=True)
    return panel.thresholds(thresholds("green", *FIRST_AUDIO_THRESHOLDS))


def turn_bands(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """p95 TTFT of conversation turns by turn band, labelled with the probe's api."""
    expr = q.quantile(0.95, "turn_ttft", "$__rate_interval", by="target, api, turn_band",
                      join=q.info(copy="api"))
    panel = graph(
        "TTFT by turn band: realtime vs REST",
        "p95 time to first token (or audio) of each turn of a conversation probe, by how deep "
        "into the session the turn is (turn_band 1-5, 6-10, 11-20, 21-50, 51+), from "
        "modelwatch_probe_turn_ttft_seconds. The api comes from modelwatch_probe_info: realtime "
        "is one WebSocket session (its context stays on the server), chat is REST resending the "
        "growing history every turn. A line that climbs band by band is a session that slows "
        "down as it ages.",
        "s", [query(expr, "{{target}} {{api}} turns {{turn_band}}")], span=span, height=9)
    return panel.thresholds(thresholds("green", *TTFT_THRESHOLDS))


def barge_in(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """p50 (dashed) and p95 time from response.cancel to the server's acknowledgement."""
    panel = graph(
        "Barge-in acknowledgement",
        "Realtime audio probes with interrupt_after talk over the answer: they send "
        "response.cancel mid-answer, as a caller interrupting would. This is the time from the "
        "cancel to the server's acknowledgement (the response ends cancelled), p50 dashed and "
        "p95 solid, from modelwatch_probe_interrupt_seconds. A probe whose cancel is ignored, or "
        "whose audio keeps coming after the acknowledgement, fails instead (protocol_error).",
        "s", [query(q.quantile(0.5, "interrupt", "$__rate_interval"), f"{LEGEND} p50", ref="A"),
              query(q.quantile(0.95, "interrupt", "$__rate_interval"), f"{LEGEND} p95", ref="B")],
        span=span, height=9)
    return parts.dashed_query(panel.thresholds(thresholds("green", *INTERRUPT_THRESHOLDS)), "A")


def webrtc_vs_websocket(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """p50 (dashed) and p95 time to first token or audio of realtime probes, by model and transport."""
    join = q.info(copy="transport, modality")
    by = "model, transport, modality"
    panel = graph(
        "Realtime: WebRTC vs WebSocket",
        "Time to first token (text) or first audio of realtime probes, p50 dashed and p95 solid, per "
        "model, transport and modality (from modelwatch_probe_info). A WebRTC probe makes the call "
        "as a browser does (signalling, ICE, DTLS, data channel, audio as RTP: its first audio is "
        "the first audible RTP packet); a WebSocket probe holds a server-side session. Put the two "
        "transports of one model side by side: a gap that opens is the transport, not the model.",
        "s", [query(q.quantile(0.5, "ttft", "$__rate_interval", by=by, extra=['kind="realtime"'], join=join),
                    "{{model}} {{transport}} {{modality}} p50", ref="A"),
              query(q.quantile(0.95, "ttft", "$__rate_interval", by=by, extra=['kind="realtime"'], join=join),
                    "{{model}} {{transport}} {{modality}} p95", ref="B")],
        span=span, height=9)
    return parts.dashed_query(panel.thresholds(thresholds("green", *FIRST_AUDIO_THRESHOLDS)), "A")


def webrtc_phases(q: ProbeQueries, *, span: int = 12) -> timeseries.Panel:
    """The last WebRTC call's phases: signal, ice, dtls, channel (seconds from its start)."""
    phases = 'phase=~"signal|ice|dtls|channel"'
    expr = f"max by ({q.by}, phase) (modelwatch_probe_phase_seconds{q.sel(phases)})"
    panel = graph(
        "WebRTC call phases",
        "Seconds from the start of the last WebRTC probe (transport: webrtc) to each phase it "
        "reached: signal (the SDP answer), ice (connectivity), dtls (keys agreed), channel (the "
        "oai-events data channel open). A phase missing from a probe that failed is where it "
        "failed (its error_code names it too); a phase that grows is where calls slow down.",
        "s", [query(expr, "{{target}} {{phase}}")], span=span, height=9)
    return panel.thresholds(thresholds("green", *FIRST_AUDIO_THRESHOLDS))
