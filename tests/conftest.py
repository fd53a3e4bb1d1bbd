"""Shared fixtures: the real simulator in its own process, configs and databases on disk."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SCENARIO = DATA / "scenario.yaml"
TEST_KEY = "sk-test-Fixture0000111122223333"


def start_process(args: list[str], pattern: str, timeout: float = 20.0,
                  env: dict | None = None) -> tuple[subprocess.Popen, re.Match]:
    """Start a modelwatch subprocess and wait for a stdout line matching ``pattern``."""
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(pattern, line)
        if match:
            return proc, match
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start: {proc.stderr.read()}")


@pytest.fixture(scope="session")
def sim_url():
    """URL of a simulator running the test scenario in its own process (truthful timing)."""
    proc, match = start_process(["sim", "--listen", "127.0.0.1:0", "--scenario", str(SCENARIO)],
                                r"listening on (\S+)")
    yield match.group(1)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def voice_sim():
    """A simulator of its own running the voice-agent scenario (tests/data/voice-scenario.yaml)."""
    proc, match = start_process(["sim", "--listen", "127.0.0.1:0", "--scenario", str(DATA / "voice-scenario.yaml")],
                                r"listening on (\S+)")
    yield match.group(1)
    proc.terminate()
    proc.wait(10)


def sim_requests(url: str) -> list[dict]:
    """The simulator's request log, oldest first."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/_sim/requests") as resp:
        return json.load(resp)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, sim_url: str, targets: dict[str, str], *, interval: str = "1s",
                 timeout: str = "3s", extra_probe: str = "", listen: str = "127.0.0.1:0",
                 db: Path | None = None, key: str = TEST_KEY, location: str | None = None,
                 ptype: str = "openai", enable_reload: bool = True) -> Path:
    """A config with one rest probe per ``{target: model}`` against the simulator."""
    lines = [f"storage: {{path: {db or path.parent / 'modelwatch.db'}}}",
             f"server: {{listen: '{listen}', enable_reload: {str(enable_reload).lower()}}}"]
    if location:
        lines.append(f"location: {location}")
    lines += [f"defaults: {{interval: {interval}, timeout: {timeout}}}",
              "providers:",
              f"  sim: {{type: {ptype}, base_url: '{sim_url}/v1', api_key: '{key}'}}",
              "targets:"]
    for name, model in targets.items():
        lines.append(f"  - {{name: {name}, provider: sim, model: {model}, "
                     f"probes: [{{kind: rest{extra_probe}}}]}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "modelwatch.db"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool from Debian's prometheus package (installed by .ci/run)."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install -y prometheus"
    return path


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def with_sim(scenario, body, **sim_options):
    """Run ``await body(session, url)`` against a fresh in-process simulator; return its result."""
    import asyncio

    import aiohttp

    from modelwatch.sim import start_sim

    async def main():
        server = await start_sim(scenario, port=0, **sim_options)
        try:
            async with aiohttp.ClientSession() as session:
                return await body(session, server.url)
        finally:
            await server.close()

    return asyncio.run(main())


def feed_capture(stream, pieces: list[bytes]):  # noqa: ANN001, ANN201 - any EventStream
    """Feed SSE bytes to a stream decoder as the probe does (``probes.http.read_stream``).

    Returns (index of the event that carried the first content or -1, the
    failure the stream amounts to or None).
    """
    from modelwatch.outcomes import ProbeFailure
    from modelwatch.sse import SSEDecoder

    decoder, first, n = SSEDecoder(), -1, 0
    try:
        for piece in pieces:
            for event in decoder.feed(piece):
                if stream.feed(event.data, event.event) and first < 0:
                    first = n
                n += 1
                if stream.finished:
                    return first, stream.verdict()
    except ProbeFailure as exc:
        return first, exc
    return first, stream.verdict()


def split_in(raw: bytes, pieces: int) -> list[bytes]:
    """``raw`` cut into ``pieces`` nearly equal parts."""
    size = -(-len(raw) // pieces)
    return [raw[start:start + size] for start in range(0, len(raw), size)]


def run_jobs(jobs, http_factory=None) -> dict:  # noqa: ANN001
    """Run each job's probe once, concurrently, as ``modelwatch probe`` does; results by target."""
    import asyncio

    from modelwatch.probes import prober_for
    from modelwatch.probes.base import goodbyes, new_http_session, run_probe

    async def go():
        async with (http_factory or new_http_session)() as http:
            results = await asyncio.gather(*(run_probe(j, http, prober_for(j.provider.type, j.probe.kind))
                                             for j in jobs))
            await goodbyes(5.0)  # as `modelwatch probe` does: no call left open behind
        return {r.target: r for r in results}
    return asyncio.run(go())


def sim_log(sim_url: str) -> dict[str, dict]:
    """The simulator's request log, by request id."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        return {r["request_id"]: r for r in json.load(resp)}


def ttft_reading_error(result, sim: dict) -> float:  # noqa: ANN001
    """How much later than the truth a probe read its first token, in seconds.

    The simulator times from the moment the request (or upgrade) reached it;
    the probe's ``ttft_s`` counts from its own start, so it also holds the TCP
    connect, which the simulator cannot see. Both read the same monotonic
    clock, so ``ttft_s - connect_s - actual_ttft_s`` is the request's trip out,
    the first token's trip back and our own reading delay: never negative, and
    a few ms at most on loopback if the probe reads truthfully.
    """
    return result.ttft_s - (result.connect_s or 0.0) - sim["actual_ttft_s"]
