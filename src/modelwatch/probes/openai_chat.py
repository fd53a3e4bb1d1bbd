"""OpenAI Chat Completions streaming probe (OpenAI and OpenAI-compatible servers).

Sends a tiny fixed prompt with a small output cap and ``stream_options.
include_usage``, then times: response headers (``ttfb_s``), the first chunk
whose ``delta.content`` is a non-empty string (``ttft_s``; the role-only first
chunk does not count) and ``data: [DONE]`` (``duration_s``). Decoding and
classification are pure functions over bytes and dicts, tested with captures.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeFailure
from modelwatch.probes.base import Measurement
from modelwatch.probes.http import ErrorReading, stream_request
from modelwatch.probes.openai_family import FAMILY, classify_openai_error, openai_auth
from modelwatch.probes.parsing import as_int, error_fields, parse_body
from modelwatch.probes.spec import ProbeSpec, text_tokens


def build_request(job: ProbeJob, messages: list[dict] | None = None) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON body of the probe request (``messages``: a conversation so far,
    or a voice chain's transcript; default the probe's prompt)."""
    p = job.probe
    cap_field = p.max_tokens_field or (
        "max_completion_tokens" if job.provider.type == "openai" else "max_tokens")
    body = {
        "model": job.model,
        "messages": messages or [{"role": "user", "content": p.prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        cap_field: p.max_tokens,
    }
    if p.reasoning_effort is not None:
        body["reasoning_effort"] = p.reasoning_effort
    if p.extra_body:
        # Validated in config: it never overrides the fields the probe measures or caps by.
        body = {**p.extra_body, **body}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "Accept-Encoding": "identity", "User-Agent": "modelwatch", **job.provider.headers,
               **openai_auth(job)}
    url = f"{job.provider.base_url}/chat/completions"
    if job.provider.type == "azure-openai" and job.provider.api_version:
        # the dated form: the deployment is in the path
        url = (f"{job.provider.base_url}/deployments/{quote(job.model, safe='')}/chat/completions"
               f"?api-version={quote(job.provider.api_version)}")
    return url, headers, json.dumps(body).encode()



class ChatStream:
    """State of one Chat Completions stream, fed with each SSE ``data`` payload."""

    __slots__ = ("done", "finish_reason", "usage", "content_chunks", "refusal", "require_done",
                 "require_finish", "parts")

    def __init__(self, require_done: bool = True, require_finish: bool = True) -> None:
        # OpenAI always ends with [DONE]; some compatible servers just close after the
        # finish_reason chunk (PROTOCOLS.md section 7), which is not a failure there.
        self.require_done = require_done
        # Content then [DONE] without any finish_reason is a cut answer (llama-cpp-python ends an
        # interrupted stream so); only a provider with ``finish_reason: optional`` never sends one.
        self.require_finish = require_finish
        self.done = False
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.content_chunks = 0
        self.refusal = False
        self.parts: list[str] = []  # the answer's text (a conversation's history, a chain's speech)

    @property
    def finished(self) -> bool:
        """``[DONE]`` arrived."""
        return self.done

    def feed(self, data: str, event: str = "") -> bool:
        """Consume one event payload; True if it carried non-empty content."""
        if data.startswith("[DONE]"):
            self.done = True
            return False
        if event == "error":  # llama.cpp's stray ``error:`` field (see sse.py)
            raise ProbeFailure(*classify_openai_error(None, parse_body(data.encode())))
        try:
            obj = json.loads(data)
        except ValueError:
            raise ProbeFailure(Outcome.PROTOCOL_ERROR, "malformed_chunk",
                               f"malformed JSON in stream: {data[:60]}") from None
        if isinstance(obj, list) or not isinstance(obj, dict):
            raise ProbeFailure(*classify_openai_error(None, obj)) if obj else ProbeFailure(
                Outcome.PROTOCOL_ERROR, "malformed_chunk", "stream chunk is not an object")
        if obj.get("error") or obj.get("object") == "error":
            raise ProbeFailure(*classify_openai_error(None, obj))
        usage = obj.get("usage") or (obj.get("x_groq") or {}).get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        content = False
        for choice in obj.get("choices") or ():
            content = self._choice(choice) or content
        return content

    def _choice(self, choice: Any) -> bool:
        if not isinstance(choice, dict):
            return False
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
            if reason == "error":
                raise ProbeFailure(Outcome.SERVER_ERROR, "finish_reason_error",
                                   "stream finished with finish_reason error")
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and delta.get("refusal"):
            self.refusal = True
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:
            text = choice.get("text")  # legacy completion-style chunks (Together)
        if isinstance(text, str) and text:
            self.content_chunks += 1
            self.parts.append(text)
            return True
        return False

    def verdict(self) -> ProbeFailure | None:
        """The failure a finished stream amounts to, or None if it is a success."""
        if self.refusal or self.finish_reason == "content_filter":
            return ProbeFailure(Outcome.CONTENT_BLOCKED, self.finish_reason or "refusal",
                                "the model refused or the content filter stopped it")
        if not self.done and (self.require_done or not self.finish_reason):
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_terminator",
                                "stream ended without [DONE]")
        if self.require_finish and not self.finish_reason:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_finish_reason",
                                f"stream ended after {self.content_chunks} content chunks without a "
                                "finish_reason: the answer was cut off")
        if not self.content_chunks:
            return ProbeFailure(Outcome.PROTOCOL_ERROR, "no_content",
                                f"stream finished ({self.finish_reason or 'done'}) without content")
        return None

    def answer(self) -> str:
        """The answer's text so far."""
        return "".join(self.parts)

    def tokens(self) -> tuple[int | None, int | None]:
        """(input, output) tokens from the usage report, if any."""
        u = self.usage or {}
        return as_int(u.get("prompt_tokens")), as_int(u.get("completion_tokens"))



def is_error_body(body: Any) -> bool:
    """A JSON error object that came with status 200 instead of a stream."""
    return isinstance(body, (dict, list)) and bool(error_fields(body)[2])


ERRORS = ErrorReading(classify_openai_error, is_error=is_error_body)


async def probe_openai_chat(job: ProbeJob, http: aiohttp.ClientSession, m: Measurement) -> None:
    """One streamed Chat Completions request, timed phase by phase."""
    stream = ChatStream(require_done=job.provider.type == "openai",
                        require_finish=job.provider.finish_reason == "required")
    await stream_request(http, m, build_request(job), stream, ERRORS)


SPEC = ProbeSpec("rest", FAMILY, probe_openai_chat, classify_openai_error, text_tokens,
                 "Chat Completions streaming", options={"extra_body": ("openai-compatible",)})
