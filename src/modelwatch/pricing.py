"""What a probe's reported tokens cost at its target's price table (USD per million tokens).

Apart from :mod:`modelwatch.cost` (budget and estimates, which read the probe
registry) because the probe runner prices every result: the runner must not
import the registry it is part of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelwatch.config import PriceConfig


def probe_cost_usd(price: PriceConfig | None, input_tokens: int | None, output_tokens: int | None,
                   input_audio: int | None = None, output_audio: int | None = None) -> float | None:
    """USD for one probe's reported tokens, or None without a price or any token count.

    Audio tokens are charged at ``audio_input`` / ``audio_output`` when set,
    else at the text rates (which underestimates: catalogs set both).
    """
    if price is None or (input_tokens is None and output_tokens is None):
        return None
    audio_in, audio_out = input_audio or 0, output_audio or 0
    text_in = max((input_tokens or 0) - audio_in, 0)
    text_out = max((output_tokens or 0) - audio_out, 0)
    micro = (text_in * price.input + text_out * price.output
             + audio_in * _rate(price.audio_input, price.input)
             + audio_out * _rate(price.audio_output, price.output))
    return round(micro / 1e6, 9)


def _rate(audio: float | None, text: float) -> float:
    return text if audio is None else audio
