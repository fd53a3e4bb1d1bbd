"""Logs suit journald: one logfmt line per event, levels, priority prefixes, ``--log-level``.

The formatter is tested record by record (levels, quoting, escapes, exceptions,
redaction); ``setup_logging`` against real files whose device and inode
``JOURNAL_STREAM`` names or does not; and the real daemon, with ``--log-level``
before and after the command, probing a small chat-completions server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web

from conftest import free_port, write_config
from daemon_helpers import http_get, rows, wait_for
from modelwatch.logs import KeyValueFormatter, fields, journald_stream, setup_logging, stop_logging
from modelwatch.secrets import REDACTED, Secret

# key=value, where a quoted value uses JSON's escapes: what a logfmt reader (Loki, humanlog) parses.
PAIR = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s|$)')


def parse(line: str) -> dict[str, str]:
    """A logfmt line as a dict; fails if any part of it is not a key=value pair."""
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, f"not logfmt: {line!r}"
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def record(msg: str, *args: object, level: int = logging.INFO, exc_info=None,  # noqa: ANN001
           **values: object) -> logging.LogRecord:
    """A record as ``log.info(msg, *args, extra=fields(**values))`` makes it."""
    rec = logging.LogRecord("modelwatch.daemon", level, "daemon.py", 1, msg, args, exc_info)
    if values:
        rec.__dict__.update(fields(**values))
    return rec


def fmt(msg: str, *args: object, journald: bool = False, **kw) -> str:  # noqa: ANN003
    return KeyValueFormatter(journald=journald).format(record(msg, *args, **kw))


@pytest.mark.parametrize("level, name, prefix", [
    (logging.DEBUG, "debug", "<7>"), (logging.INFO, "info", "<6>"),
    (logging.WARNING, "warning", "<4>"), (logging.ERROR, "error", "<3>"),
    (logging.CRITICAL, "critical", "<2>"),
])
def test_levels_and_journald_priority_prefix(level, name, prefix):
    plain = fmt("started", url="http://x", level=level)
    assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=", plain), plain
    assert not plain.startswith("<")
    assert parse(plain) == {"ts": plain[3:27], "level": name, "logger": "modelwatch.daemon",
                            "msg": "started", "url": "http://x"}
    journal = fmt("started", url="http://x", level=level, journald=True)
    assert journal.startswith(prefix + "level=") and "ts=" not in journal
    assert parse(journal[len(prefix):])["level"] == name


def test_values_are_quoted_logfmt_style_never_python_repr():
    line = fmt("probe failed", target="gpt 4o", outcome="auth_error", http_status=401,
               error="Incorrect key 'x' \"y\" a=b c\\d", first="", spent_usd=f"{1.5:.4f}")
    assert "error='" not in line and "first=''" not in line
    assert ' target="gpt 4o" outcome=auth_error http_status=401 ' in line
    assert r' error="Incorrect key ' + "'x'" + r' \"y\" a=b c\\d"' in line
    parsed = parse(line)
    assert parsed["msg"] == "probe failed"
    assert parsed["error"] == "Incorrect key 'x' \"y\" a=b c\\d"
    assert parsed["first"] == "" and parsed["spent_usd"] == "1.5000"


def test_fields_keep_their_order_and_non_strings_print_as_str():
    line = fmt("reload failed", problems=2, first=["a b"], tags=None, mode="fast")
    assert parse(line) == {**parse(line), "problems": "2", "first": "['a b']", "tags": "None", "mode": "fast"}
    assert line.index("problems=") < line.index("first=") < line.index("tags=") < line.index("mode=")


def test_the_message_is_never_parsed_for_fields():
    """Fields are explicit at the call site: "key=value" words in a message stay in the message."""
    parsed = parse(fmt("limit=%d reached for %s", 8, "p"))
    assert parsed["msg"] == "limit=8 reached for p" and "limit" not in parsed


@pytest.mark.parametrize("value", ["two\nlines", "cr\rlf", "tab\there", "sep\u2028line", "nul\x00c1\x85",
                                   "trailing\n"])
def test_one_line_per_record_whatever_the_values(value):
    line = fmt("probe failed words %s", value, error=value)
    assert len(line.splitlines()) == 1 and "\n" not in line and "\r" not in line
    parsed = parse(line)
    assert parsed["error"] == value and parsed["msg"] == f"probe failed words {value}"


def test_exceptions_render_on_one_line_with_where_they_were_raised():
    def fail() -> None:
        raise ValueError("boom\n  on a second line")

    try:
        fail()
    except ValueError:
        line = fmt("probe run failed", target="t", level=logging.ERROR, exc_info=sys.exc_info())
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    parsed = parse(line)
    assert parsed["exception"] == "ValueError: boom\n  on a second line"
    assert re.fullmatch(r"test_logs\.py:\d+", parsed["exception_at"]), parsed


def test_a_message_that_does_not_fit_its_arguments_still_gives_one_line():
    """A third-party record with a broken template: one line, never a traceback."""
    for msg, args in (("bad %d", ("x",)), ("too few %s %s", ("a",)), ("too many %s", ("a", "b"))):
        line = fmt(msg, *args)
        assert len(line.splitlines()) == 1 and parse(line)["msg"], line


def test_every_value_and_the_message_are_redacted():
    key = "sk-proj-LogCanary0123456789abcdefQZLG"
    Secret(key)
    line = fmt("probe failed echo %s", key.upper(), error=f"bad key {key}",
               request=f"req_1 {key[:6]}…{key[-4:]}")
    assert "LogCanary".lower() not in line.lower() and "QZLG" not in line, line
    assert line.count(REDACTED) == 3


@pytest.fixture
def restore_logging():
    """Put the root logger back as pytest had it after setup_logging replaced its handlers."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("modelwatch").level)
    yield
    stop_logging()
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("modelwatch").setLevel(saved[2])


def log_to(path: Path, journal_stream: str | None, monkeypatch, level: str = "info") -> list[str]:  # noqa: ANN001
    """Log one line per level through setup_logging into ``path``; the lines written."""
    if journal_stream is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    with path.open("w") as stream:
        setup_logging(level, stream)
        log = logging.getLogger("modelwatch.test")
        for name in ("debug", "info", "warning", "error"):
            getattr(log, name)("event", extra=fields(at=name))
        stop_logging()
    return path.read_text().splitlines()


def device_inode(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_naming_stderr_gives_prefixes_and_no_timestamp(tmp_path, monkeypatch,
                                                                      restore_logging):
    out = tmp_path / "journal.log"
    out.touch()
    lines = log_to(out, device_inode(out), monkeypatch, "debug")
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"], lines
    assert not any("ts=" in line for line in lines)


@pytest.mark.parametrize("journal", ["other", None, "garbage", ""])
def test_journal_stream_naming_another_file_or_none_keeps_timestamps(tmp_path, monkeypatch,
                                                                     restore_logging, journal):
    other = tmp_path / "other"
    other.touch()
    value = device_inode(other) if journal == "other" else journal
    lines = log_to(tmp_path / "stderr.log", value, monkeypatch)
    assert len(lines) == 3, lines  # info and up
    assert all(line.startswith("ts=") for line in lines), lines
    assert [parse(line)["level"] for line in lines] == ["info", "warning", "error"]


def test_journald_stream_needs_a_real_file(monkeypatch):
    import io

    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert journald_stream(io.StringIO()) is False


# --- the real daemon -------------------------------------------------------------------------

CHUNKS = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
          {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}]


async def chat(request: web.Request) -> web.StreamResponse:
    """A streamed Chat Completions answer, as an OpenAI-compatible server gives it."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in CHUNKS:
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", **chunk}
        await resp.write(f"data: {json.dumps(body)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest.fixture(scope="module")
def chat_server():
    """The chat server on a loopback port, run by its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def daemon_log(tmp_path: Path, server: str, before: list[str], after: list[str],
               journal: str | None) -> list[str]:
    """Run the daemon until it stored a probe, stop it; the lines it wrote to stderr (a file)."""
    port = free_port()
    db = tmp_path / "logs.db"
    cfg = write_config(tmp_path / "c.yaml", server, {"t-chat": "m"}, listen=f"127.0.0.1:{port}",
                       db=db, ptype="openai-compatible")
    err_path = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err_path.open("w") as err:
        if journal == "match":
            env["JOURNAL_STREAM"] = device_inode(err_path)
        elif journal == "other":
            env["JOURNAL_STREAM"] = device_inode(cfg)
        proc = subprocess.Popen([sys.executable, "-m", "modelwatch", *before, "run", "-c", str(cfg), *after],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/-/healthy") == "OK\n"
                     or proc.poll() is not None, 20)
            assert proc.poll() is None, err_path.read_text()
            wait_for(lambda: db.exists() and rows(db), 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    return err_path.read_text().splitlines()


@pytest.mark.parametrize("before, after, journal, shown", [
    (["--log-level", "debug"], [], None, {"debug", "info"}),
    ([], ["--log-level", "debug"], "match", {"debug", "info"}),
    ([], [], "other", {"info"}),
    (["--log-level", "warning"], [], None, set()),
    (["--log-level", "debug"], ["--log-level", "warning"], None, set()),  # the later flag wins
])
@pytest.mark.slow
def test_log_level_before_or_after_the_command_filters_the_daemon(tmp_path, chat_server, before,
                                                                  after, journal, shown):
    lines = daemon_log(tmp_path, chat_server, before, after, journal)
    prefixed = journal == "match"
    bodies = [line[3:] if prefixed else line for line in lines]
    assert all(line.startswith("<") == prefixed for line in lines), lines
    assert all(line.startswith("ts=") != prefixed for line in lines), lines
    levels = {parse(body)["level"] for body in bodies}
    assert levels == shown, lines
    messages = {parse(body)["msg"] for body in bodies}
    assert ("probe ok" in messages) == ("debug" in shown), messages
    assert ("started" in messages) == ("info" in shown), messages
    if prefixed:
        assert {line[:3] for line in lines} == {"<7>", "<6>"}
