"""The I/O shell every REST probe shares: one streamed request, and reading a body within the byte cap.

:func:`stream_request` is the whole life of a REST probe's request: POST,
stamp ``ttfb_s``, status and request id, wait for the first token, turn an
error status (or a 200 that is not a stream) into the provider's classified
failure (:class:`ErrorReading`), then read the stream with
:func:`read_stream`, stamping ``ttft_s`` and ``duration_s``. A provider
module supplies only the request (URL, headers, body), its stream decoder and
its classifier.

Stream decoders are sans-I/O. Most are fed one SSE event at a time
(:class:`EventStream`); one that frames its own bytes (Gemini writes errors
without SSE framing) is fed raw bytes (:class:`ByteStream`).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.parsing import ERROR_BODY_LIMIT, parse_body, status_failure
from modelwatch.sse import SSEDecoder

if TYPE_CHECKING:  # base imports this module (its trace reads refused upgrades' bodies)
    from modelwatch.probes.base import Measurement

Classifier = Callable[[int | None, Any], tuple[Outcome, str, str]]


class EventStream(Protocol):
    """A provider's stream decoder, fed one SSE event at a time (sans-I/O)."""

    @property
    def finished(self) -> bool:
        """The terminator arrived: nothing more is to be read."""

    def feed(self, data: str, event: str) -> bool:
        """Consume one event; True if it carried the first kind of content that counts."""

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens reported so far."""

    def verdict(self) -> ProbeFailure | None:
        """The failure the stream amounts to, or None for a success."""


class ByteStream(EventStream, Protocol):
    """A stream decoder that frames its own bytes: fed raw body bytes, ``final`` at EOF."""

    frames_bytes: bool  # True: read_stream feeds bytes, not SSE events
    text_parts: int  # content pieces so far (the first one stamps ttft_s, even if an error follows)

    def feed(self, data: bytes, final: bool = False) -> bool:  # type: ignore[override]
        """Consume body bytes; True if they carried content."""


def _never(body: Any) -> bool:
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReading:
    """How a provider's REST answers say "error" outside the stream."""

    classify: Classifier
    # A JSON body that came with status 200 instead of a stream, yet is an error (not a whole answer).
    is_error: Callable[[Any], bool] = _never
    stream_only: bool = True  # a 200 must be text/event-stream (Gemini's is not always labelled so)
    request_id_header: str = "x-request-id"  # the provider's own header, tried first
    request_id_in_body: bool = False  # an error body's ``request_id`` stands in for a dropped header
    byte_capped: bool = False  # the error body is read within the probe's byte cap too


async def stream_request(http: aiohttp.ClientSession, m: Measurement, request: tuple[str, dict[str, str], bytes],
                         stream: EventStream, errors: ErrorReading) -> None:
    """One streamed POST, timed phase by phase: headers, first content, end of stream."""
    url, headers, body = request
    async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        m.ttfb_s = m.elapsed()
        m.http_status = resp.status
        m.request_id = request_id_from(resp.headers, errors.request_id_header)
        m.enter("ttft")
        if resp.status != 200 or (errors.stream_only
                                  and "text/event-stream" not in resp.headers.get("Content-Type", "")):
            await refuse(resp, m, errors)
        await read_stream(resp, m, stream)


async def refuse(resp: aiohttp.ClientResponse, m: Measurement, errors: ErrorReading) -> None:
    """Raise the failure an error status, or a 200 that is not an event stream, amounts to."""
    limit = min(ERROR_BODY_LIMIT, m.byte_limit) if errors.byte_capped else ERROR_BODY_LIMIT
    body = parse_body(await read_body(resp, limit))
    if errors.request_id_in_body and m.request_id is None and isinstance(body, dict) \
            and isinstance(body.get("request_id"), str):
        m.request_id = body["request_id"]  # a proxy may drop the header; the body keeps it
    if 300 <= resp.status < 400:
        raise ProbeFailure(Outcome.PROTOCOL_ERROR, "redirect", f"HTTP {resp.status} redirect (not followed)")
    if resp.status != 200:
        raise status_failure(errors.classify(resp.status, body), resp.status, resp.request_info)
    if errors.is_error(body):
        raise ProbeFailure(*errors.classify(None, body))
    raise ProbeFailure(Outcome.PROTOCOL_ERROR, "not_event_stream",
                       f"expected text/event-stream, got {resp.headers.get('Content-Type')}")


async def read_stream(resp: aiohttp.ClientResponse, m: Measurement, stream: EventStream) -> None:
    """Read a streamed answer to its terminator (or EOF), within the byte cap.

    ``ttft_s`` is when the read that completed the first content returned;
    ``duration_s`` when the terminator's (or EOF's) did. Tokens are taken in
    any case: a stream's usage is reported even when the stream then fails.
    """
    body = BodyReader(resp, m)
    decoder = None if getattr(stream, "frames_bytes", False) else SSEDecoder()
    try:
        while not stream.finished:
            chunk = await body.read()
            now = body.arrived
            if decoder is None:  # the stream frames its own bytes, and hears of EOF
                before = stream.text_parts
                try:
                    stream.feed(chunk, not chunk)
                finally:  # text and an error in one read: the text still came first
                    if stream.text_parts > before and m.ttft_s is None:
                        m.ttft_s = now - m.start
                        m.enter("total")
            if not chunk:
                break
            if decoder is not None:
                for event in decoder.feed(chunk):
                    if stream.feed(event.data, event.event) and m.ttft_s is None:
                        m.ttft_s = now - m.start
                        m.enter("total")
                    if stream.finished:
                        break
        m.duration_s = now - m.start
    finally:
        m.input_tokens, m.output_tokens = stream.tokens()
    failure = stream.verdict()
    if failure is not None:
        raise failure


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (``read(n)`` alone stops at the first network chunk).

    A gzip/deflate body is inflated, to at most ``limit`` bytes; one that does not
    inflate is returned as it came (it is only ever an error body to classify).
    """
    parts, size = [], 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    raw = b"".join(parts)
    if _encoding(resp) in _INFLATABLE and raw:
        try:
            return zlib.decompressobj(_WBITS).decompress(raw, limit)
        except zlib.error:
            return raw
    return raw


# Probes ask for ``Accept-Encoding: identity``; some servers and gateways compress anyway.
_INFLATABLE = ("gzip", "x-gzip", "deflate")
_WBITS = 32 + zlib.MAX_WBITS  # a gzip or zlib header, detected


def _encoding(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Encoding", "").strip().lower()


def too_large(limit: int, how: str = "") -> ProbeFailure:
    """The failure of a probe stopped by its byte cap."""
    return ProbeFailure(Outcome.PROTOCOL_ERROR, "response_too_large", f"response exceeded {limit} bytes{how}")


class BodyReader:
    """A streamed body as the server meant it, within the probe's byte cap.

    Counts the bytes on the wire into ``m.bytes_read`` and, when the server
    compressed the body anyway, inflates it step by step, never to more than
    the cap: a decompression bomb ends as ``response_too_large`` like a flood.
    ``arrived`` is the ``perf_counter()`` time the last read returned.
    """

    __slots__ = ("_resp", "_m", "_inflater", "_encoding", "inflated", "arrived")

    def __init__(self, resp: aiohttp.ClientResponse, m: Measurement) -> None:
        self._resp, self._m = resp, m
        self._encoding = _encoding(resp)
        if self._encoding not in ("", "identity", *_INFLATABLE):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "unsupported_encoding",
                               f"Content-Encoding {self._encoding[:40]} (the probe asked for identity)")
        self._inflater = zlib.decompressobj(_WBITS) if self._encoding in _INFLATABLE else None
        self.inflated = 0
        self.arrived = time.perf_counter()

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` only at its end."""
        m = self._m
        while True:
            chunk = await self._resp.content.readany()
            self.arrived = time.perf_counter()
            m.bytes_read += len(chunk)
            if m.bytes_read > m.byte_limit:
                raise too_large(m.byte_limit)
            if self._inflater is None or not chunk:
                return chunk
            out = self._inflate(chunk)
            if out:  # a piece that inflates to nothing yet (a gzip header alone) is not the end
                return out

    def _inflate(self, chunk: bytes) -> bytes:
        room = self._m.byte_limit - self.inflated
        try:
            out = self._inflater.decompress(chunk, room + 1)
        except zlib.error:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                               f"the {self._encoding} body does not inflate") from None
        self.inflated += len(out)
        if self.inflated > self._m.byte_limit:
            raise too_large(self._m.byte_limit, f" once inflated (Content-Encoding {self._encoding})")
        return out


# Where the request id travels when there is no ``x-request-id``: Anthropic's ``request-id``, then
# what gateways add (LiteLLM's call id, AWS API Gateway's, Azure API Management's). Not ``cf-ray``:
# it names one Cloudflare edge hop, is on every response behind Cloudflare whatever answered, and
# no provider's support can look a request up by it.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-litellm-call-id", "x-amzn-requestid", "apim-request-id")


def request_id_from(headers: Any, first: str = "x-request-id") -> str | None:
    """The provider's own request id header (``first``), else the first of ``REQUEST_ID_HEADERS``."""
    for name in (first, *REQUEST_ID_HEADERS):
        value = headers.get(name)
        if value:
            return value
    return None
