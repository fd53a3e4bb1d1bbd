"""The bodies of a Chat Completions answer: its token plan, usage, chunks and SSE stream.

See ``openai_chat`` for the routes and the shape of a stream; this module
builds what they send, so the request handling reads apart from the wire format.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .common import FaultyStream
from .common import sleep_until as _sleep_until
from .common import to_json as _to_json
from .content import SSE_CONTENT_TYPE, content_piece, estimate_prompt_tokens
from .openai_http import ERRORS, error_body

if TYPE_CHECKING:
    from .openai_chat import ChatCall

__all__ = ["ChatStream", "chat_usage", "fingerprint", "reasoning_piece", "token_plan"]

_AZURE_FILTER = {name: {"filtered": False, "severity": "safe"}
                 for name in ("hate", "self_harm", "sexual", "violence")}


class ChatStream(FaultyStream):
    """One SSE answer: role chunk, keep-alives, content, faults, finish, usage, [DONE]."""

    def __init__(self, call: ChatCall, headers: dict[str, str]) -> None:
        self.call = self.exchange = call
        self.behaviour = call.behaviour
        self.count, self.finish_reason = token_plan(call)
        self.first_at = call.t0_loop + call.record.injected_ttft_s
        self.headers = headers
        # OpenAI puts "usage": null on every chunk once the usage chunk is promised.
        self.usage_chunk = call.include_usage and self.behaviour.usage_mode in ("include_usage", "x_groq")

    async def run(self) -> web.StreamResponse:
        """Send the whole stream; returns early when a fault ends it."""
        call, behaviour = self.call, self.behaviour
        await _sleep_until(call.t0_loop + behaviour.ttfb_ms / 1000)
        response = web.StreamResponse(status=200, headers=self.headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        response.headers["openai-processing-ms"] = str(round(call.elapsed_s() * 1000))
        call.response = response
        call.record.status = 200
        await response.prepare(call.request)
        if call.azure:
            await self._send(_azure_prompt_filter_chunk())
        await self._send(self._chunk({"role": "assistant", "content": ""}))
        await self._stream_reasoning(call.t0_loop + behaviour.ttfb_ms / 1000)
        await self.keepalive_until(self.first_at)
        if not await self.stream_deltas(self.count):
            return response
        # With no content (content_blocked, tokens: 0) the verdict still takes until ttft.
        await _sleep_until(self.first_at)
        await self._finish()
        await response.write_eof()
        return response

    async def _stream_reasoning(self, start: float) -> None:
        """Reasoning deltas spread evenly between the headers and the first content."""
        field_name, count = self.call.reasoning_field, self.call.reasoning_tokens
        if not field_name or not count:
            return
        gap = (self.first_at - start) / (count + 1)
        for index in range(count):
            await _sleep_until(start + (index + 1) * gap)
            await self._send(self._chunk({"role": "assistant", "content": "",
                                          field_name: reasoning_piece(index)}))

    async def send_delta(self, index: int, count: int) -> None:
        await self._send(self._chunk({"content": content_piece(index)}))

    async def send_malformed(self) -> None:
        await self._send("{not json")

    async def send_midstream_error(self, index: int) -> None:
        await self._send(_to_json(_midstream_error(self.behaviour.error_shape)))
        await self.call.response.write_eof()

    async def send_keepalive(self) -> None:
        """A ``: keep-alive`` comment (DeepSeek style)."""
        await self.call.response.write(b": keep-alive\n\n")

    async def send_interrupted(self) -> None:
        """``[DONE]`` with no finish_reason chunk before it, as an interrupted llama-cpp-python stream ends."""
        await self._send("[DONE]")
        await self.call.response.write_eof()

    async def _finish(self) -> None:
        """Finish chunk, usage chunk and [DONE]; the log is stamped before the last one."""
        call, mode = self.call, self.behaviour.usage_mode
        usage = chat_usage(call, self.count if self.finish_reason != "content_filter" else 0)
        extra: dict[str, Any] = {}
        if mode == "always_final":
            extra["usage"] = usage
        elif mode == "x_groq":
            extra["x_groq"] = {"id": call.request_id, "usage": {**_groq_times(call), **_basic_usage(usage)}}
        events = [self._chunk({}, self.finish_reason, **extra)]
        if self.usage_chunk:
            events.append(self._chunk(None, usage=usage))
        if self.behaviour.done:
            events.append("[DONE]")
        for event in events[:-1]:
            await self._send(event)
        call.finish()
        await self._send(events[-1])

    def _chunk(self, delta: dict | None, finish_reason: str | None = None, **extra: Any) -> str:
        """One ``chat.completion.chunk``; ``delta=None`` means the ``choices: []`` usage chunk."""
        call = self.call
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if call.azure and choices:
            filtered = finish_reason == "content_filter"
            choices[0]["content_filter_results"] = {
                name: {"filtered": filtered, "severity": "high" if filtered and name == "violence" else "safe"}
                for name in _AZURE_FILTER}
        chunk: dict[str, Any] = {
            "id": call.completion_id, "object": "chat.completion.chunk", "created": call.created,
            "model": call.model, "service_tier": "default", "system_fingerprint": fingerprint(call.model),
            "choices": choices,
        }
        if call.ollama:
            chunk["system_fingerprint"] = "fp_ollama"
            del chunk["service_tier"]
        if self.usage_chunk:
            chunk["usage"] = None
        chunk.update(extra)
        if call.obfuscate and not call.ollama:
            chunk["obfuscation"] = _obfuscation(call.request_id, call.chunks_written)
        call.chunks_written += 1
        return _to_json(chunk)

    async def _send(self, data: str) -> None:
        """Write one SSE event in one write, so no event is split across TCP sends by us."""
        await self.call.response.write(f"data: {data}\n\n".encode())


def token_plan(call: ChatCall) -> tuple[int, str]:
    """How many content chunks to send and the finish_reason, honouring max tokens.

    Reasoning tokens are spent first and count against the cap, as on OpenAI;
    the plan's reasoning count is kept on the call for the usage and deltas.
    """
    behaviour = call.behaviour
    call.reasoning_tokens = 0
    if call.record.outcome == "content_blocked":
        return 0, "content_filter"
    reasoning = behaviour.thinking_tokens if call.reasoning else 0
    cap = call.body.get("max_tokens") if call.ollama else (
        call.body.get("max_completion_tokens") or call.body.get("max_tokens"))
    if cap is not None and reasoning + behaviour.tokens > cap:
        call.reasoning_tokens = min(reasoning, cap)
        return min(behaviour.tokens, cap - call.reasoning_tokens), "length"
    call.reasoning_tokens = reasoning
    return behaviour.tokens, behaviour.finish_reason


def chat_usage(call: ChatCall, content_tokens: int) -> dict[str, Any]:
    """A full Chat Completions usage object; completion counts reasoning, total = prompt + completion."""
    prompt = estimate_prompt_tokens(call.body.get("messages", []))
    completion = content_tokens + call.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": call.reasoning_tokens, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def reasoning_piece(index: int) -> str:
    """The text of reasoning delta ``index``."""
    return "Thinking" if index == 0 else " it over"


def _azure_prompt_filter_chunk() -> str:
    """The chunk an Azure stream opens with: no choices, no model, the prompt's filter verdict."""
    return _to_json({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}]})


def _basic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """The three token counts, without the details objects (Groq's layout)."""
    return {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _groq_times(call: ChatCall) -> dict[str, float]:
    """Groq's timing fields inside ``x_groq.usage``, from the real elapsed time."""
    total = call.elapsed_s()
    first = call.record.actual_ttft_s or total
    return {"queue_time": 0.0, "prompt_time": round(first, 6), "completion_time": round(total - first, 6),
            "total_time": round(total, 6)}


def _midstream_error(shape: str) -> Any:
    """The ``data:`` payload of a mid-stream server error in ``shape``."""
    spec = ERRORS["server_error"]
    body = error_body(spec, shape, spec.message)
    # vLLM wraps its flat error object in "error" when it fails mid-stream (§7).
    return {"error": body} if shape == "vllm_flat" else body


def _obfuscation(request_id: str, index: int) -> str:
    """Deterministic filler for the ``obfuscation`` field (real OpenAI pads chunks with it)."""
    return hashlib.blake2s(f"{request_id}:{index}".encode(), digest_size=6).hexdigest()


def fingerprint(model: str) -> str:
    """A stable ``system_fingerprint`` per model name."""
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]
