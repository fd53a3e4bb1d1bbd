"""What every prober shares: the phase clock, per-phase budgets and the runner.

A prober is ``async def probe(job, http, m) -> None``. It fills the
:class:`Measurement` ``m`` (phases, tokens, request id), moves ``m.phase``
forward as it goes, and raises :class:`~modelwatch.outcomes.ProbeFailure`
for a classified failure. :func:`run_probe` owns everything generic: the
start time, the budgets, turning timeouts, transport errors and surprises into
outcomes, redaction, and the final :class:`~modelwatch.outcomes.ProbeResult`.
A probe never raises past it and is never retried.

Exceptions a prober may let through, and what they become::

    ProbeFailure                       -> its own outcome
    TimeoutError (a budget expired)    -> timeout, error_code = the phase waited for
    aiohttp.ClientConnectorError       -> connect_error (refused, dns, tls, ...)
    aiohttp.ServerDisconnectedError,
    ClientPayloadError, ConnectionError -> connect_error before headers, else protocol_error
    any other Exception                -> protocol_error "internal" (logged at debug)

except a fault of our own, which is raised as :class:`~modelwatch.outcomes.LocalFault`
instead of becoming a provider outcome: no file descriptor left for the socket
(EMFILE/ENFILE), or a certificate that failed verification while our trust store
holds no CA at all (no CA file, no CA directory: ``SSL_CERT_FILE`` and
``SSL_CERT_DIR`` naming missing paths, or no ca-certificates installed).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import (LocalFault, Outcome, ProbeFailure, ProbeResult, StageTiming, TurnTiming,
                                 storable_text)
from modelwatch.pricing import probe_cost_usd
from modelwatch.probes.http import read_body, request_id_from
from modelwatch.secrets import redact, short_error

log = logging.getLogger("modelwatch.probe")

PHASES = ("connect", "ttfb", "ttft", "total")
# Phases a timeout names even when it was the total budget that ran out, for what never came:
# barge-in's acknowledgement of response.cancel, and a WebRTC call's connection phases.
OWN_NAME_PHASES = frozenset({"interrupt", "signal", "ice", "dtls", "channel"})
DEFAULT_CONNECT_TIMEOUT = 10.0


class Measurement:
    """Phase timestamps and facts a prober collects, relative to the probe start."""

    __slots__ = ("start", "phase", "connect_s", "ttfb_s", "ttft_s", "duration_s", "http_status",
                 "input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens",
                 "request_id", "bytes_read", "byte_limit", "budget", "websocket", "handshake_body",
                 "stage", "stages", "turns", "interrupt_s", "cost_usd", "parent", "budget_phase",
                 "first_output_ends_ttft", "signal_s", "ice_s", "dtls_s", "channel_s", "_scope")

    def __init__(self, budget: Budget, byte_limit: int) -> None:
        self.start = time.perf_counter()
        self.phase = "connect"
        self.connect_s = self.ttfb_s = self.ttft_s = self.duration_s = None
        self.http_status: int | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.input_audio_tokens: int | None = None
        self.output_audio_tokens: int | None = None
        self.request_id: str | None = None
        self.bytes_read = 0
        self.byte_limit = byte_limit
        self.budget = budget
        self.websocket = False
        self.handshake_body: bytes | None = None
        # A probe of several steps (a voice chain's stages, a conversation's turns) names the step
        # it is in: every failure's error_code is then prefixed with it ("tts:rate_limit_exceeded").
        self.stage: str | None = None
        self.stages: list[StageTiming] = []
        self.turns: list[TurnTiming] = []
        self.interrupt_s: float | None = None
        self.cost_usd: float | None = None  # set by probes priced stage by stage; else from the tokens
        self.parent: Measurement | None = None
        self.budget_phase = "connect"  # the phase whose deadline bounds the probe now
        self.first_output_ends_ttft = False  # a step whose first output is the probe's ttft
        self.signal_s = self.ice_s = self.dtls_s = self.channel_s = None  # WebRTC's phases
        self._scope: asyncio.Timeout | None = None

    def child(self, first_output_ends_ttft: bool = False) -> Measurement:
        """A clock for one step of the probe (a stage, a turn), starting now.

        It shares the probe's budget and byte cap and times the step from its own
        start. Only the probe itself moves the deadline: a step waiting for headers
        makes a timeout say ``ttfb``; past them, the phase whose budget runs. A step
        whose first output is the probe's first token (a chain's first audio, a
        conversation's first turn) hands the probe on to its total budget there.
        """
        step = Measurement(self.budget, self.byte_limit)
        step.parent = self
        step.first_output_ends_ttft = first_output_ends_ttft
        if self.budget_phase != "connect":  # the first connection is the trace's: connect, then ttfb
            step.enter("ttfb")
        return step

    def took_step(self, step: Measurement) -> None:
        """A step ended: its status and request id are the probe's latest (on failure, the failing step's)."""
        self.http_status = step.http_status or self.http_status
        self.request_id = step.request_id or self.request_id

    def elapsed(self) -> float:
        """Seconds since the probe started."""
        return time.perf_counter() - self.start

    def enter(self, phase: str) -> None:
        """Start waiting for ``phase``: its budget now bounds the wait."""
        self.phase = phase
        if self.parent is not None:
            if phase == "total" and self.first_output_ends_ttft:
                self.parent.enter("total")
            budget = self.parent.budget_phase
            self.parent.phase = phase if phase in ("connect", "ttfb") else (
                "ttft" if budget in ("connect", "ttfb") else budget)
            return
        self.budget_phase = phase
        if self._scope is not None:
            self._scope.reschedule(self.budget.deadline(phase))

    def finishing(self, grace_s: float) -> None:
        """The outcome is decided: allow ``grace_s`` more for tidying up (closing a socket)."""
        self.phase = "close"
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time() + grace_s)


class Budget:
    """Per-phase deadlines on the loop clock, each capped by the total timeout."""

    __slots__ = ("_start", "_limits", "total")

    def __init__(self, job: ProbeJob, loop_start: float) -> None:
        p = job.probe
        self.total = p.timeout
        self._start = loop_start
        connect = p.connect_timeout or min(DEFAULT_CONNECT_TIMEOUT, p.timeout)
        first = p.ttft_timeout or p.timeout
        # REST phases, then the realtime stages that must also come before the first token.
        self._limits = {"connect": connect, "ttfb": first, "ttft": first, "total": p.timeout,
                        "session": first, "configure": first,
                        # WebRTC: everything before the session's first event comes before the first token
                        "signal": first, "ice": first, "dtls": first, "channel": first}

    def deadline(self, phase: str) -> float:
        """Loop time by which ``phase`` must be reached."""
        return self._start + min(self._limits.get(phase, self.total), self.total)


Prober = Callable[[ProbeJob, aiohttp.ClientSession, Measurement], Awaitable[None]]

# Goodbyes a probe leaves running once its outcome is decided (a WebSocket's close, a WebRTC
# call's hangup), held here until they finish; a one-shot run waits for them (goodbyes()).
_goodbyes: set[asyncio.Task] = set()


def say_goodbye(work: Awaitable[None]) -> None:
    """Run ``work`` in the background: the probe has already ended and must not wait for it."""
    task = asyncio.ensure_future(work)
    _goodbyes.add(task)
    task.add_done_callback(_goodbyes.discard)


async def goodbyes(timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) for the goodbyes still running, before a one-shot run's loop
    ends: ``modelwatch probe`` must not leave a call open at the provider behind it."""
    if _goodbyes:
        await asyncio.wait(list(_goodbyes), timeout=timeout_s)


async def run_probe(job: ProbeJob, http: aiohttp.ClientSession, prober: Prober) -> ProbeResult:
    """Run one probe attempt to its end and classify how it ended."""
    ts = time.time()
    loop = asyncio.get_running_loop()
    m = Measurement(Budget(job, loop.time()), job.probe.max_response_bytes)
    outcome, code, message = Outcome.OK, None, None
    token = _current.set(m)
    try:
        async with asyncio.timeout_at(m.budget.deadline("connect")) as scope:
            m._scope = scope
            await prober(job, http, m)
    except ProbeFailure as exc:
        outcome, code, message = exc.outcome, exc.error_code, exc.message
        m.http_status = exc.http_status or m.http_status
    except TimeoutError:
        if m.phase == "close":  # the result was complete; only the goodbye was slow
            return _result(job, ts, m, outcome, code, message)
        # Before any response header the phase names what never came, even when it was the total
        # budget that ran out: "ttfb" tells a dead server from a slow answer.
        before_headers = m.phase in ("connect", "ttfb")
        phase = "total" if not before_headers and m.phase not in OWN_NAME_PHASES \
            and loop.time() >= m.budget.deadline("total") - 1e-3 else m.phase
        outcome, code = Outcome.TIMEOUT, phase
        message = f"no {phase} within its budget" if phase != "total" else f"probe exceeded {job.probe.timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - a probe must never raise past the runner
        fault = local_fault(exc)
        if fault is not None:
            raise fault from exc
        outcome, code, message = classify_transport_error(exc, m)
    finally:
        m._scope = None
        _current.reset(token)
    if m.stage and outcome is not Outcome.OK:
        code = f"{m.stage}:{code or outcome.value}"
    return _result(job, ts, m, outcome, code, message)


def _result(job: ProbeJob, ts: float, m: Measurement, outcome: Outcome, code: str | None,
            message: str | None) -> ProbeResult:
    return ProbeResult(
        ts=ts, target=job.target, provider=job.provider_name, model=job.model, kind=job.probe.kind,
        outcome=outcome.value, http_status=m.http_status, error_code=clean_code(code),
        error=short_error(storable_text(str(message))) if message else None,
        connect_s=round_s(m.connect_s), ttfb_s=round_s(m.ttfb_s), ttft_s=round_s(m.ttft_s),
        duration_s=round_s(m.duration_s) if outcome is Outcome.OK else round_s(m.elapsed()),
        input_tokens=m.input_tokens, output_tokens=m.output_tokens,
        input_audio_tokens=m.input_audio_tokens, output_audio_tokens=m.output_audio_tokens,
        request_id=clean_request_id(m.request_id), location=job.location,
        cost_usd=m.cost_usd if m.cost_usd is not None else probe_cost_usd(
            job.price, m.input_tokens, m.output_tokens, m.input_audio_tokens, m.output_audio_tokens),
        interrupt_s=round_s(m.interrupt_s), stages=tuple(m.stages), turns=tuple(m.turns),
        signal_s=round_s(m.signal_s), ice_s=round_s(m.ice_s), dtls_s=round_s(m.dtls_s),
        channel_s=round_s(m.channel_s),
    )


_CODE_JUNK = re.compile(r"[^a-z0-9_.:-]+")
MAX_CODE_LEN = 64


def clean_code(code: str | None) -> str | None:
    """An ``error_code`` safe to store and log: a short token, whatever text a server put there.

    Some codes come from provider text (a finish reason, a close reason); a
    hostile server could put anything there, a key fragment included.
    """
    if not code:
        return None
    # Cut (with a margin) before redacting: the cost stays bounded, and a key cut at the
    # margin leaves at most a piece beyond MAX_CODE_LEN.
    token = re.sub(r"__+", "_", _CODE_JUNK.sub("_", redact(code[:4 * MAX_CODE_LEN]).lower())).strip("_")
    return token[:MAX_CODE_LEN] or None


MAX_REQUEST_ID_LEN = 128
# C0 and C1 controls and the Unicode line breaks: a request id must stay one printable token.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_request_id(value: object) -> str | None:
    """A ``request_id`` safe to store, print and log, whatever a server sent as one.

    Probers copy it from response headers, bodies and events, which a hostile or
    careless server controls: one that echoes the key as ``x-request-id`` must
    not get it into SQLite. Controls go first (so they cannot split a key past
    redaction), then secrets, then the length cap.
    """
    if value is None:
        return None
    text = redact(_CONTROL.sub("", storable_text(str(value)[:4 * MAX_REQUEST_ID_LEN]))).strip()
    return text[:MAX_REQUEST_ID_LEN] or None


def round_s(value: float | None) -> float | None:
    """Seconds as stored: to the microsecond."""
    return None if value is None else round(value, 6)


_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def local_fault(exc: BaseException) -> LocalFault | None:
    """The fault of our own an exception stands for, or None if it may be the provider's."""
    cause: BaseException | None = exc
    for _ in range(4):  # aiohttp wraps the OSError once or twice
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno in _OUT_OF_FILES:
            return LocalFault("open_files", "modelwatch has no file descriptor left for the probe's "
                              "socket (raise LimitNOFILE)")
        if isinstance(cause, (ssl.SSLCertVerificationError, aiohttp.ClientConnectorCertificateError)) \
                and not trust_store_has_cas():
            return LocalFault("trust_store", "modelwatch's TLS trust store holds no CA certificate "
                              "(check SSL_CERT_FILE, SSL_CERT_DIR and the ca-certificates package)")
        cause = getattr(cause, "os_error", None) or getattr(cause, "certificate_error", None) \
            or cause.__cause__
    return None


@functools.cache
def trust_store_has_cas() -> bool:
    """Whether the default TLS context (the one aiohttp verifies with) can trust any CA.

    A CA file is loaded up front and counted; a CA directory (``SSL_CERT_DIR``,
    or the system's) is read lazily, certificate by certificate, so a directory
    holding any file counts as a trust store too.
    """
    try:
        if ssl.create_default_context().cert_store_stats().get("x509_ca", 0) > 0:
            return True
        capath = ssl.get_default_verify_paths().capath
        return bool(capath) and any(os.scandir(capath))
    except (ssl.SSLError, OSError):
        return False


def classify_transport_error(exc: BaseException, m: Measurement) -> tuple[Outcome, str, str]:
    """Outcome, error code and message for an exception raised below the protocol."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) or isinstance(exc, ssl.SSLError):
        return Outcome.CONNECT_ERROR, "tls", str(exc)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Outcome.CONNECT_ERROR, "dns", str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno_name = getattr(exc.os_error, "errno", None)
        code = "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "connect"
        return Outcome.CONNECT_ERROR, code, f"{exc} (errno {errno_name})"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        aiohttp.ClientOSError, ConnectionError)):
        # aiohttp's payload errors read like an HTTP status ("400, message='Not enough data to
        # satisfy transfer length header'"): say what happened in our words, name the class.
        why = type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else "")
        if m.ttfb_s is None:
            return Outcome.CONNECT_ERROR, "reset", f"connection closed before the response ({why})"
        return Outcome.PROTOCOL_ERROR, "disconnected", (
            f"connection closed mid-response after {m.bytes_read} bytes ({why})")
    if isinstance(exc, aiohttp.ClientResponseError):
        return Outcome.PROTOCOL_ERROR, "bad_response", exc.message
    log.debug("probe raised an unexpected error", exc_info=exc)
    return Outcome.PROTOCOL_ERROR, "internal", f"{type(exc).__name__}: {exc}"


# The probe the current task is running: trace callbacks run in the request's task, so
# they find it here (aiohttp's ws_connect has no per-request trace context).
_current: ContextVar[Measurement | None] = ContextVar("modelwatch_measurement", default=None)


def probe_trace() -> aiohttp.TraceConfig:
    """Hooks into every probe request: stamp ``connect_s``, keep a refused WebSocket
    upgrade's body for classification, and refuse every redirect (a key must never
    follow one to another origin)."""
    trace = aiohttp.TraceConfig()

    async def connected(session, ctx, params) -> None:  # noqa: ANN001 - aiohttp's signature
        m = _current.get()
        if m is not None and m.connect_s is None:
            m.connect_s = m.elapsed()
            if m.budget_phase == "connect":  # a probe of several steps chose its budget already
                m.enter("ttfb")

    async def responded(session, ctx, params) -> None:  # noqa: ANN001
        m = _current.get()
        if m is None or not m.websocket:
            return
        m.request_id = request_id_from(params.response.headers)
        if params.response.status != 101:
            # ws_connect drops the body of a refused upgrade; read it while we can.
            m.handshake_body = await read_body(params.response, 65536)

    async def redirected(session, ctx, params) -> None:  # noqa: ANN001
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "redirect",
                           f"HTTP {params.response.status} redirect (not followed)",
                           http_status=params.response.status)

    trace.on_connection_create_end.append(connected)
    trace.on_request_end.append(responded)
    trace.on_request_redirect.append(redirected)
    trace.freeze()
    return trace


def new_http_session(limit: int = 0) -> aiohttp.ClientSession:
    """The probe HTTP client: a fresh connection per probe, no redirects, no cookies."""
    connector = aiohttp.TCPConnector(force_close=True, limit=limit, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector, trace_configs=[probe_trace()], auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )
