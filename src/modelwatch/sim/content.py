"""What every protocol of the simulator generates: content text, token estimates, audio.

Chat, Responses, Anthropic, Gemini and both realtime APIs stream the same
content ("OK", then words) so tests can compare them; they estimate prompt
tokens the same rough way, and the realtime APIs speak the same PCM16 tone.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

__all__ = ["SAMPLE_RATE", "SSE_CONTENT_TYPE", "WORDS", "WEBRTC_SAMPLE_RATE", "content_piece", "estimate_prompt_tokens",
           "pcm_tone", "pcm_tone_48k", "text_tokens", "user_turns"]

WORDS = (" from", " the", " modelwatch", " simulator", ",", " streaming", " one", " token", " at", " a", " time", ".")
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
SAMPLE_RATE = 24_000
WEBRTC_SAMPLE_RATE = 48_000  # Opus over RTP (PROTOCOLS.md §3.1)

# A quiet 400 Hz tone: exactly 60 samples a period at 24 kHz, so one period tiles seamlessly.
_TONE_PERIOD = 60
_TONE = b"".join(struct.pack("<h", round(1000 * math.sin(2 * math.pi * i / _TONE_PERIOD)))
                 for i in range(_TONE_PERIOD))
# The same tone at 48 kHz (120 samples a period), for the WebRTC call's outbound Opus track.
_TONE_PERIOD_48K = 2 * _TONE_PERIOD
_TONE_48K = b"".join(struct.pack("<h", round(1000 * math.sin(2 * math.pi * i / _TONE_PERIOD_48K)))
                     for i in range(_TONE_PERIOD_48K))


def content_piece(index: int) -> str:
    """The text of content chunk ``index``: "OK", then words."""
    return "OK" if index == 0 else WORDS[(index - 1) % len(WORDS)]


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """Roughly count prompt tokens: ~4 characters a token plus OpenAI's per-message overhead."""
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        # Odd content types are the client's problem, not a reason to fail the count.
        total += 4 + math.ceil(len(content if isinstance(content, str) else "") / 4)
    return total


def user_turns(messages: Any, default_role: str | None = None) -> int:
    """The conversation turn a stateless request stands for: its user messages, at least 1.

    A REST conversation resends its history, so its k-th request carries k user
    messages. A plain string prompt is one turn; ``default_role`` is the role of
    a message that names none (Gemini's ``contents`` default to ``user``).
    """
    if not isinstance(messages, list):
        return 1
    users = sum(1 for message in messages
                if isinstance(message, dict) and message.get("role", default_role) == "user")
    return max(1, users)


def text_tokens(text: str) -> int:
    """Rough token count: about four characters a token."""
    return math.ceil(len(text) / 4)


def pcm_tone(offset_samples: int, samples: int) -> bytes:
    """``samples`` of the tone starting at ``offset_samples``, phase-continuous across chunks."""
    start = (offset_samples % _TONE_PERIOD) * 2
    repeats = (start + 2 * samples) // len(_TONE) + 1
    return (_TONE * repeats)[start:start + 2 * samples]


def pcm_tone_48k(offset_samples: int, samples: int) -> bytes:
    """``samples`` of the tone at 48 kHz PCM16 mono from ``offset_samples``, phase-continuous."""
    start = (offset_samples % _TONE_PERIOD_48K) * 2
    repeats = (start + 2 * samples) // len(_TONE_48K) + 1
    return (_TONE_48K * repeats)[start:start + 2 * samples]


def audio_chunk_b64(index: int, chunk_ms: float, audio_ms: float) -> str:
    """Base64 PCM16 of audio chunk ``index`` of an answer ``audio_ms`` long (the last may be shorter)."""
    per_chunk = round(chunk_ms * SAMPLE_RATE / 1000)
    total = round(audio_ms * SAMPLE_RATE / 1000)
    start = index * per_chunk
    return base64.b64encode(pcm_tone(start, max(0, min(per_chunk, total - start)))).decode()
