"""The bundled spoken prompt of ``modality: audio`` probes, and the default voice.

Both realtime probes send the same prompt, and the cost estimate needs its
length, so it lives here rather than in either provider module.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

PROMPT_RATE = 24000  # Hz; PCM16 little-endian, mono (see data/README.md)
PROMPT_FILE = "prompt-say-ok-24k.pcm"
# OpenAI's default voice; providers with other voices send one only when it was chosen.
DEFAULT_VOICE = "alloy"


@cache
def prompt_audio() -> bytes:
    """The bundled spoken prompt: PCM16 LE, 24 kHz, mono (see data/README.md)."""
    return (resources.files("modelwatch") / "data" / PROMPT_FILE).read_bytes()


def prompt_audio_seconds() -> float:
    """How long the spoken prompt lasts (what audio input tokens are billed by)."""
    return len(prompt_audio()) / (2 * PROMPT_RATE)
