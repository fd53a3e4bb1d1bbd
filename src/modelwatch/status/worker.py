"""The status site's worker process: the functions the daemon calls in it.

Reading 90 days of rollups and rendering a thousand targets is CPU work in Python; in a
thread of the daemon it would hold the GIL and delay every probe's reading by up to the
interpreter's 5 ms switch interval. In a process of its own it runs on another core and the
event loop only copies finished bytes. The process keeps the site (and the snapshot
builder's caches) in this module between calls.
"""

from __future__ import annotations

import dataclasses
import gzip
import time
from collections.abc import Sequence

from modelwatch.status.site import Answer, Site
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder

GZIP_FROM_BYTES = 2048
GZIP_LEVEL = 6  # the index of 1,000 targets: a tenth of its size, compressed once per refresh
_site: Site | None = None


def start(db_path: str, settings: Settings, series: Sequence[Series] | None) -> None:
    """The process initializer: the site of this database."""
    global _site
    _site = Site(SnapshotBuilder(db_path, settings, series))


def configure(settings: Settings, series: Sequence[Series] | None) -> None:
    """A reload: new settings and probes, used from the next refresh on."""
    _site.builder.configure(settings, series)


def refresh() -> tuple[str, float]:
    """Read the database again; return the snapshot's as_of and the seconds it took."""
    started = time.perf_counter()
    snapshot = _site.refresh()
    return snapshot["as_of"], time.perf_counter() - started


def answer(path: str, query: dict[str, str]) -> Answer:
    """The answer to one request, from the current snapshot, gzipped too when large."""
    found = _site.answer(path, query)
    if len(found.body) >= GZIP_FROM_BYTES:
        found = dataclasses.replace(found, gzipped=gzip.compress(found.body, GZIP_LEVEL))
    return found
