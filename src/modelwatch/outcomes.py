"""The outcome taxonomy (DESIGN.md) and the result of one probe.

Every probe ends in exactly one :class:`Outcome`. Probers signal a classified
failure by raising :class:`ProbeFailure`; the common runner turns timeouts,
transport errors and anything unexpected into outcomes too, so a probe never
raises past it.
"""

from __future__ import annotations

import dataclasses
import re
from enum import StrEnum


class Outcome(StrEnum):
    """How one probe ended; the stable values of the ``outcome`` label and column."""

    OK = "ok"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    AUTH_ERROR = "auth_error"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    BAD_REQUEST = "bad_request"
    CONTENT_BLOCKED = "content_blocked"
    PROTOCOL_ERROR = "protocol_error"


# Who is usually responsible, for reports and alert routing.
ATTRIBUTION: dict[Outcome, str] = {
    Outcome.OK: "none",
    Outcome.TIMEOUT: "provider",
    Outcome.CONNECT_ERROR: "provider",
    Outcome.AUTH_ERROR: "configuration",
    Outcome.QUOTA_EXHAUSTED: "configuration",
    Outcome.RATE_LIMITED: "capacity",
    Outcome.OVERLOADED: "provider",
    Outcome.SERVER_ERROR: "provider",
    Outcome.MODEL_UNAVAILABLE: "configuration",
    Outcome.BAD_REQUEST: "configuration",
    Outcome.CONTENT_BLOCKED: "none",
    Outcome.PROTOCOL_ERROR: "provider",
}


# Provider availability counts the provider's failures among the probes it had a fair chance
# to serve: a dead key, a wrong model name or our own rate limit says nothing about its health,
# so those probes leave the denominator. The alert rules, dashboards and report all use this.
PROVIDER_OUTCOMES = frozenset(o.value for o, who in ATTRIBUTION.items() if who == "provider")
NOT_PROVIDER_JUDGED = frozenset(o.value for o, who in ATTRIBUTION.items()
                                if who in ("configuration", "capacity"))


class ProbeFailure(Exception):
    """A classified failure raised by a prober; the runner records it as the outcome."""

    def __init__(self, outcome: Outcome, error_code: str | None, message: str = "",
                 http_status: int | None = None) -> None:
        super().__init__(message or error_code or outcome.value)
        self.outcome = outcome
        self.error_code = error_code
        self.message = message
        self.http_status = http_status


class LocalFault(Exception):
    """A probe failed inside modelwatch before it reached the provider.

    The process ran out of file descriptors, or its own TLS trust store holds no
    CA: no provider outcome is true of such a probe, so it is not recorded as one
    (the daemon counts it in ``modelwatch_probes_local_failures_total``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def outcome_for_status(status: int) -> Outcome:
    """The outcome an HTTP error status means when the body says nothing more specific."""
    if status in (401, 403):
        return Outcome.AUTH_ERROR
    if status == 402:
        return Outcome.QUOTA_EXHAUSTED
    if status == 404:
        return Outcome.MODEL_UNAVAILABLE
    if status == 408:
        return Outcome.TIMEOUT
    if status in (429, 498):
        return Outcome.RATE_LIMITED
    if status in (503, 529):
        return Outcome.OVERLOADED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status >= 400:
        return Outcome.BAD_REQUEST
    return Outcome.PROTOCOL_ERROR


@dataclasses.dataclass(frozen=True, slots=True)
class StageTiming:
    """One stage of a voice chain (a row of ``probe_stages``): seconds from the stage's own start.

    ``start_s`` is when the stage's request was sent, from the probe's start; the
    other times count from there. A stage that failed keeps what it reached.
    """

    stage: str  # stt | llm | tts
    start_s: float
    ttfb_s: float | None = None
    ttft_s: float | None = None  # first transcript text, first token, first audio byte
    duration_s: float | None = None  # the stage's answer complete

    def ready_s(self) -> float | None:
        """What the stage adds to the chain's time to first audio: until its output is complete
        (stt, llm: the next stage needs all of it), or until its first audio byte (tts)."""
        return self.ttft_s if self.stage == "tts" else self.duration_s


@dataclasses.dataclass(frozen=True, slots=True)
class TurnTiming:
    """One turn of a conversation (a row of ``probe_turns``): seconds from the turn's own start."""

    turn: int  # 1-based
    start_s: float  # when the turn was sent, from the probe's start
    ttft_s: float | None = None
    duration_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


# Per-turn TTFT is exported by band of turns (DESIGN.md): the turn a band starts at, and its label.
TURN_BANDS: tuple[tuple[int, str], ...] = ((1, "1-5"), (6, "6-10"), (11, "11-20"), (21, "21-50"), (51, "51+"))


def turn_band(turn: int) -> str:
    """The ``turn_band`` label of a 1-based turn number."""
    label = TURN_BANDS[0][1]
    for first, name in TURN_BANDS:
        if turn >= first:
            label = name
    return label


@dataclasses.dataclass(slots=True)
class ProbeResult:
    """One row of ``probe_results``: field names are the column names."""

    ts: float
    target: str
    provider: str
    model: str
    kind: str
    outcome: str
    http_status: int | None = None
    error_code: str | None = None
    error: str | None = None
    connect_s: float | None = None
    ttfb_s: float | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_id: str | None = None
    location: str | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    cost_usd: float | None = None
    # The worst event-loop lag seen while the probe ran: the daemon's own delay inside the
    # timings above (None where nothing watched the loop, as in `modelwatch probe`).
    loop_lag_s: float | None = None
    # Barge-in (``interrupt_after``): seconds from response.cancel sent to its acknowledgement.
    interrupt_s: float | None = None
    # WebRTC (``transport: webrtc``), from the probe's start: SDP answer received, ICE connected,
    # DTLS done, data channel open.
    signal_s: float | None = None
    ice_s: float | None = None
    dtls_s: float | None = None
    channel_s: float | None = None
    # Not columns: rows of their own tables (probe_stages, probe_turns), keyed by the row's id.
    stages: tuple[StageTiming, ...] = ()
    turns: tuple[TurnTiming, ...] = ()

    def as_row(self) -> dict:
        """The result as a dict keyed by column name (stages and turns are not columns)."""
        return {name: getattr(self, name) for name in COLUMNS}


DETAIL_FIELDS = frozenset({"stages", "turns"})
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProbeResult) if f.name not in DETAIL_FIELDS)
STAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StageTiming))
TURN_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TurnTiming))


_SURROGATES = re.compile("[\ud800-\udfff]")


def storable_text(value: str) -> str:
    """Text that SQLite, logs and JSON all take: no lone surrogates and no NUL.

    aiohttp decodes header bytes that are not UTF-8 into surrogates, and a JSON
    body may spell lone surrogates as escapes; either would make SQLite's UTF-8
    encoding fail. Each becomes U+FFFD, so the rest of the text is kept.
    """
    if value.isascii():
        return value.replace("\x00", "")
    return _SURROGATES.sub("\ufffd", value).replace("\x00", "")
