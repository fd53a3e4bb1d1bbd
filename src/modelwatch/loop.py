"""The event loop modelwatch runs on: uvloop where installed, else asyncio's own.

uvloop's loop is a drop-in replacement written in C. In the daemon at 1,000
targets its CPU per probe and TTFT p99 match asyncio's within the machine's
drift, but it allocates less, so full garbage collections (20-35 ms pauses)
came less often: the worst TTFT error over three runs was 8-13 ms with uvloop
and 30-49 ms without (docs/benchmarks.md). ``MODELWATCH_LOOP=asyncio`` forces
the standard loop (for comparison, or on a platform without uvloop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` will use."""
    if os.environ.get("MODELWATCH_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
