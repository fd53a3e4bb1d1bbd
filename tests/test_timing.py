"""Truthful timing: measured TTFT equals the TTFT the simulator injected, also under load.

The simulator runs in its own process and reports, per request id, when it
actually wrote the first token (its own perf_counter from handler entry). The
probe's ttft_s additionally includes the TCP connect, which the simulator cannot
see (1-5 ms on loopback on the 2-core CI machine), so the comparison leaves it
out: what remains is the request's trip, the token's trip back and our reading.
"""

from __future__ import annotations

import asyncio

from conftest import sim_log, ttft_reading_error, write_config
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe

INJECTED_S = 0.250
TOLERANCE_S = 0.005


def test_ttft_is_truthful_while_fifty_other_probes_stream(tmp_path, sim_url):
    targets = {f"busy{i}": "busy" for i in range(50)} | {f"fixed{i}": "fixed-ttft" for i in range(10)}
    cfg = load_config(write_config(tmp_path / "c.yaml", sim_url, targets, timeout="10s"))
    busy = [j for j in cfg.jobs if j.target.startswith("busy")]
    fixed = [j for j in cfg.jobs if j.target.startswith("fixed")]

    async def go():
        async with new_http_session() as http:
            prober = prober_for("openai", "rest")
            background = []
            for job in busy:  # started spread out, as the scheduler starts them
                background.append(asyncio.create_task(run_probe(job, http, prober)))
                await asyncio.sleep(0.004)
            await asyncio.sleep(0.05)  # all 50 are now streaming, for ~600 ms more
            measured = []
            for job in fixed:
                measured.append(asyncio.create_task(run_probe(job, http, prober)))
                await asyncio.sleep(0.02)
            return await asyncio.gather(*measured), await asyncio.gather(*background)

    measured, background = asyncio.run(go())
    assert all(r.outcome == "ok" for r in background), [r.outcome for r in background]
    log = sim_log(sim_url)
    for r in measured:
        assert r.outcome == "ok", r
        sim = log[r.request_id]
        assert sim["injected_ttft_s"] == INJECTED_S
        error = ttft_reading_error(r, sim)
        assert 0 <= error < TOLERANCE_S, (r.target, r.ttft_s, sim["actual_ttft_s"])
        assert INJECTED_S <= r.ttft_s < INJECTED_S + 3 * TOLERANCE_S, r.ttft_s
