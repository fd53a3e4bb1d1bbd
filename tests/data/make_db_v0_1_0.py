"""Make ``db-v0.1.0.sqlite``: a database as the release before sqlite-utils' migrations writes it.

Run once, with the package of commit 9410bff (the last with modelwatch's own migration runner and
its ``_migrations`` table) on the path, never with later code; the database it makes is committed
so that tests/test_store_upgrade.py can prove such a database upgrades in place::

    git archive 9410bff src | tar -x -C /tmp/mw-9410bff
    PYTHONPATH=/tmp/mw-9410bff/src python tests/data/make_db_v0_1_0.py tests/data/db-v0.1.0.sqlite

The rows are written by that release's own writer thread (``Store``), so the hourly rollups are
the ones it made. Timestamps are fixed (3.3 hours from 2026-09-21 11:00 UTC), so the file is the
same on every run but for the migrations' ``applied_at`` times.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelwatch.outcomes import ProbeResult
from modelwatch.store import Store

T0 = 1_790_000_000 // 3600 * 3600 - 3 * 3600


def results() -> list[ProbeResult]:
    """A dozen probes: two targets and kinds, several outcomes, a location, cost, audio tokens, lag."""
    out = []
    outcomes = ["ok", "ok", "ok", "timeout", "ok", "rate_limited"]
    for i in range(12):
        ok = outcomes[i % 6] == "ok"
        out.append(ProbeResult(
            ts=T0 + i * 1000.5, target=("gpt-4o-mini", "claude")[i % 2], provider=("openai", "anthropic")[i % 2],
            model=("gpt-4o-mini", "claude-haiku")[i % 2], kind=("rest", "realtime")[i % 3 == 2 and i % 2 == 0],
            outcome=outcomes[i % 6], http_status=200 if ok else (None if i % 6 == 3 else 429),
            error_code=None if ok else ("first_token" if i % 6 == 3 else "rate_limit_exceeded"),
            error=None if ok else "upstream said no", location="eu-west" if i % 4 else None,
            connect_s=0.05 + i / 1000, ttfb_s=0.2 + i / 100 if ok else None,
            ttft_s=0.3 + i / 50 if ok else None, duration_s=0.6 + i / 20 if ok else None,
            input_tokens=12 if ok else None, output_tokens=3 if ok else None,
            input_audio_tokens=7 if i == 2 else None, output_audio_tokens=40 if i == 2 else None,
            request_id=f"req_{i:03d}", cost_usd=0.0000027 if ok and i % 2 == 0 else None,
            loop_lag_s=round(i / 1000, 4)))
    return out


def main(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    store = Store(path, retention_s=10 ** 10, rollup_retention_s=10 ** 10)
    for result in results():
        store.submit(result)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1])
