"""Simulator scenarios: per-model behaviour loaded from a strict YAML file.

A scenario says, for each model name, how the simulator answers: how long it
waits, how many tokens it streams, and which failures it injects. Unknown keys
anywhere are errors, so a typo cannot silently turn a fault off. A file is read
like a config file (``yamlfile``: at most 1 MiB, duplicate keys refused) and
every problem is reported at once, one ``file: key.path: reason`` a line
(``validation``), an unknown key with the known key it is closest to.

Top-level keys
    seed            int, default 1. Seeds the RNG, so request ids, error draws and
                    jitter are the same on every run with the same request order
                    (one shared sequence: other models' traffic shifts which draw
                    a model gets; ``error_draws: spread`` takes a model out of it).
    keys            list of accepted API keys, default []. An empty list accepts
                    any non-empty key except ones starting with ``sk-bad``, so tests
                    can provoke a 401 without listing keys.
    models          mapping of model name -> behaviour block (below).
    default         behaviour block for names not in ``models``; null (the
                    default) answers them with 404 ``model_not_found``.
    model_list      behaviour block for the model-list endpoints (``GET
                    /v1/models`` and the like); only ``error``, ``errors`` and
                    ``outages`` apply, answered in the caller's dialect
                    (OpenAI, Anthropic or Google bodies). Default: always lists.

Behaviour block keys (all optional)
    ttfb_ms         0. Delay from request receipt to the response headers.
    ttft_ms         150. Delay from request receipt to the first non-empty
                    content chunk; includes ``ttfb_ms``, so it may not be smaller.
    jitter_ms       0. Uniform +/- jitter added to ``ttft_ms`` (never below ttfb).
    inter_token_ms  15. Gap between content chunks.
    tokens          8. Number of content chunks ("OK", then words).
    finish_reason   stop | length | content_filter. Default stop.
    errors          {error_kind: probability}; one draw per request, kinds
                    tried in file order; probabilities must sum to <= 1.
    error_draws     seeded | spread. Default seeded: each request's ``errors``
                    draw comes from the shared seeded RNG, so a model with 18%
                    errors can still answer 15 in a row. spread: the model's n-th
                    request (counted per model name since the simulator started)
                    draws frac(n x 0.618...) (golden ratio) instead, a
                    low-discrepancy sequence: every run of requests gets each kind
                    close to its share, the same on every run whatever else is
                    asked (18% errors: the 5th request fails, then one in every
                    3 to 8). The demo's flaky model uses it.
    error           one error kind for every request (beats ``errors``).
    outages         [{every_s, for_s, error}]: during [k*every_s, k*every_s+for_s)
                    of simulator uptime every request gets ``error`` (beats all).
    midstream_error_after  N: after N content chunks send a ``data:`` error
                    event (shape per ``error_shape``) and end without [DONE].
    disconnect_after       N: after N content chunks reset the TCP connection.
    disconnect_style  reset | close. Default reset (TCP RST); close ends the
                    connection with a FIN in the middle of the chunked body, so
                    the client sees the body end short of its framing (what a
                    proxy that gives up on its upstream does).
    interrupt_after N: Chat Completions: after N content chunks send
                    ``data: [DONE]`` without any ``finish_reason`` chunk and
                    end, as llama-cpp-python (0.3) does when another request
                    interrupts a running stream. Other streams just end there.
    stall_after     N: after N content chunks go silent for ``stall_ms``
                    (null = until the client gives up), then carry on.
    stall_ms        length of the stall; only valid with ``stall_after``.
    malformed_after N: after N content chunks send ``data: {not json``, then
                    carry on normally.
    keepalive_every_ms  send ``: keep-alive`` SSE comments this often between
                    the headers and the first content chunk.
    usage_mode      include_usage (usage chunk only when the request sets
                    stream_options.include_usage) | none | always_final (usage on
                    the final chunk regardless) | x_groq (usage inside
                    ``x_groq.usage`` of the final chunk). Default include_usage.
    error_shape     openai | openai_numeric_code | vllm_flat | gemini_array |
                    mistral_detail: the body layout of injected errors.
    done            true. Send ``data: [DONE]`` at the end of a stream.
    thinking_tokens 0. Anthropic Messages: send a thinking block of N
                    ``thinking_delta`` events (spread between the headers and
                    ``ttft_ms``) and a ``signature_delta`` before the text block,
                    as a reasoning model does; they count as output tokens and
                    against ``max_tokens``, never as the first token.
                    Gemini REST reads it too: N ``thought: true`` parts before
                    the text (none when the request sets ``thinkingBudget: 0``),
                    counted in ``thoughtsTokenCount``.
                    OpenAI Chat Completions and Responses read it as the
                    reasoning tokens of a reasoning model: counted in
                    ``completion_tokens_details.reasoning_tokens`` /
                    ``output_tokens_details.reasoning_tokens`` (and in the output
                    total and against the output cap, so a small cap can leave
                    no text), unless the request sets effort ``none`` or
                    ``minimal`` (``reasoning_effort``, ``reasoning.effort``, or
                    OpenRouter's ``reasoning: {enabled: false}``).
    reasoning_ms    0. OpenAI Chat Completions and Responses: time the model
                    reasons before its first content, added to ``ttft_ms``
                    (and to ``injected_ttft_s``) unless the request sets effort
                    ``none`` or ``minimal``. A Responses stream shows it as a
                    ``reasoning`` output item (with summary text deltas when the
                    request sets ``reasoning.summary``) before the message.
    reasoning_field reasoning | reasoning_content. Chat Completions: stream the
                    ``thinking_tokens`` reasoning as ``delta.reasoning``
                    (Ollama, OpenRouter) or ``delta.reasoning_content``
                    (DeepSeek, vLLM) chunks spread over the reasoning time,
                    before any ``delta.content``. Default: not streamed (OpenAI),
                    or ``reasoning`` under ``dialect: ollama``.
    error_framing   json | sse. Chat Completions: ``sse`` sends an injected
                    error's JSON body as one SSE event (``data: {...}``, then a
                    blank line, ``Content-Type: text/event-stream``) with the
                    error status, as some gateways do. Default json.
    dialect         openai | ollama | litellm. Chat Completions: ``litellm``
                    answers like LiteLLM proxy 1.x in front of the model: an
                    ``x-litellm-call-id`` header instead of ``x-request-id``,
                    errors as ``{"error": {"message": "litellm.<Class>: ...",
                    "type": "None", "param": null, "code": "<status>"}}``, and
                    ``overloaded`` as its router's 429 "No deployments available
                    for selected model" (every deployment in cooldown).
                    ``ollama`` answers like
                    Ollama's ``/v1``: any (or no) bearer key, errors as
                    ``{"error": {message, type, param: null, code: null}}`` with
                    type ``invalid_request_error`` (400), ``not_found_error``
                    (404, ``model "x" not found, try pulling it first``) or
                    ``api_error``; only ``max_tokens`` caps the output
                    (``max_completion_tokens`` is ignored); fingerprint
                    ``fp_ollama``; ids ``chatcmpl-<0..998>``.
    raw_error_after N: Gemini REST only: after N content chunks write a
                    pretty-printed JSON error (500 INTERNAL) into the stream
                    without SSE framing, as Google sometimes does, then end.

Realtime keys (OpenAI Realtime over WebSocket, ``openai_realtime``). There
``ttfb_ms`` is the wait from the upgrade request to ``session.created``,
``ttft_ms`` (+ ``jitter_ms``) the wait from a ``response.create`` to its first
output delta, ``tokens`` the text or transcript deltas, ``inter_token_ms``
their gap; ``finish_reason: length`` or ``content_filter`` ends responses
``incomplete``; ``error``/``errors``/``outages`` refuse the handshake with the
chat status and body, except ``content_blocked``, which ends every response
``incomplete`` with reason ``content_filter``. The SSE-only keys (midstream,
disconnect, stall, malformed, keep-alive, usage_mode, done) do not apply.
``fail_response_with`` and ``error_event`` also apply to the Responses API
(``openai_responses``): a ``response.failed`` with that code, or a standalone
``error`` event, where the first delta was due.
    realtime_mode   ga | beta | beta_retired. Default ga: the ``OpenAI-Beta:
                    realtime=v1`` header selects beta shapes, else GA. beta: beta
                    shapes always (a pre-GA server). beta_retired: the beta
                    header gets an ``error`` beta_api_shape_disabled and close
                    4000; without it GA.
    auth_failure_style  http_401 | error_then_close | close_only: a refused key
                    gets HTTP 401, or 101 + ``error`` invalid_api_key + close
                    1008, or 101 + close 1000 without an event. Default http_401.
    fail_response_with  an error code (model_not_found, insufficient_quota,
                    rate_limit_exceeded, server_error, ...): every response ends
                    ``failed`` with that ``status_details.error``, no output and
                    zero usage.
    error_event     an error code (session_expired, server_error, ...) sent as
                    an ``error`` event instead of each response.
    close_code      close the socket with this code (1000-4999, not 1005, 1006
                    or 1015) after ``close_after_events`` server events, or by
                    default where the first delta of a response was due (right
                    after the ``error_event`` if one is set).
    close_reason    "" (default). Reason text of that close frame (<= 123 bytes).
    close_after_events  N: close after N server events (needs close_code).
    drop_after_deltas   N: after N output deltas abort the TCP connection with
                    no close frame (the client sees 1006).
    ignore_client_after N: after N client frames stop reading, send the
                    ``error_event`` if set and close with ``close_code`` (1011).
    session_max_s   after this many seconds send ``error`` session_expired and
                    close 1000.
    audio_ms        600. Audio per response in audio modality, sent as base64
                    PCM16 24 kHz (a quiet 400 Hz tone), paced in real time.
    audio_chunk_ms  100. Audio per ``response.output_audio.delta``.
    legacy_event_names  false. In GA shapes, name the text/audio/transcript
                    delta and done events the beta way (a reported live quirk).

WebRTC keys (OpenAI Realtime over WebRTC, ``openai_webrtc``: ``POST
/v1/realtime/calls`` and ``/v1/realtime/client_secrets``, PROTOCOLS.md §3).
A call runs the realtime session above over its ``oai-events`` data channel,
GA shapes only, so the realtime keys apply with these meanings: ``ttfb_ms`` is
the wait from the call request to ``session.created`` (sent once the channel
is open); ``error``/``errors``/``outages`` refuse the signalling requests
(client secrets and calls; each request draws) with the handshake's statuses
and bodies; ``ttft_ms`` (+ ``jitter_ms``) runs from a ``response.create`` to
the first text delta, or to the first audible RTP packet of an audio answer
(``audio_ms`` of the tone as 48 kHz Opus, digital silence before and after
it; no ``response.output_audio.delta`` events); ``drop_after_deltas`` ends
the call abruptly (as ``kill_peer`` does), every other session ending hangs
the call up. ``realtime_mode``, ``auth_failure_style``
and ``legacy_event_names`` do not apply.
    webrtc_fault    no_candidates | no_datachannel | no_media |
                    events_without_audio | kill_peer | dtls_fail. Default none.
                    no_candidates: the SDP answer has no ``a=candidate`` line
                    and the server's ICE agent is shut at once, so ICE never
                    connects. no_datachannel: ICE and DTLS connect but the
                    server never starts SCTP, so ``oai-events`` never opens
                    (and no event is ever sent). no_media: no RTP packet at all
                    (the events still flow, ``output_audio_buffer.*``
                    included). events_without_audio: audio answers run their
                    events but the track sends only silence (for turns from
                    ``faults_from_turn``). kill_peer: the server's ICE sockets
                    are closed at ``kill_peer_after_ms`` with no DTLS alert
                    and no SCTP ABORT: the client sees a peer that went
                    silent. dtls_fail: the answer's ``a=fingerprint`` is
                    corrupted, so the client's DTLS check of the server's
                    certificate fails.
    kill_peer_after_ms  0. With ``webrtc_fault: kill_peer``: 0 kills the peer
                    right after the first ``response.create`` arrives (before
                    ``response.created``); N > 0 kills it N ms after
                    ``session.created`` was sent.
    media_stops_after_ms  N: an audio answer's RTP stops for good N ms after
                    its first audible packet was due (no packet at all from
                    then on, silence included); the events carry on (for turns
                    from ``faults_from_turn``).

Conversation and barge-in keys (a conversation's turns: in an OpenAI Realtime
session the t-th ``response.create`` is turn t; in a Gemini Live session the
t-th user turn, ended by ``clientContent.turnComplete``, ``realtimeInput.text``,
``activityEnd`` or ``audioStreamEnd``; a REST request (Chat Completions and
Azure, Responses, Anthropic Messages, Gemini REST) is the turn of the number of
user messages it carries, at least 1, since a stateless conversation resends
its history: ``messages`` / ``input`` / ``contents``, where a Gemini content
without a role counts as the user's):
    turn_ttft_ms    0. Extra first-token wait per turn: turn t waits ``ttft_ms``
                    (+ jitter) + max(0, t - ``turn_ttft_after``) x turn_ttft_ms,
                    from its ``response.create`` / the end of its user turn /
                    the request. Also in each REST entry's ``injected_ttft_s``.
    turn_ttft_after 0. The turns that do not grow yet (the default grows from
                    turn 1; 1 keeps turn 1 at plain ``ttft_ms``).
    faults_from_turn  1. The response faults apply from this turn on; earlier
                    turns answer normally. REST: ``error``/``errors``/``outages``
                    (``content_blocked`` included) and the stream faults
                    (``midstream_error_after``, ``disconnect_after``,
                    ``interrupt_after``, ``stall_after``, ``malformed_after``,
                    ``raw_error_after``, ``fail_response_with``,
                    ``error_event``). An earlier request still takes its seeded
                    draw on arrival (so the RNG sequence does not depend on this
                    key) but is not counted as one of the model's requests for
                    ``error_draws: spread``. Realtime: ``fail_response_with``,
                    ``error_event``, ``close_code`` where the first delta was due,
                    ``drop_after_deltas`` (counting only deltas of turns from K),
                    ``content_blocked`` and ``audio_after_cancel``. Gemini Live:
                    ``close_code`` at the first output, ``drop_after_deltas`` (same
                    count) and ``content_blocked``. Handshake errors, ``setup``
                    failures and the session-wide faults (``close_after_events``,
                    ``ignore_client_after``, ``session_max_s``, ``goaway_after_s``)
                    are not turn faults and keep applying from the start.
    cancel_ms       0. Realtime: after ``response.cancel`` the response streams
                    on for this long (a real server's output in flight), then
                    stops and sends ``response.done`` status ``cancelled``
                    (``status_details`` {type: cancelled, reason:
                    client_cancelled}) with the usage of what was sent. A
                    response that ends on its own meanwhile ends ``completed``.
    audio_after_cancel  0. Realtime, audio responses: right after that cancelled
                    ``response.done`` send N more audio deltas of the cancelled
                    response (the fault a barge-in probe must catch).
The Realtime ``conversation.item.truncate`` {item_id, content_index,
audio_end_ms} is answered ``conversation.item.truncated`` for an assistant audio
item; an unknown item, a text or user item, another content index or an
``audio_end_ms`` past the audio sent ("Audio content of Xms is already shorter
than Yms") get an ``error`` ``invalid_value``.

Gemini Live keys (``gemini_live``; see its docstring for how the realtime keys
above map onto close codes there):
    goaway_after_s  after this many seconds of the session send ``goAway`` with
                    ``timeLeft`` until ``session_max_s`` (default 10 s later),
                    then close 1000 when the time is up.
    binary_frames   true. Server messages as pretty-printed JSON in binary
                    frames (what the SDK's tests feed it); false: compact JSON
                    in text frames.

Speech keys (OpenAI's ``/v1/audio/transcriptions`` and ``/v1/audio/speech``,
``openai_audio``; the Azure routes too). There ``ttfb_ms`` is the wait to the
headers, ``ttft_ms`` (+ ``jitter_ms``) to the first transcript delta, the whole
non-streamed transcription, or the first audio byte (or ``speech.audio.delta``);
``tokens`` is the number of transcript deltas and ``inter_token_ms`` the gap
between deltas or audio pieces. Speech sends ``audio_ms`` of audio in pieces of
``audio_chunk_ms``, one every ``inter_token_ms`` (faster than real time).
``error``/``errors``/``outages`` answer with the chat statuses and bodies (in
``error_shape``); ``content_blocked`` answers 200 with no text or audio; the
stream faults count deltas or audio pieces (``midstream_error_after`` in a raw
audio body is a TCP reset). ``usage_mode``, ``done``, ``dialect`` and the
realtime keys do not apply.
    transcript      "Say OK.". The text a transcription returns, split into
                    ``tokens`` pieces (at most one a character).

Error kinds: auth_error, quota_exhausted, rate_limited, overloaded,
server_error, bad_gateway, gateway_timeout, model_unavailable, bad_request,
capacity_exceeded, content_blocked. Their statuses and bodies are defined by
each protocol module (``openai_http.ERRORS`` for the OpenAI family).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelwatch.validation import Problems
from modelwatch.yamlfile import MAX_YAML_FILE_BYTES, parse_yaml, read_yaml

__all__ = [
    "ERROR_KINDS",
    "ErrorKind",
    "ModelBehaviour",
    "Outage",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
    "spread_roll",
]

ErrorKind = Literal[
    "auth_error",
    "quota_exhausted",
    "rate_limited",
    "overloaded",
    "server_error",
    "bad_gateway",
    "gateway_timeout",
    "model_unavailable",
    "bad_request",
    "capacity_exceeded",
    "content_blocked",
]
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)

RealtimeMode = Literal["ga", "beta", "beta_retired"]
WebRTCFault = Literal["no_candidates", "no_datachannel", "no_media", "events_without_audio", "kill_peer", "dtls_fail"]
AuthFailureStyle = Literal["http_401", "error_then_close", "close_only"]
UsageMode = Literal["include_usage", "none", "always_final", "x_groq"]
ErrorShape = Literal["openai", "openai_numeric_code", "vllm_flat", "gemini_array", "mistral_detail"]
ReasoningField = Literal["reasoning", "reasoning_content"]
Dialect = Literal["openai", "ollama", "litellm"]

NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def _error_code(value: str) -> str:
    # Not Field(pattern=...): the shared formatter words a pattern mismatch for config names.
    if not _ERROR_CODE.match(value):
        raise ValueError("must be an error code such as server_error (lowercase letters, digits and _)")
    return value


ErrorCode = Annotated[str, AfterValidator(_error_code)]
CloseCode = Annotated[int, Field(ge=1000, le=4999)]
# Codes a close frame may not carry (RFC 6455 7.4.1); 1006 is what drop_after_deltas is for.
_UNSENDABLE_CLOSE_CODES = (1004, 1005, 1006, 1015)

MAX_SCENARIO_BYTES = MAX_YAML_FILE_BYTES

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScenarioError(ValueError):
    """A scenario file that cannot be used: every problem, one ``file: key.path: reason`` a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Outage(BaseModel):
    """A recurring window of simulator uptime in which every request fails."""

    model_config = _STRICT

    every_s: Annotated[float, Field(gt=0)]
    for_s: Annotated[float, Field(gt=0)]
    error: ErrorKind

    @model_validator(mode="after")
    def _window_fits(self) -> Outage:
        if self.for_s > self.every_s:
            raise ValueError(f"for_s ({self.for_s:g}) must not exceed every_s ({self.every_s:g})")
        return self

    def covers(self, uptime_s: float) -> bool:
        """Whether ``uptime_s`` falls inside one of this outage's windows."""
        return uptime_s % self.every_s < self.for_s


class ModelBehaviour(BaseModel):
    """How the simulator answers requests for one model name."""

    model_config = _STRICT

    ttfb_ms: NonNegative = 0
    ttft_ms: NonNegative = 150
    jitter_ms: NonNegative = 0
    inter_token_ms: NonNegative = 15
    tokens: Count = 8
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"
    errors: dict[ErrorKind, Probability] = Field(default_factory=dict)
    error_draws: Literal["seeded", "spread"] = "seeded"
    error: ErrorKind | None = None
    outages: list[Outage] = Field(default_factory=list)
    midstream_error_after: Count | None = None
    disconnect_after: Count | None = None
    disconnect_style: Literal["reset", "close"] = "reset"
    interrupt_after: Count | None = None
    stall_after: Count | None = None
    stall_ms: NonNegative | None = None
    malformed_after: Count | None = None
    keepalive_every_ms: Annotated[float, Field(gt=0)] | None = None
    usage_mode: UsageMode = "include_usage"
    error_shape: ErrorShape = "openai"
    error_framing: Literal["json", "sse"] = "json"
    done: bool = True
    thinking_tokens: Count = 0
    reasoning_ms: NonNegative = 0
    reasoning_field: ReasoningField | None = None
    dialect: Dialect = "openai"
    raw_error_after: Count | None = None
    realtime_mode: RealtimeMode = "ga"
    auth_failure_style: AuthFailureStyle = "http_401"
    fail_response_with: ErrorCode | None = None
    error_event: ErrorCode | None = None
    close_code: CloseCode | None = None
    close_reason: str = ""
    close_after_events: Count | None = None
    drop_after_deltas: Count | None = None
    ignore_client_after: Count | None = None
    session_max_s: Annotated[float, Field(gt=0)] | None = None
    audio_ms: NonNegative = 600
    audio_chunk_ms: Annotated[float, Field(gt=0)] = 100
    legacy_event_names: bool = False
    # ---- WebRTC keys (openai_webrtc) ----
    webrtc_fault: WebRTCFault | None = None
    kill_peer_after_ms: NonNegative = 0
    media_stops_after_ms: NonNegative | None = None
    # ---- end of WebRTC keys ----
    # ---- Conversation and barge-in keys (turns of a session or of a resent history) ----
    turn_ttft_ms: NonNegative = 0
    turn_ttft_after: Count = 0
    faults_from_turn: Annotated[int, Field(ge=1)] = 1
    cancel_ms: NonNegative = 0
    audio_after_cancel: Count = 0
    # ---- end of conversation and barge-in keys ----
    goaway_after_s: Annotated[float, Field(gt=0)] | None = None
    binary_frames: bool = True
    # ---- Speech keys (openai_audio) ----
    transcript: str = "Say OK."
    # ---- end of speech keys ----

    @model_validator(mode="after")
    def _consistent(self) -> ModelBehaviour:
        if self.ttfb_ms > self.ttft_ms:
            raise ValueError(f"ttfb_ms ({self.ttfb_ms:g}) must not exceed ttft_ms ({self.ttft_ms:g})")
        total = sum(self.errors.values())
        if total > 1 + 1e-9:
            raise ValueError(f"errors probabilities sum to {total:g}, more than 1")
        if self.stall_ms is not None and self.stall_after is None:
            raise ValueError("stall_ms has no effect without stall_after")
        self._check_close()
        if self.kill_peer_after_ms and self.webrtc_fault != "kill_peer":
            raise ValueError("kill_peer_after_ms has no effect without webrtc_fault: kill_peer")
        return self

    def _check_close(self) -> None:
        """The realtime close knobs must make sense together."""
        if self.close_code in _UNSENDABLE_CLOSE_CODES:
            raise ValueError(f"close_code {self.close_code} cannot be sent in a close frame"
                             + (" (use drop_after_deltas for 1006)" if self.close_code == 1006 else ""))
        if self.close_after_events is not None and self.close_code is None:
            raise ValueError("close_after_events has no effect without close_code")
        if self.close_reason and self.close_code is None and self.ignore_client_after is None:
            raise ValueError("close_reason has no effect without close_code or ignore_client_after")
        if len(self.close_reason.encode()) > 123:
            raise ValueError("close_reason is longer than the 123 bytes a close frame can carry")
        if (self.goaway_after_s is not None and self.session_max_s is not None
                and self.goaway_after_s >= self.session_max_s):
            raise ValueError(f"goaway_after_s ({self.goaway_after_s:g}) must come before "
                             f"session_max_s ({self.session_max_s:g})")

    def injected_error(self, uptime_s: float, roll: float, nth: int = 0) -> str | None:
        """The error kind for one request, or None for a normal answer.

        Outages win over ``error``, which wins over the random ``errors``;
        ``roll`` is a uniform draw in [0, 1) made by the caller from the seeded RNG.
        Under ``error_draws: spread`` the draw is ``spread_roll(nth)`` instead, ``nth``
        being this model's request count (1 for its first request).
        """
        if self.error_draws == "spread":
            roll = spread_roll(nth)
        for outage in self.outages:
            if outage.covers(uptime_s):
                return outage.error
        if self.error is not None:
            return self.error
        threshold = 0.0
        for kind, probability in self.errors.items():
            threshold += probability
            if roll < threshold:
                return kind
        return None

    def first_token_delay_ms(self, jitter_roll: float, turn: int | None = None) -> float:
        """``ttft_ms`` plus jitter from a uniform draw in [0, 1), never before ttfb, plus turn ``turn``'s growth."""
        jitter = (2 * jitter_roll - 1) * self.jitter_ms
        return max(self.ttfb_ms, self.ttft_ms + jitter) + self.turn_growth_ms(turn)

    def turn_growth_ms(self, turn: int | None) -> float:
        """The extra wait of conversation turn ``turn``: ``turn_ttft_ms`` a turn past ``turn_ttft_after``.

        ``turn`` counts from 1; None (no turn, e.g. a session's handshake) adds nothing.
        """
        if turn is None:
            return 0.0
        return max(0, turn - self.turn_ttft_after) * self.turn_ttft_ms

    def faulty_turn(self, turn: int | None) -> bool:
        """Whether the response faults apply to turn ``turn`` (None: not a turn, so they do)."""
        return turn is None or turn >= self.faults_from_turn

    def for_turn(self, turn: int | None) -> ModelBehaviour:
        """This behaviour as it answers turn ``turn``: before ``faults_from_turn``, without its faults."""
        if self.faulty_turn(turn):
            return self
        return self.model_copy(update=_NO_TURN_FAULTS)

    def may_fail(self) -> bool:
        """Whether some request could draw an injected error kind from this behaviour."""
        return bool(self.error is not None or self.outages or any(self.errors.values()))


# What ``for_turn`` turns off before ``faults_from_turn``: every error draw and per-response fault.
_NO_TURN_FAULTS: dict[str, Any] = {
    "error": None, "errors": {}, "outages": [], "midstream_error_after": None, "disconnect_after": None,
    "interrupt_after": None, "stall_after": None, "stall_ms": None, "malformed_after": None,
    "raw_error_after": None, "fail_response_with": None, "error_event": None, "audio_after_cancel": 0,
    "media_stops_after_ms": None,
}


def spread_roll(nth: int) -> float:
    """The ``nth`` point of the golden-ratio sequence in [0, 1): evenly spread for every prefix."""
    return (nth * _GOLDEN_FRACTION) % 1.0


_GOLDEN_FRACTION = (5 ** 0.5 - 1) / 2  # 0.618...: its multiples mod 1 fill [0, 1) most evenly


class Scenario(BaseModel):
    """A whole simulator scenario: seed, accepted keys and per-model behaviour."""

    model_config = _STRICT

    seed: int = 1
    keys: list[str] = Field(default_factory=list)
    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    default: ModelBehaviour | None = None
    model_list: ModelBehaviour | None = None

    def behaviour_for(self, model: str) -> ModelBehaviour | None:
        """The behaviour block for ``model``, the default block, or None (unknown)."""
        return self.models.get(model, self.default)

    def accepts_key(self, key: str) -> bool:
        """Whether an API key passes the scenario's key policy."""
        if self.keys:
            return key in self.keys
        return bool(key) and not key.startswith("sk-bad")


_KNOWN_KEYS = sorted({*Scenario.model_fields, *ModelBehaviour.model_fields, *Outage.model_fields})


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file, raising ScenarioError with every problem."""
    problems = Problems()
    return _validated(read_yaml(Path(path), problems, MAX_SCENARIO_BYTES), str(path), problems)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario YAML text; ``source`` names the file in error messages."""
    problems = Problems()
    return _validated(parse_yaml(text, source, problems), source, problems)


def _validated(data: dict | None, source: str, problems: Problems) -> Scenario:
    """The scenario in ``data``; None (unreadable) or any invalid key raises every problem at once."""
    if data is not None:
        try:
            return Scenario.model_validate(data)
        except ValidationError as exc:
            problems.from_validation(source, "", exc, known_keys=_KNOWN_KEYS, key_marker=False)
    raise ScenarioError(problems.lines)
