"""systemd integration: the unit's hardening score, sd_notify and the loop watchdog.

There is no PID-1 systemd here, so the service manager's side is played by the
test: a unix datagram socket bound where ``$NOTIFY_SOCKET`` points, and a
``$CREDENTIALS_DIRECTORY`` laid out as ``LoadCredential=`` would.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TEST_KEY, free_port
from daemon_helpers import http_get, rows, wait_for
from test_rollups import database_before_rollups, synthetic_rows


from modelwatch.systemd import notify, watchdog, watchdog_interval

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

UNIT = Path(__file__).parent.parent / "systemd" / "modelwatch.service"


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """Path of systemd-analyze (Debian's systemd package; `--offline` needs systemd >= 250)."""
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: apt-get install -y systemd"
    return path


def test_unit_hardening_scores_at_most_2(systemd_analyze):
    done = subprocess.run([systemd_analyze, "security", "--offline=yes", "--threshold=20", str(UNIT)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert exposure, done.stdout
    assert float(exposure.group(1)) <= 2.0, done.stdout


def test_unit_verifies_apart_from_the_installed_binary(systemd_analyze):
    """``verify`` checks that ExecStart exists; everything else in the unit must be clean."""
    done = subprocess.run([systemd_analyze, "verify", str(UNIT)], capture_output=True, text=True,
                          timeout=30, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "/usr/bin/modelwatch is not executable" not in line]
    assert problems == []


def test_unit_declares_what_the_daemon_implements():
    unit = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                 "WatchdogSec=30", "StateDirectory=modelwatch",
                 "LoadCredential=openai:/etc/modelwatch/credentials/openai"):
        assert f"\n{line}\n" in unit, line


class NotifyListener:
    """The service manager's end of ``$NOTIFY_SOCKET``: a thread collects (arrival, message).

    It reads as fast as systemd would: a unix datagram socket queues only about ten
    messages, after which a non-blocking sender gets EAGAIN.
    """

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._closing = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.count(line):
            assert time.monotonic() < deadline, f"no {line} within {timeout}s: {self.messages}"
            time.sleep(0.01)

    def count(self, line: str) -> int:
        return sum(line in m.splitlines() for _, m in list(self.messages))

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def short_dir():
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mw-sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_daemon_notifies_ready_watchdog_and_stopping(sim_url, tmp_path, short_dir):
    """The real daemon under a fake service manager, its key loaded from a credential."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "openai").write_text(TEST_KEY + "\n")
    port = free_port()
    db = tmp_path / "modelwatch.db"
    config = tmp_path / "modelwatch.yaml"
    config.write_text(
        f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {interval: 500ms, timeout: 3s}\n"
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1', api_key_file: openai}}\n"
        "targets:\n  - {name: healthy, provider: sim, model: healthy, probes: [{kind: rest}]}\n")
    listener = NotifyListener(str(short_dir / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "200000",
           "CREDENTIALS_DIRECTORY": str(creds)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        listener.wait_for("READY=1", 20)
        assert http_get(f"http://127.0.0.1:{port}/-/healthy") == "OK\n"  # serving by READY=1
        time.sleep(1.0)
        pings = listener.count("WATCHDOG=1")
        # every 100 ms: several in a second, and never more than the interval allows
        assert 3 <= pings <= (time.monotonic() - started) / 0.1 + 2, listener.messages
        assert listener.count("READY=1") == 1
        proc.send_signal(signal.SIGHUP)  # what ExecReload= does: RELOADING=1, then READY=1 again
        listener.wait_for("RELOADING=1", 15)
        wait_for(lambda: listener.count("READY=1") == 2, 15)
        states = [line for _, m in listener.messages for line in m.splitlines()
                  if line in ("READY=1", "RELOADING=1")]
        assert states == ["READY=1", "RELOADING=1", "READY=1"]
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for _, m in listener.messages)
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 15)
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    ok = rows(db, "SELECT outcome FROM probe_results WHERE outcome = 'ok'")
    assert ok, "no successful probe: the key from $CREDENTIALS_DIRECTORY was not used"
    assert listener.messages[-1][1] == "STOPPING=1"  # nothing announced after it


def test_a_reload_asked_for_while_starting_waits_for_ready(sim_url, tmp_path, short_dir):
    """SIGHUP during a long start-up migration: READY=1 still comes only once the daemon is ready,
    and the reload runs after it, instead of answering READY=1 early and arming the watchdog."""
    db = tmp_path / "modelwatch.db"
    database_before_rollups(db, synthetic_rows(150_000))
    port = free_port()
    config = tmp_path / "modelwatch.yaml"
    config.write_text(
        f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {interval: 500ms, timeout: 3s}\n"
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: '{TEST_KEY}'}}\n"
        "targets:\n  - {name: healthy, provider: sim, model: healthy, probes: [{kind: rest}]}\n")
    listener = NotifyListener(str(short_dir / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(short_dir / "notify")}
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        listener.wait_for("STATUS=rolling up stored results", 30)  # the migration is under way
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("READY=1", 60)
        wait_for(lambda: listener.count("READY=1") == 2, 15)
        states = [line for _, m in listener.messages for line in m.splitlines()
                  if line in ("READY=1", "RELOADING=1") or line.startswith("EXTEND_TIMEOUT_USEC=")]
        first_ready = states.index("READY=1")
        assert all(s.startswith("EXTEND_TIMEOUT_USEC=") for s in states[:first_ready]), states
        assert states[first_ready:] == ["READY=1", "RELOADING=1", "READY=1"], states
        assert http_get(f"http://127.0.0.1:{port}/metrics").count(
            "modelwatch_config_last_reload_successful 1.0") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert "Traceback" not in err and "exception" not in err.lower(), err
    assert "reload asked for while starting" in err


def test_abstract_socket_names_work():
    name = f"modelwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener("\0" + name)
    try:
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        listener.wait_for("READY=1", 5)
        assert [m for _, m in listener.messages] == ["READY=1"]
    finally:
        listener.close()


def test_notify_is_a_noop_without_socket_and_never_raises(short_dir):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(short_dir / "nobody-listens")}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/" + "x" * 300}) is False  # too long for AF_UNIX


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_goes_silent_while_the_loop_is_blocked(short_dir):
    """A blocked loop sends no ping: what lets systemd's watchdog catch a stuck daemon."""
    listener = NotifyListener(str(short_dir / "notify"))
    env = {"NOTIFY_SOCKET": str(short_dir / "notify")}
    sent: list[tuple[float, bool]] = []

    def send(message: str) -> None:  # the real datagram, stamped when the loop sends it
        sent.append((time.monotonic(), notify(message, env)))

    async def main() -> tuple[float, float]:
        task = asyncio.create_task(watchdog(0.02, send))
        await asyncio.sleep(0.2)
        blocked_from = time.monotonic()
        time.sleep(0.5)  # noqa: ASYNC251 - the stuck loop: a blocking call on it
        blocked_until = time.monotonic()
        await asyncio.sleep(0.2)
        task.cancel()
        return blocked_from, blocked_until

    try:
        blocked_from, blocked_until = asyncio.run(main())
        listener.wait_for("WATCHDOG=1", 5)
        time.sleep(0.2)  # the last datagrams reach the listener thread
    finally:
        listener.close()
    stamps = [t for t, _ in sent]
    assert [t for t in stamps if blocked_from <= t < blocked_until] == []
    assert any(t < blocked_from for t in stamps) and any(t >= blocked_until for t in stamps)
    assert all(ok for _, ok in sent)
    assert listener.count("WATCHDOG=1") == len(sent)


def test_watchdog_goes_silent_once_the_scheduler_is_dead(short_dir):
    """A loop that runs but schedules nothing is as stuck as a blocked one: no more pings."""
    listener = NotifyListener(str(short_dir / "notify"))
    env = {"NOTIFY_SOCKET": str(short_dir / "notify")}

    async def scheduler() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("a bug")

    async def main() -> float:
        scheduling = asyncio.create_task(scheduler())
        pinging = asyncio.create_task(watchdog(0.02, lambda m: notify(m, env),
                                               alive=lambda: not scheduling.done()))
        await asyncio.gather(scheduling, return_exceptions=True)
        died = time.monotonic()
        await asyncio.sleep(0.3)
        pinging.cancel()
        return died

    try:
        died = asyncio.run(main())
        time.sleep(0.2)
    finally:
        listener.close()
    stamps = [t for t, m in listener.messages if m == "WATCHDOG=1"]
    assert any(t < died for t in stamps)
    assert [t for t in stamps if t > died + 0.05] == []
