"""Logging: one ``key=value`` line per event, formatted and written off the event loop.

The loop thread only enqueues records; a listener thread formats (with secret
redaction) and writes them. Under systemd (``JOURNAL_STREAM`` set) lines carry
no timestamp, since journald adds its own.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import TextIO

from modelwatch.secrets import redact

LEVELS = ("debug", "info", "warning", "error")
_NOISY = ("aiohttp", "asyncio", "urllib3", "httpx", "httpcore", "websockets", "openai", "schedule")


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=modelwatch.store msg="..." k=v`` on a single, redacted line."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" exception={type(exc).__name__}: {exc}"
        text, _, fields = message.partition(" ")
        head = f'level={record.levelname.lower()} logger={record.name} msg="{text}'
        # Messages are "event words key=value ...": quote the words, keep the pairs.
        words, pairs = _split_fields(fields)
        head += (" " + words if words else "") + '"' + (" " + pairs if pairs else "")
        if self.with_time:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            head = f"ts={stamp}.{int(record.msecs):03d}Z {head}"
        return redact(" ".join(head.split("\n")))


def _split_fields(rest: str) -> tuple[str, str]:
    parts = rest.split(" ")
    for i, part in enumerate(parts):
        if "=" in part:
            return " ".join(parts[:i]), " ".join(parts[i:])
    return rest, ""


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
    handler.setFormatter(KeyValueFormatter(with_time="JOURNAL_STREAM" not in os.environ))
    q: queue.SimpleQueue = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [_LoopQueueHandler(q)]
    root.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
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
