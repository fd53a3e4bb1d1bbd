"""What the speech-endpoint tests share: scenarios, WAV files, multipart posts and the request log."""

from __future__ import annotations

import io
import wave

import aiohttp

from modelwatch.sim.scenario import Scenario

KEY = {"Authorization": "Bearer sk-test"}
AZURE_KEY = {"api-key": "azure-key-1"}


def make_scenario(seed: int = 1, keys: list[str] | None = None, **models: dict) -> Scenario:
    """A scenario from model blocks given as keyword arguments."""
    return Scenario.model_validate({"seed": seed, "keys": keys or [], "models": models})


def wav_bytes(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A mono PCM16 WAV file of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * round(rate * seconds))
    return buffer.getvalue()


def transcription_form(model: str | None = "m", audio: bytes | None = None, filename: str | None = "probe.wav",
                       **fields: str) -> aiohttp.FormData:
    """The multipart form of a transcription request; ``filename=None`` sends the file as a plain field."""
    form = aiohttp.FormData(default_to_multipart=True)
    if model is not None:
        form.add_field("model", model)
    for name, value in fields.items():
        form.add_field(name, value)
    audio = wav_bytes() if audio is None else audio
    if filename is None:  # aiohttp gives any bytes value a filename; a str goes without one
        form.add_field("file", audio.decode("latin-1"))
    else:
        form.add_field("file", audio, filename=filename, content_type="audio/wav")
    return form


async def post_transcription(session, url: str, form: aiohttp.FormData, *, path: str = "/v1/audio/transcriptions",
                             headers: dict | None = None) -> tuple[int, dict, str]:
    """POST a transcription; returns (status, headers, body text)."""
    async with session.post(url + path, data=form, headers=KEY if headers is None else headers) as response:
        return response.status, response.headers, await response.text()


async def sim_log(session, url: str) -> list[dict]:
    async with session.get(f"{url}/_sim/requests") as response:
        return await response.json()


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body (comments skipped), every event checked to be data-only."""
    payloads = []
    for block in text.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        payloads.append(block[len("data: "):])
    return payloads
