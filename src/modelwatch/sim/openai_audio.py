"""OpenAI's speech endpoints on the simulator: the REST voice chain's STT and TTS (PROTOCOLS.md §8).

Routes, for ``transcriptions`` (speech to text, ``openai_audio_transcribe``)
and ``speech`` (text to speech, ``openai_audio_speech``) alike:

* ``POST /v1/audio/{endpoint}`` (OpenAI, ``Authorization: Bearer``);
* ``POST /openai/v1/audio/{endpoint}`` (Azure v1 form: ``model`` names the deployment);
* ``POST /openai/deployments/{deployment}/audio/{endpoint}?api-version=V``
  (Azure dated form, as ``AzureOpenAI`` builds it: the deployment in the path
  names the behaviour, the request's ``model`` is ignored).

This module owns what both endpoints share, mirroring Chat Completions: the
key check (OpenAI: bearer, a missing one gets 401 "Missing bearer…" and a
refused one 401 ``invalid_api_key`` with the masked key; Azure: the ``api-key``
header or a bearer token, and Azure's own 401 body), the Azure dated form's
``api-version`` (404 ``Resource not found`` without it), the behaviour by model
name (unknown: 404 ``model_not_found``, Azure ``DeploymentNotFound``), the
injected errors (``error``/``errors``/``outages`` with the ``openai_http.ERRORS``
statuses and bodies in the model's ``error_shape``, sent at ``ttfb_ms``; Azure's
own bodies for the kinds it has, its 429 naming the audio operation), and
OpenAI's headers (``x-request-id``, ``x-ratelimit-*``, ``retry-after`` on 429
and 503). ``content_blocked`` is no status: the answer carries no transcript
text, or no audio.

Each endpoint module supplies ``read`` (parse and validate the request, a 400
or 413 response when it is refused) and ``answer`` (the 200 answer, timed from
``injected_ttft_s``). Every wait is an absolute deadline from handler entry,
which is when the request's headers arrived: a slow upload counts against
``ttft_ms``, as it does in what a client measures.

Request log: ``model`` (the deployment on Azure), ``status``, ``outcome`` (an
error kind, ``ok``, or a stream fault), ``injected_ttft_s`` (to the first
transcript delta, the whole non-streamed transcription, or the first audio
byte or ``speech.audio.delta``), ``actual_ttft_s`` (stamped just after that was
handed to the socket), ``actual_duration_s``, and ``options``: the form fields
or JSON body without the audio, the ``prompt``, ``input`` or ``instructions``
text (a transcription logs its file as ``{"filename", "bytes"}``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import openai_audio_speech, openai_audio_transcribe
from .common import LoggedExchange, sleep_until, to_json
from .openai_http import (AZURE_ERRORS, MISSING_AUTH, azure_error_response, error_response, openai_headers,
                          plain_error, request_key)
from .scenario import ModelBehaviour

if TYPE_CHECKING:
    from .app import RequestDraws, RequestRecord, SimState

__all__ = ["AudioCall", "AudioEndpoint", "ENDPOINTS", "register"]


@dataclass
class AudioCall(LoggedExchange):
    """One speech-endpoint request, from arrival to its last byte."""

    request: web.Request
    record: RequestRecord
    draws: RequestDraws
    t0_perf: float
    t0_loop: float
    azure: str | None  # None (OpenAI), "v1" or "dated"
    created: int = field(default_factory=lambda: int(time.time()))
    api_key: str = ""
    model: str = ""
    behaviour: ModelBehaviour = field(default_factory=ModelBehaviour)
    params: dict[str, Any] = field(default_factory=dict)  # what ``read`` parsed, by the endpoint's own names
    response: web.StreamResponse | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def first_at(self) -> float:
        """Loop time at which the first transcript delta or audio byte is due."""
        return self.t0_loop + (self.record.injected_ttft_s or 0.0)

    def use_model(self, model: str) -> None:
        """Name the model the request asked for (the dated Azure form: its deployment) and log it."""
        self.model = self.request.match_info.get("deployment", model)
        self.record.model = self.model or None


@dataclass(frozen=True)
class AudioEndpoint:
    """One speech endpoint: how it reads a request and answers it."""

    azure_operation: str  # named in Azure's 429 message
    read: Callable[[AudioCall], Awaitable[web.Response | None]]
    answer: Callable[[AudioCall, dict[str, str]], Awaitable[web.StreamResponse]]


ENDPOINTS: dict[str, AudioEndpoint] = {
    # Azure's operation names are a guess patterned on ChatCompletions_Create.
    "transcriptions": AudioEndpoint("Transcriptions_Create", openai_audio_transcribe.read,
                                    openai_audio_transcribe.answer),
    "speech": AudioEndpoint("Speech_Create", openai_audio_speech.read, openai_audio_speech.answer),
}
_PREFIXES = ((None, "/v1"), ("v1", "/openai/v1"), ("dated", "/openai/deployments/{deployment}"))


def register(app: web.Application, state: SimState) -> None:
    """Add the transcription and speech routes, OpenAI's and Azure's, to the simulator app."""
    handler = AudioEndpoints(state)
    for name, endpoint in ENDPOINTS.items():
        for azure, prefix in _PREFIXES:
            app.router.add_post(f"{prefix}/audio/{name}", handler.route(endpoint, azure))


class AudioEndpoints:
    """Request handlers for the speech endpoints, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def route(self, endpoint: AudioEndpoint, azure: str | None) -> Callable[[web.Request], Awaitable[Any]]:
        """The aiohttp handler for ``endpoint`` on one of its three routes."""
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, endpoint, azure)
        return handle

    async def _handle(self, request: web.Request, endpoint: AudioEndpoint, azure: str | None) -> web.StreamResponse:
        """Answer one request; a client hanging up ends it quietly."""
        t0_perf, t0_loop = time.perf_counter(), asyncio.get_running_loop().time()
        draws = self.state.draw()
        record = self.state.begin(f"req_{draws.id_bits:032x}", request.path)
        call = AudioCall(request, record, draws, t0_perf, t0_loop, azure)
        try:
            return await self._answer(call, endpoint)
        except ConnectionError:
            call.record.client_disconnected = True
            return call.response or web.Response(status=499)
        except asyncio.CancelledError:
            call.record.client_disconnected = True
            raise
        finally:
            call.finish()

    async def _answer(self, call: AudioCall, endpoint: AudioEndpoint) -> web.StreamResponse:
        """Authenticate, read, pick the behaviour, inject an error or answer."""
        denied = self._authenticate(call)
        if denied is not None:
            return denied
        if call.azure == "dated" and not call.request.query.get("api-version"):
            return self._reject(call, "bad_request", azure_error_response("no_api_version"))
        refused = await endpoint.read(call)
        if refused is not None:
            return self._reject(call, "bad_request", refused)
        behaviour = self.state.scenario.behaviour_for(call.model)
        if behaviour is None:
            return self._reject(call, "model_unavailable", self._error(call, endpoint, "model_unavailable"))
        call.behaviour = behaviour
        kind = self.state.injected_error(call.model, behaviour, call.draws.error_roll)
        if kind is not None and kind != "content_blocked":
            await sleep_until(call.t0_loop + behaviour.ttfb_ms / 1000)
            return self._reject(call, kind, self._error(call, endpoint, kind))
        call.record.outcome = kind or "ok"
        call.record.injected_ttft_s = behaviour.first_token_delay_ms(call.draws.jitter_roll) / 1000
        return await endpoint.answer(call, self._headers(call))

    def _authenticate(self, call: AudioCall) -> web.Response | None:
        """Check the key like OpenAI (Azure: ``api-key`` or bearer); None when it is accepted."""
        key = request_key(call.request.headers, bool(call.azure))
        if not key:
            missing = azure_error_response("auth_error") if call.azure else plain_error(401, MISSING_AUTH)
            return self._reject(call, "auth_error", missing)
        call.api_key = key
        if not self.state.scenario.accepts_key(key):
            refused = (azure_error_response("auth_error") if call.azure
                       else error_response("auth_error", "openai", model="", api_key=key))
            return self._reject(call, "auth_error", refused)
        return None

    def _error(self, call: AudioCall, endpoint: AudioEndpoint, kind: str) -> web.Response:
        """The response for an error kind: Azure's own body where it has one, else OpenAI's in ``error_shape``."""
        if call.azure and kind in AZURE_ERRORS:
            status, code, message = AZURE_ERRORS[kind]
            message = message.format(version=call.request.query.get("api-version", "v1"))
            message = message.replace("ChatCompletions_Create", endpoint.azure_operation)
            return web.json_response({"error": {"code": code, "message": message}}, status=status, dumps=to_json)
        return error_response(kind, call.behaviour.error_shape, model=call.model, api_key=call.api_key)

    def _reject(self, call: AudioCall, outcome: str, response: web.Response) -> web.Response:
        """Add OpenAI's headers to an error response, log it and hand it back."""
        call.record.outcome = outcome
        response.headers.update(self._headers(call, outcome))
        call.finish(response.status)
        return response

    def _headers(self, call: AudioCall, kind: str | None = None) -> dict[str, str]:
        return openai_headers(call.request_id, call.elapsed_s(), self.state.uptime_s(), kind)
