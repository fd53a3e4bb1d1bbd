"""Shards: the same config on N hosts, each probing its share (``shard: i/N``).

A probe (``target/kind``) belongs to the shard with the highest rendezvous
score: sha256 of ``"<shard>:<target>/<kind>"``, read as an integer. Every
host computes the same answer from the config alone, with no coordination;
and going from N to N+1 shards moves only the probes whose new shard N
outscores their old one, about 1/(N+1) of them, all to the new shard.
(sha256, not Python's ``hash()``: that is salted per process, so two hosts
would disagree.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

MAX_SHARDS = 1000
_SHARD = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d{1,4})\s*$")


def parse_shard(value: object) -> tuple[int, int]:
    """``"i/N"`` as (i, N): 0 <= i < N <= MAX_SHARDS."""
    match = _SHARD.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError("must be i/N, e.g. 0/3 for the first of three shards")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"must have from 1 to {MAX_SHARDS} shards")
    if index >= count:
        raise ValueError(f"shard {index} does not exist in {count} shards: they are 0 to {count - 1}")
    return index, count


def _score(shard: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}:{key}".encode()).digest()[:8], "big")


def shard_of(target: str, kind: str, shards: int) -> int:
    """The shard (0 to ``shards`` - 1) that probes ``target``'s ``kind`` probe."""
    key = f"{target}/{kind}"
    return max(range(shards), key=lambda shard: _score(shard, key))


def plan(keys: Iterable[tuple[str, str]], shards: int) -> list[list[tuple[str, str]]]:
    """Each shard's (target, kind) probes, shard by shard."""
    out: list[list[tuple[str, str]]] = [[] for _ in range(shards)]
    for target, kind in keys:
        out[shard_of(target, kind, shards)].append((target, kind))
    return out


def plan_lines(jobs: Sequence, shards: int) -> list[str]:  # noqa: ANN001 - ProbeJob sequence
    """``check-config --shards N``: per shard, its probes, their rate and its targets."""
    by_key = {(j.target, j.probe.kind): j for j in jobs}
    lines = []
    for shard, keys in enumerate(plan(by_key, shards)):
        rate = sum(1 / by_key[k].probe.interval for k in keys)
        targets = sorted({t for t, _ in keys})
        lines.append(f"shard {shard}/{shards}: {len(keys)} probes, {rate:.2f} probes/s, {len(targets)} targets")
        lines += [f"  {t}/{k}" for t, k in sorted(keys)]
    return lines
