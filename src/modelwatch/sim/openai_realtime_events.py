"""OpenAI Realtime's tables and event builders, and the types a session and its responses share.

What ``openai_realtime_session`` and ``openai_realtime_response`` send is
built from these: the GA and beta event names (§2.6), the session defaults and
the keys a ``session.update`` may carry (§2.4), the ``error`` objects by code,
the usage object (§2.9), and how a session ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .content import SAMPLE_RATE
from .openai_http import ERRORS

__all__ = ["EVENT_NAMES", "REALTIME_ERRORS", "ClientError", "RealtimeErrorSpec", "SessionOver",
           "error_object", "merge_session", "session_expired_minutes", "usage_object"]

BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes a millisecond
MIN_COMMIT_BYTES = 100 * BYTES_PER_MS
# Rough token rates of audio [MEM]: input ~10 tokens a second, output ~20.
INPUT_AUDIO_MS_PER_TOKEN = 100
OUTPUT_AUDIO_MS_PER_TOKEN = 50
PCM = {"type": "audio/pcm", "rate": SAMPLE_RATE}
INSTRUCTIONS = "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI."
TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
                  "create_response": True, "interrupt_response": True}
BETA_RETIRED_REASON = "invalid_request_error.beta_api_shape_disabled"

# Fields a session.update may carry, from the SDK's param types (GA and beta).
GA_SESSION_KEYS = frozenset({"type", "audio", "include", "instructions", "max_output_tokens", "model",
                             "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice",
                             "tools", "tracing", "truncation"})
BETA_SESSION_KEYS = frozenset({"client_secret", "input_audio_format", "input_audio_noise_reduction",
                               "input_audio_transcription", "instructions", "max_response_output_tokens",
                               "modalities", "model", "output_audio_format", "speed", "temperature", "tool_choice",
                               "tools", "tracing", "turn_detection", "voice"})
CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
                 "conversation.item.truncate", "conversation.item.delete", "response.create", "response.cancel",
                 "output_audio_buffer.clear")

# (GA name, beta name) of the events whose names changed at GA (§2.6).
EVENT_NAMES = {
    "text.delta": ("response.output_text.delta", "response.text.delta"),
    "text.done": ("response.output_text.done", "response.text.done"),
    "audio.delta": ("response.output_audio.delta", "response.audio.delta"),
    "audio.done": ("response.output_audio.done", "response.audio.done"),
    "transcript.delta": ("response.output_audio_transcript.delta", "response.audio_transcript.delta"),
    "transcript.done": ("response.output_audio_transcript.done", "response.audio_transcript.done"),
}


@dataclass(frozen=True)
class RealtimeErrorSpec:
    """An ``error`` object's type and message; the message may use {model}, {key}, {minutes}."""

    type: str
    message: str


REALTIME_ERRORS: dict[str, RealtimeErrorSpec] = {
    "invalid_api_key": RealtimeErrorSpec("invalid_request_error", ERRORS["auth_error"].message),
    "beta_api_shape_disabled": RealtimeErrorSpec(
        "invalid_request_error",
        "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."),
    "session_expired": RealtimeErrorSpec(
        "invalid_request_error", "Your session hit the maximum duration of {minutes} minutes."),
    "server_error": RealtimeErrorSpec("server_error", ERRORS["server_error"].message),
    "model_not_found": RealtimeErrorSpec("invalid_request_error", ERRORS["model_unavailable"].message),
    "insufficient_quota": RealtimeErrorSpec("insufficient_quota", ERRORS["quota_exhausted"].message),
    "rate_limit_exceeded": RealtimeErrorSpec(
        "requests",
        "Rate limit reached for {model} in organization org-modelwatchsim on requests per min (RPM): Limit 1000, "
        "Used 1000, Requested 1. Please try again in 60ms. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."),
}


class SessionOver(Exception):
    """Raised inside a session task once the session is ending; unwinds that task quietly."""


class ClientError(Exception):
    """A client event the server refuses with an ``error`` event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def error_object(code: str, message: str | None = None, *, param: str | None = None,
                 event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """The ``error`` payload for ``code``; codes outside the table get a generic message."""
    spec = REALTIME_ERRORS.get(code) or RealtimeErrorSpec(
        "invalid_request_error", f"The request failed with error code '{code}'.")
    text = message or spec.message.format_map(_Placeholders(fields))
    return {"type": spec.type, "code": code, "message": text, "param": param, "event_id": event_id}


class _Placeholders(dict):
    """format_map helper: a placeholder nobody filled in stays as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def session_expired_minutes(seconds: float) -> str:
    """The duration in the session_expired message: ``15`` or ``0.005``."""
    return f"{seconds / 60:g}"


def usage_object(input_text: int, input_audio: int, output_text: int, output_audio: int) -> dict[str, Any]:
    """A Realtime usage object whose details sum to their parents: total = input + output (§2.9)."""
    input_tokens, output_tokens = input_text + input_audio, output_text + output_audio
    nothing_cached = {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}
    return {
        "total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                                "cached_tokens": 0, "cached_tokens_details": nothing_cached},
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a session update: nested objects merge, anything else (null too) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_session(merged[key], value)
        else:
            merged[key] = value
    return merged
