"""Google Gemini REST streaming probe (``streamGenerateContent?alt=sse``).

Sends a tiny fixed prompt with a small output cap (and ``thinkingBudget`` or ``thinkingLevel`` when
configured), the key only in ``x-goog-api-key``, then times: response headers
(``ttfb_s``), the first chunk with a non-empty ``parts[].text`` that is not a
thought (``ttft_s``) and the end of the body (``duration_s``): Gemini has no
terminator, the last chunk carries ``finishReason`` and the stream just ends.

Usage comes from the last chunk that reports counts. Output tokens are
``candidatesTokenCount + thoughtsTokenCount``: Google bills thinking tokens as
output, so a probe's cost includes them.

Errors arrive as a Google RPC body on a non-200 status, as a ``data:
{"error": ...}`` event, or as raw (possibly pretty-printed) JSON written into the
stream without SSE framing; :class:`GeminiStream` reassembles the latter, and
:func:`classify_google_error` is the one place that maps them to outcomes.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.google_family import classify_google_error, google_auth, thinking_config
from modelwatch.probes.http import ErrorReading, stream_request
from modelwatch.probes.parsing import as_int
from modelwatch.probes.spec import ProbeSpec, text_tokens
from modelwatch.sse import SSEDecoder

# finishReason / blockReason values that mean a filter stopped the answer (types.FinishReason).
BLOCKED_FINISH = frozenset({"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"})
GOOD_FINISH = frozenset({"STOP", "MAX_TOKENS"})
_FRAMED = ("data:", ":", "event:", "id:", "retry:")


def build_request(job: ProbeJob) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request; the key goes in a header only."""
    p = job.probe
    config: dict[str, Any] = {"maxOutputTokens": p.max_tokens}
    thinking = thinking_config(p)
    if thinking:
        config["thinkingConfig"] = thinking
    body = {"contents": [{"role": "user", "parts": [{"text": p.prompt}]}], "generationConfig": config}
    # "gemini-2.5-flash" is models/gemini-2.5-flash; "tunedModels/x" names its own collection.
    name = job.model if "/" in job.model else f"models/{job.model}"
    url = f"{job.provider.base_url}/{quote(name, safe='/')}:streamGenerateContent?alt=sse"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **google_auth(job)}
    return url, headers, json.dumps(body).encode()



class _Unframed:
    """Text written outside SSE framing, reassembled into JSON values.

    Google sometimes writes an error into an open stream as raw, pretty-printed
    JSON; the SSE decoder drops such lines. A value ends where its braces and
    brackets balance (ignoring those inside strings), as the SDK does.
    """

    __slots__ = ("_tail", "_parts", "_depth", "_in_string", "_escaped", "junk_lines")

    def __init__(self) -> None:
        self._tail = b""
        self._parts: list[str] = []
        self._depth = 0
        self._in_string = self._escaped = False
        self.junk_lines = 0

    def feed(self, data: bytes, final: bool = False) -> list[Any]:
        """Consume bytes; return the JSON values they complete."""
        buf = self._tail + data
        lines = buf.splitlines()
        self._tail = b"" if final or not lines or buf.endswith((b"\r", b"\n")) else lines.pop()
        values = [v for raw in lines if (v := self._line(raw.decode("utf-8", "replace"))) is not None]
        if final and self._parts:  # unbalanced at EOF: try what there is
            text, self._parts = "".join(self._parts), []
            values.extend(self._parse(text))
        return values

    def _line(self, line: str) -> Any:
        if not line.strip() or (not self._parts and line.startswith(_FRAMED)):
            return None
        if not self._parts and not line.lstrip().startswith(("{", "[")):
            self.junk_lines += 1
            return None
        self._parts.append(line)
        self._scan(line)
        if self._depth > 0:
            return None
        text, self._parts, self._depth = "".join(self._parts), [], 0
        parsed = self._parse(text)
        return parsed[0] if parsed else None

    def _scan(self, line: str) -> None:
        for ch in line:
            if self._escaped:
                self._escaped = False
            elif self._in_string:
                self._escaped = ch == "\\"
                self._in_string = ch != '"'
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1

    def _parse(self, text: str) -> list[Any]:
        try:
            return [json.loads(text)]
        except ValueError:
            self.junk_lines += 1
            return []


class GeminiStream:
    """State of one ``streamGenerateContent`` answer, fed with the raw body bytes."""

    frames_bytes = True  # read_stream feeds it bytes: it reassembles unframed JSON itself
    finished = False  # Gemini has no terminator: the answer ends at EOF

    __slots__ = ("_sse", "_unframed", "chunks", "text_parts", "thought_parts", "finish_reason",
                 "block_reason", "usage", "response_id", "require_finish")

    def __init__(self, require_finish: bool = True) -> None:
        # finishReason is Gemini's only end marker; a provider with ``finish_reason: optional``
        # (a compatible server that never sends one) is judged by its text and EOF alone.
        self.require_finish = require_finish
        self._sse = SSEDecoder()
        self._unframed = _Unframed()
        self.chunks = 0
        self.text_parts = 0
        self.thought_parts = 0
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.usage: dict | None = None
        self.response_id: str | None = None

    def feed(self, data: bytes, final: bool = False) -> bool:
        """Consume body bytes (``final`` at EOF); True if they carried non-thought text."""
        text = False
        for event in self._sse.feed(data):
            try:
                obj = json.loads(event.data)
            except ValueError:
                raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                                   f"malformed JSON in stream: {event.data[:60]}") from None
            text = self._value(obj) or text
        for obj in self._unframed.feed(data, final):
            text = self._value(obj) or text
        return text

    def _value(self, obj: Any) -> bool:
        """One JSON value: a response chunk, an error, or (unframed) an array of chunks."""
        if isinstance(obj, list):  # the non-SSE layout: one array of chunks
            return any([self._value(item) for item in obj])
        if not isinstance(obj, dict):
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream chunk is not an object")
        if "error" in obj:
            raise ProbeFailure(*classify_google_error(None, obj))
        self.chunks += 1
        self.response_id = self.response_id or _str(obj.get("responseId"))
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict) and usage.keys() & {"promptTokenCount", "candidatesTokenCount",
                                                         "thoughtsTokenCount"}:
            self.usage = usage
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.block_reason = str(feedback["blockReason"])
        text = False
        for candidate in obj.get("candidates") or ():
            text = self._candidate(candidate) or text
        return text

    def _candidate(self, candidate: Any) -> bool:
        if not isinstance(candidate, dict):
            return False
        if candidate.get("finishReason"):
            self.finish_reason = str(candidate["finishReason"])
        content = candidate.get("content")
        text = False
        for part in (content.get("parts") if isinstance(content, dict) else None) or ():
            if not isinstance(part, dict) or not isinstance(part.get("text"), str) or not part["text"]:
                continue  # e.g. the final part that only carries a thoughtSignature
            if part.get("thought") is True:
                self.thought_parts += 1
            else:
                self.text_parts += 1
                text = True
        return text

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.block_reason:
            return ProbeFailure(Outcome.CONTENT_BLOCKED, self.block_reason.lower(),
                                f"prompt blocked ({self.block_reason})")
        reason = self.finish_reason
        if reason in BLOCKED_FINISH:
            return ProbeFailure(Outcome.CONTENT_BLOCKED, reason.lower(), f"answer stopped by {reason}")
        if reason is None and (self.require_finish or not self.text_parts):
            junk = f"; {self._unframed.junk_lines} unrecognised lines" if self._unframed.junk_lines else ""
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator",
                                f"stream ended without a finishReason after {self.chunks} chunks{junk}")
        if reason is not None and reason not in GOOD_FINISH:  # OTHER, MALFORMED_RESPONSE, ...: the model gave up
            return ProbeFailure(Outcome.SERVER_ERROR, reason.lower(), f"answer ended with finishReason {reason}")
        if not self.text_parts:
            only = f", only {self.thought_parts} thought parts" if self.thought_parts else ""
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                                f"stream finished ({reason}) without text{only}")
        return None

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens; output counts the billed thinking tokens too."""
        u = self.usage or {}
        candidates, thoughts = as_int(u.get("candidatesTokenCount")), as_int(u.get("thoughtsTokenCount"))
        output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
        return as_int(u.get("promptTokenCount")), output


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# Errors come as Google RPC bodies; a 200 is read as the stream whatever its Content-Type says.
ERRORS = ErrorReading(classify_google_error, stream_only=False)


async def probe_gemini(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One ``streamGenerateContent`` request, timed phase by phase."""
    stream = GeminiStream(require_finish=job.provider.finish_reason == "required")
    try:
        await stream_request(http, m, build_request(job), stream, ERRORS)
    finally:
        m.request_id = m.request_id or stream.response_id


SPEC = ProbeSpec("rest", ("gemini",), probe_gemini, classify_google_error, text_tokens,
                 "streamGenerateContent (SSE), read to EOF")
