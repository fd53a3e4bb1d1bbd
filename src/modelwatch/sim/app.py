"""The simulator's aiohttp application, request log and server lifecycle.

Each wire protocol lives in its own module (``openai_chat``,
``openai_responses``, ``openai_realtime``, ``openai_webrtc``, ``openai_audio``,
``anthropic``, ``gemini``, ``gemini_live``, and ``models`` for every provider's
model list)
and registers its routes on the app with ``register(app, state)``. A protocol
too big for one file keeps its routes in that module and splits the rest by
concern (``openai_chat_stream``; ``openai_realtime_session``, ``_response``,
``_events``; ``openai_webrtc_peer``; ``openai_audio_transcribe``, ``_speech``). What several protocols
send lives in ``content`` (text, token estimates, audio) and ``openai_http``
(OpenAI's error table, bodies and headers). No module here imports from
``modelwatch.probes``: the simulator must not agree with the probes by
construction. This module owns what the protocols share at run time:

* ``SimState``: the scenario, the seeded RNG, the uptime clock and the log;
* the request log, served as JSON on ``GET /_sim/requests`` (newest last,
  at most 10,000 entries) and cleared by ``DELETE /_sim/requests``. Each entry:
  ``request_id, path, model, status, outcome, injected_ttft_s, actual_ttft_s,
  actual_duration_s, client_disconnected, options, turn, turns``. ``turn`` is a
  REST request's conversation turn (its user messages, at least 1; see the
  scenario's conversation keys); ``turns`` a Realtime or Live session's turns,
  one dict each in order: ``turn``, ``injected_ttft_s`` and ``actual_ttft_s``
  (from that turn's ``response.create`` or user-turn end to its planned and
  actual first delta; the first audio chunk in Live audio), ``outcome`` (``ok``,
  ``content_blocked``, ``response_failed``, ``error_event``, ``close``,
  ``disconnect``, ``cancelled``, ``interrupted`` (Live: the next user turn cut
  it), the session's ending for a turn it cut, or ``unfinished``), and for a
  cancelled Realtime response ``cancel_latency_s`` (``response.cancel``
  received to its ``response.done`` sent) and ``audio_after_cancel`` (late audio
  deltas sent). ``turn`` is null for sessions, ``turns`` null for REST requests
  and refused handshakes. ``options`` is the request
  body without its prompt (``messages``, ``input``, ``contents``, ...), so a
  test can see the effort, thinking and cap settings the server received. ``outcome`` is ``ok``, an error kind
  (see ``scenario.ERROR_KINDS``) or a stream fault: ``midstream_error``,
  ``disconnect``, ``stall``, ``malformed``, ``raw_error`` (Gemini); a Realtime
  or Live session (one entry,
  status 101) may also end ``beta_retired``, ``response_failed``,
  ``error_event``, ``close``, ``ignore_client`` or ``session_expired``; a
  WebRTC call (one entry, status 201, TTFTs from its ``response.create``, see
  ``openai_webrtc``) also ``kill_peer`` or its ``webrtc_fault``.
  Durations are taken just before the last byte is handed to the socket, so a
  client that has read the whole answer always finds its entry complete;
* ``GET /_sim/health`` -> ``ok``; unknown routes -> OpenAI-style 404 JSON;
* ``start_sim`` (in-process, for tests and ``modelwatch demo``) and ``serve``
  (blocking, for ``modelwatch sim``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from modelwatch import loop
from modelwatch.logs import fields
from modelwatch.validation import parse_listen

from . import models, openai_chat, openai_http, openai_realtime
from . import openai_responses
from . import anthropic
from . import gemini
from . import gemini_live
from . import openai_audio
from . import openai_webrtc
from .scenario import ModelBehaviour, Scenario

__all__ = ["RequestDraws", "RequestRecord", "SimServer", "SimState", "create_app", "listen_address", "serve",
           "start_sim"]

log = logging.getLogger("modelwatch.sim")

LOG_SIZE = 10_000
# What an empty host means to the simulator (``--listen :8080``): a rehearsal
# server stays on this machine unless its user names another interface.
LOOPBACK = "127.0.0.1"
# A simulator has nothing worth waiting for at shutdown; stalled streams would
# otherwise hold ``close()`` for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 0.25

# Body fields that carry the prompt; everything else in a request body is a setting worth logging.
PROMPT_KEYS = frozenset({"messages", "input", "contents", "system", "systemInstruction", "system_instruction",
                         "instructions"})

STATE_KEY: web.AppKey[SimState] = web.AppKey("modelwatch_sim_state")


@dataclass(frozen=True)
class RequestDraws:
    """Every random number one request needs, drawn together on arrival.

    Drawing them all before the first ``await`` keeps the sequence tied to
    arrival order, so concurrent requests cannot reorder each other's draws.
    """

    id_bits: int
    error_roll: float
    jitter_roll: float


@dataclass
class RequestRecord:
    """One entry of the request log; protocol handlers fill it in as they go."""

    request_id: str
    path: str
    model: str | None = None
    status: int | None = None
    outcome: str | None = None
    injected_ttft_s: float | None = None
    actual_ttft_s: float | None = None
    actual_duration_s: float | None = None
    client_disconnected: bool = False
    options: dict[str, Any] | None = None
    turn: int | None = None
    turns: list[dict[str, Any]] | None = None

    def log_options(self, body: Any) -> None:
        """Keep the request body's settings, without the prompt text."""
        if isinstance(body, dict):
            self.options = {key: value for key, value in body.items() if key not in PROMPT_KEYS}


class SimState:
    """What all protocol handlers share: scenario, seeded RNG, clock and log."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] = time.monotonic) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.clock = clock
        self.started_at = clock()
        self.requests: deque[RequestRecord] = deque(maxlen=LOG_SIZE)
        self._asked: dict[str | None, int] = {}  # error decisions made per model name (None: model lists)

    def uptime_s(self) -> float:
        """Seconds since the app was created, on the injected clock."""
        return self.clock() - self.started_at

    def draw(self) -> RequestDraws:
        """Draw one request's random numbers from the seeded RNG."""
        return RequestDraws(self.rng.getrandbits(128), self.rng.random(), self.rng.random())

    def injected_error(self, model: str | None, behaviour: ModelBehaviour, roll: float) -> str | None:
        """``behaviour``'s error kind for this request to ``model`` (None: a model list), or None.

        Counts the model's requests for ``error_draws: spread``; ``roll`` is the request's seeded draw.
        A behaviour that cannot fail (such as one ``for_turn`` stripped of its faults) is not counted.
        """
        if not behaviour.may_fail():
            return None
        nth = self._asked[model] = self._asked.get(model, 0) + 1
        return behaviour.injected_error(self.uptime_s(), roll, nth)

    def begin(self, request_id: str, path: str) -> RequestRecord:
        """Log a request on arrival; the handler completes the record in place."""
        record = RequestRecord(request_id=request_id, path=path)
        self.requests.append(record)
        return record


def create_app(scenario: Scenario, *, clock: Callable[[], float] | None = None) -> web.Application:
    """Build the simulator app for ``scenario``; ``clock`` drives outage windows.

    Serve it with ``handler_cancellation=True`` (``start_sim`` does) so that a
    stream stalled "forever" ends when its client hangs up.
    """
    state = SimState(scenario, clock or time.monotonic)
    app = web.Application(middlewares=[_openai_style_errors])
    app[STATE_KEY] = state
    app.router.add_get("/_sim/health", _health)
    app.router.add_get("/_sim/requests", _list_requests)
    app.router.add_delete("/_sim/requests", _clear_requests)
    openai_chat.register(app, state)
    openai_realtime.register(app, state)
    gemini.register(app, state)
    gemini_live.register(app, state)
    openai_responses.register(app, state)
    anthropic.register(app, state)
    models.register(app, state)
    openai_audio.register(app, state)
    openai_webrtc.register(app, state)
    return app


async def _health(request: web.Request) -> web.Response:
    """Liveness check for scripts waiting on the simulator."""
    return web.Response(text="ok")


async def _list_requests(request: web.Request) -> web.Response:
    """The request log as a JSON list, oldest first."""
    records = [asdict(record) for record in request.app[STATE_KEY].requests]
    return web.json_response(records)


async def _clear_requests(request: web.Request) -> web.Response:
    """Empty the request log (benchmarks clear it between phases)."""
    request.app[STATE_KEY].requests.clear()
    return web.json_response({"cleared": True})


@web.middleware
async def _openai_style_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Answer routing errors and handler bugs in OpenAI's error shape.

    Clients of an OpenAI look-alike parse every error body as JSON, so even a
    404 for a mistyped path must look like OpenAI's ``Invalid URL`` answer.
    """
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return openai_http.plain_error(404, f"Invalid URL ({request.method} {request.path})")
    except web.HTTPMethodNotAllowed:
        return openai_http.plain_error(405, f"Invalid method for URL ({request.method} {request.path})")
    except web.HTTPException:
        raise
    except Exception:
        # A simulator bug must cost one request, not the server.
        log.exception("simulator handler failed", extra=fields(method=request.method, path=request.path))
        return openai_http.plain_error(500, "The simulator failed while handling this request.", "server_error")


@dataclass
class SimServer:
    """A running simulator: its base URL (no trailing slash) and a way to stop it."""

    runner: web.AppRunner
    host: str
    port: int
    closed: bool = False

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:8123`` (append ``/v1`` for SDKs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def app(self) -> web.Application:
        """The aiohttp application being served."""
        return self.runner.app

    async def close(self) -> None:
        """Stop listening and cut any stream still running; safe to call twice."""
        if not self.closed:
            self.closed = True
            await self.runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


async def start_sim(
    scenario: Scenario, host: str = LOOPBACK, port: int = 0, *, clock: Callable[[], float] | None = None
) -> SimServer:
    """Serve ``scenario`` on ``host:port`` in the running loop; port 0 picks a free port."""
    runner = web.AppRunner(
        create_app(scenario, clock=clock),
        # Cancel a handler when its client goes away, so "stall forever" ends then.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return SimServer(runner=runner, host=host, port=bound_port)


def serve(listen: str, scenario: Scenario, on_ready: Callable[[str], Any] | None = None) -> None:
    """Run the simulator on ``listen`` (``host:port``) until SIGINT or SIGTERM.

    ``on_ready(url)`` is called once the socket is bound, which is how a caller
    learns the port when ``listen`` ends in ``:0``. Raises ValueError for a malformed
    ``listen``, OSError if the address cannot be bound; returns normally on a signal.
    """
    host, port = listen_address(listen)
    try:
        loop.run(_serve_until_signal(host, port, scenario, on_ready))
    except KeyboardInterrupt:
        # Only reachable if Ctrl-C lands before the signal handlers are installed.
        pass


def listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` by the config's ``server.listen`` rule, except that an empty host is loopback.

    The daemon refuses ``:9477`` (a server would read it as every interface);
    the simulator has always read ``:8080`` as loopback, where it belongs.
    """
    try:
        return parse_listen(listen, default_host=LOOPBACK)
    except ValueError as exc:
        raise ValueError(f"listen address {listen!r} {exc}") from None


async def _serve_until_signal(
    host: str, port: int, scenario: Scenario, on_ready: Callable[[str], Any] | None
) -> None:
    """Serve until a stop signal arrives, then close cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or a platform without loop signal support
    server = await start_sim(scenario, host, port)
    try:
        if on_ready is not None:
            on_ready(server.url)
        await stop.wait()
    finally:
        await server.close()
