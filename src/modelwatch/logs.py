"""Logging: one logfmt line per event, formatted and written off the event loop.

The loop thread only enqueues records; a listener thread formats (with secret
redaction) and writes them. A line is
``ts=... level=info logger=modelwatch.daemon msg="probe failed" target=t error="..."``:
``msg`` always quoted, any other value quoted (with ``\\"``, ``\\\\``, ``\\n``
escapes) only when it holds a space, a quote, ``=`` or a control character, so
one event is always one line, exceptions included (type, message and where it
was raised; never a multi-line traceback).

Call sites say the event in words and pass its fields explicitly:
``log.info("reloaded", extra=fields(probes=12))``. A string value is written as
it is (quoted only when it must be), anything else as ``str(value)``; records
without fields (a third-party library's) are one message.

Under journald (stderr is the stream ``JOURNAL_STREAM`` names, compared by
device and inode as systemd.exec(5) says) each line starts with its syslog
priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so
``journalctl -p err`` works, and carries no ``ts=``: journald stamps lines itself.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from typing import Any, TextIO

from modelwatch.secrets import redact

LEVELS = ("debug", "info", "warning", "error")
_NOISY = ("aiohttp", "asyncio", "urllib3", "httpx", "httpcore", "websockets", "openai")
# syslog priorities (RFC 5424) journald reads from a "<N>" line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# Characters that force quotes: space, quote, '=', backslash, C0/C1 controls, Unicode line breaks.
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TO_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


def quote(value: str, always: bool = False) -> str:
    """A logfmt value: as is when it is one plain token, else double-quoted with escapes."""
    if value and not always and not _NEEDS_QUOTES.search(value):
        return value
    return '"' + _TO_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(0), f"\\u{ord(m.group(0)):04x}"),
                                value) + '"'


class KeyValueFormatter(logging.Formatter):
    """A record as one redacted logfmt line; for journald with a priority prefix and no ``ts``."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", f"logger={quote(record.name)}",
                 "msg=" + quote(redact(_message(record)), always=True)]
        values = getattr(record, "fields", None)
        if isinstance(values, dict):
            parts += [f"{key}={quote(redact(_text(value)))}" for key, value in values.items()]
        parts += [f"{key}={quote(redact(value))}" for key, value in exception_fields(record)]
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>" + " ".join(parts)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"ts={stamp}.{int(record.msecs):03d}Z " + " ".join(parts)


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra=`` of a log call: the line's ``key=value`` fields, in this order."""
    return {"fields": values}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad call site must still give a line, not a traceback
        return f"{record.msg!s} args={record.args!r}"


def exception_fields(record: logging.LogRecord) -> list[tuple[str, str]]:
    """``exception="Type: message"`` and ``exception_at=file.py:123`` (where it was raised)."""
    out = []
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        out.append(("exception", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            code = tb.tb_frame.f_code
            out.append(("exception_at", f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}"))
    if record.stack_info:
        out.append(("stack", record.stack_info))
    return out


def journald_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to the journal: ``JOURNAL_STREAM`` names its device:inode.

    systemd sets JOURNAL_STREAM for a service whose stderr goes to the journal,
    but a child whose stderr was redirected inherits it; only the match counts.
    """
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


class _LoopQueueHandler(logging.handlers.QueueHandler):
    """Enqueue the record untouched: formatting happens in the listener thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route all logging through a queue to ``stream`` (stderr) at ``level``."""
    global _listener
    stop_logging()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(journald=journald_stream(handler.stream)))
    q: queue.SimpleQueue = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [_LoopQueueHandler(q)]
    root.setLevel(level.upper())
    logging.getLogger("modelwatch").setLevel(level.upper())
    for name in _NOISY:
        # Third-party debug output can carry headers or keyed URLs: never below WARNING.
        logging.getLogger(name).setLevel(logging.WARNING)
    _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    _listener.start()


def stop_logging() -> None:
    """Flush and stop the listener thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
