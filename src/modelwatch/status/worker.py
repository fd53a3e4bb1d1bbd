"""The status site's worker process: the functions the daemon calls in it.

Reading 90 days of rollups and rendering a thousand targets is CPU work in Python; in a
thread of the daemon it would hold the GIL and delay every probe's reading by up to the
interpreter's 5 ms switch interval. In a process of its own it runs on another core and the
event loop only copies finished bytes.

Inside the process, snapshots are built in a thread of their own, so requests keep being
answered from the last snapshot while the next one is built (at 1,000 targets a build takes
seconds); a new snapshot replaces the old one whole (:class:`~modelwatch.status.site.Site`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import threading
import time
from collections.abc import Sequence

from modelwatch.status.site import GZIP_LEVEL, Answer, Site
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder

GZIP_FROM_BYTES = 2048
_site: Site | None = None
_builder: threading.Thread | None = None
_started = float("-inf")  # monotonic time the last build began
_last: tuple[str, float] | None = None  # the last snapshot's as_of, and how long it took
_error: str | None = None  # why the last build failed, until refresh() reports it
_pending: tuple[Settings, tuple[Series, ...] | None] | None = None
_due = False  # a reload came: build next, whatever every_s says
_lock = threading.Lock()


def start(db_path: str, settings: Settings, series: Sequence[Series] | None) -> None:
    """The process initializer: the site of this database."""
    global _site
    _site = Site(SnapshotBuilder(db_path, settings, series))


def configure(settings: Settings, series: Sequence[Series] | None) -> None:
    """A reload: new settings and probes, taken by the next build (never in the middle of one),
    which starts as soon as no build runs."""
    global _pending, _due
    with _lock:
        _pending = (settings, None if series is None else tuple(series))
        _due = True


def refresh(every_s: float = 0.0, force: bool = False) -> tuple[str | None, float | None, str | None]:
    """Start a build unless one runs or one began less than ``every_s`` ago (``force``: the latter
    does not apply); return the last snapshot's as_of and build seconds, and a failure since the
    last call."""
    global _builder, _started, _error, _due
    idle = _builder is None or not _builder.is_alive()
    if idle and (force or _due or time.monotonic() - _started >= every_s):
        _due = False
        _started = time.monotonic()
        _builder = threading.Thread(target=_build, name="status-build", daemon=True)
        _builder.start()
    error, _error = _error, None
    as_of, took = _last if _last is not None else (None, None)
    return as_of, took, error


def _build() -> None:
    global _last, _error, _pending
    with _lock:
        pending, _pending = _pending, None
    if pending is not None:
        _site.builder.configure(*pending)
    started = time.perf_counter()
    try:
        snapshot = _site.refresh()
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which counts and logs it
        _error = f"{type(exc).__name__}: {exc}"[:300]
        return
    _last = (snapshot["as_of"], time.perf_counter() - started)


def answer(path: str, query: dict[str, str]) -> Answer:
    """The answer to one request, from the current snapshot, gzipped too when large, with its ETag."""
    if _site.view is None:
        return Answer(503, "text/plain; charset=utf-8", b"the status page is starting\n", "page")
    found = _site.answer(path, query)
    if found.gzipped is None and len(found.body) >= GZIP_FROM_BYTES:
        found = dataclasses.replace(found, gzipped=gzip.compress(found.body, GZIP_LEVEL))
    # Hashed here, not in the daemon: 4 MB of status JSON is milliseconds of the event loop's time.
    return dataclasses.replace(found, etag=hashlib.sha256(found.body).hexdigest()[:20])
