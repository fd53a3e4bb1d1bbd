"""Faults of our own are not blamed on providers (issue 17).

A probe that cannot open its socket because modelwatch is out of file
descriptors, or whose TLS check fails because our own trust store is empty
(``SSL_CERT_FILE`` naming a missing bundle), never reached the provider: it is
raised as a LocalFault, counted by reason, and recorded as no provider outcome.
And a private CA put into ``SSL_CERT_FILE`` (the documented way) is trusted.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web
from conftest import TEST_KEY, free_port, write_config
from daemon_helpers import http_get, metric, rows, wait_for

from modelwatch.config import load_config
from modelwatch.outcomes import LocalFault
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it


def test_no_file_descriptor_left_is_a_local_fault(tmp_path, sim_url):
    job = load_config(write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"})).jobs[0]

    async def main() -> None:
        async with new_http_session() as http:
            ok = await run_probe(job, http, prober_for("openai", "rest"))
            assert ok.outcome == "ok"
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            in_use = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 1, hard))
            fillers = []
            try:
                while True:  # take every descriptor left below the limit: none for a socket
                    try:
                        fillers.append(os.open(os.devnull, os.O_RDONLY))
                    except OSError:
                        break
                with pytest.raises(LocalFault) as info:
                    await run_probe(job, http, prober_for("openai", "rest"))
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert info.value.reason == "open_files"

    asyncio.run(main())


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS chat endpoint on loopback with a self-signed certificate (a private CA)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"OK"},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="text/event-stream")

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        box["port"] = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        box["runner"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()),
                              daemon=True)
    thread.start()
    started.wait(10)
    yield f"https://127.0.0.1:{box['port']}", cert
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def _run(tmp_path: Path, url: str, bundle: str, ca_dir: str | None = None) -> tuple[str, list[dict], str]:
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", url, {"a": "m"}, interval="300ms", listen=f"127.0.0.1:{port}",
                       ptype="openai-compatible", key=TEST_KEY)
    env = {**os.environ, "SSL_CERT_FILE": bundle}
    if ca_dir is not None:
        env["SSL_CERT_DIR"] = ca_dir
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(base + "/-/healthy") == "OK\n", 20)
        text = wait_for(lambda: (t := http_get(base + "/metrics")) and (
            metric(t, "modelwatch_probes_local_failures_total") >= 3
            or metric(t, "modelwatch_probes_total") >= 3) and t, 15)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    return text, rows(tmp_path / "modelwatch.db"), proc.stderr.read()


def test_an_empty_trust_store_is_our_fault_not_the_providers(tmp_path, tls_server):
    url, _ = tls_server
    text, stored, log = _run(tmp_path, url, str(tmp_path / "no-such-bundle.pem"), str(tmp_path / "no-such-dir"))
    assert metric(text, "modelwatch_probes_local_failures_total", reason="trust_store") >= 3
    assert metric(text, "modelwatch_probes_total") == 0  # no provider outcome at all
    assert stored == []
    assert log.count("probes fail inside modelwatch") == 1  # once, not per probe


def test_an_untrusted_certificate_with_a_working_trust_store_is_no_local_fault(tmp_path, tls_server):
    """SSL_CERT_FILE alone missing leaves the system CA directory in use: the server's
    certificate is simply not trusted, which the provider's side must answer for."""
    url, _ = tls_server
    text, stored, _ = _run(tmp_path, url, str(tmp_path / "no-such-bundle.pem"))
    assert metric(text, "modelwatch_probes_local_failures_total") == 0
    assert stored and {(r["outcome"], r["error_code"]) for r in stored} == {("connect_error", "tls")}


def test_a_private_ca_in_ssl_cert_file_is_trusted(tmp_path, tls_server):
    url, cert = tls_server
    text, stored, _ = _run(tmp_path, url, str(cert))
    assert metric(text, "modelwatch_probes_total", outcome="ok") >= 3
    assert stored and {r["outcome"] for r in stored} == {"ok"}


def test_probe_command_says_a_local_fault_is_ours(tmp_path, tls_server):
    url, _ = tls_server
    cfg = write_config(tmp_path / "c.yaml", url, {"a": "m"}, ptype="openai-compatible")
    env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "no-such-bundle.pem"),
           "SSL_CERT_DIR": str(tmp_path / "no-such-dir")}
    proc = subprocess.run([sys.executable, "-m", "modelwatch", "probe", "-c", str(cfg), "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and proc.stdout == ""  # no provider outcome printed as a row
    assert "a rest: not probed, a fault of our own (trust_store)" in proc.stderr
