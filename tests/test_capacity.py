"""Concurrency sizing: check-config's estimate, the daemon's state changes, and the scheduler's waits."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from modelwatch.capacity import TYPICAL_DURATION_S, Saturation, expected_duration, shortfalls
from modelwatch.config import ProbeConfig, ProbeJob, ProviderConfig, load_config
from modelwatch.metrics import DELAY_BUCKETS, WAIT_LIMITS, ProbeMetrics
from modelwatch.scheduler import Scheduler, _Cadence


def config_text(targets: int, interval: str, *, limit: int | None = None, global_limit: int | None = None,
                kinds: str = "{kind: rest}", timeout: str = "30s") -> str:
    lines = [f"max_concurrent_probes: {global_limit}"] if global_limit else []
    lines += [f"defaults: {{interval: {interval}, timeout: {timeout}}}", "providers:",
              "  big: {type: openai-compatible, base_url: 'http://127.0.0.1:9/v1'"
              + (f", max_concurrent_probes: {limit}" if limit else "") + "}",
              "  small: {type: openai-compatible, base_url: 'http://127.0.0.1:9/v1'}", "targets:"]
    lines += [f"  - {{name: t{i}, provider: big, model: m, probes: [{kinds}]}}" for i in range(targets)]
    lines.append("  - {name: other, provider: small, model: m, probes: [{kind: rest}]}")
    return "\n".join(lines) + "\n"


def check_config(path) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("kind", "timeout", "expected"), [
    ("rest", 30.0, TYPICAL_DURATION_S["rest"]),
    ("realtime", 30.0, TYPICAL_DURATION_S["realtime"]),
    ("models", 30.0, TYPICAL_DURATION_S["models"]),
    ("realtime", 0.5, 0.5),  # never longer than the probe may take
])
def test_expected_duration_is_typical_for_the_kind_and_at_most_the_timeout(kind, timeout, expected):
    assert expected_duration(ProbeConfig(kind=kind, timeout=timeout)) == expected


@pytest.mark.slow
def test_check_config_warns_when_a_provider_limit_cannot_carry_its_schedule(tmp_path):
    cfg = tmp_path / "c.yaml"
    # The case: 1,000 REST probes every 10 s on one provider of the default limit (8).
    cfg.write_text(config_text(1000, "10s"))
    out = check_config(cfg)
    assert out.returncode == 0, out.stderr
    assert "1001 probes" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, out.stderr  # the provider, then the global limit (64)
    assert warnings[0].startswith(f"modelwatch: warning: {cfg}: provider big: max_concurrent_probes is 8 ")
    assert "its 1000 probes need about 100.0 at once" in warnings[0]
    assert "raise it to at least 100 or lengthen intervals" in warnings[0]
    assert "max_concurrent_probes (global) is 64 but all 1001 probes need about 100.1" in warnings[1]
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_check_config_is_quiet_when_the_limits_carry_the_schedule(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(100, "60s"))  # 100 x 1 s / 60 s: about 1.7 of 8
    out = check_config(cfg)
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.slow
def test_check_config_counts_the_timeout_and_the_global_limit(tmp_path):
    cfg = tmp_path / "c.yaml"
    # 80 targets with an hourly REST probe and a models check every 20 s: the provider's 20
    # slots carry that; the global limit of 1 does not. The other target's REST probe counts
    # its 0.5 s timeout, not the typical 1 s.
    cfg.write_text(config_text(80, "20s", limit=20, global_limit=1, timeout="500ms",
                               kinds="{kind: rest, timeout: 30s, interval: 1h}, {kind: models}"))
    out = check_config(cfg)
    assert out.returncode == 0, out.stderr
    assert "provider big" not in out.stderr
    assert "max_concurrent_probes (global) is 1 but all 161 probes need about 1.2" in out.stderr
    config = load_config(cfg)
    expected = 80 * (1.0 / 3600 + 0.3 / 20) + 0.5 / 20  # rest 1 s per hour, models 0.3 s, other 0.5 s
    (found,) = shortfalls(config)
    assert found.provider is None and found.needed == pytest.approx(expected)


@pytest.mark.parametrize(("durations", "states"), [
    # warm-up: no verdict before MIN_RUNS probes, however slow
    ([5.0] * (Saturation.MIN_RUNS - 1), []),
    # behind once (needed 2 x 1.0 > 1), said once however long it lasts
    ([1.0] * 40, [True]),
    # behind, then back once the mean falls below 90 % of the limit
    ([1.0] * 20 + [0.1] * 80, [True, False]),
    # a need that goes on hovering between 90 % and 120 % of the limit never flaps
    (([0.6] * 10 + [0.47] * 40) * 3, [True]),
])
def test_saturation_reports_each_change_of_state_once(durations, states):
    saturation = Saturation(limit=1, rate=2.0)  # two starts a second behind a limit of one slot
    changes = [c for d in durations if (c := saturation.observe(d)) is not None]
    assert changes == states


def test_saturation_follows_a_new_rate_and_limit():
    saturation = Saturation(limit=4, rate=2.0)
    assert [saturation.observe(1.0) for _ in range(10)] == [None] * 10  # needs 2 of 4
    saturation.rate = 6.0  # a reload added probes
    assert saturation.observe(1.0) is True and saturation.needed == pytest.approx(6.0)
    saturation.limit = 8  # a reload raised the limit
    assert saturation.observe(1.0) is False


def _job(target: str, kind: str, interval: float, limit: int = 8, provider: str = "p") -> ProbeJob:
    config = ProviderConfig(type="openai", base_url="http://127.0.0.1:9", max_concurrent_probes=limit)
    return ProbeJob(target=target, provider_name=provider, provider=config, api_key=None, model="m",
                    probe=ProbeConfig(kind=kind, interval=interval), location=None)


def test_a_cadence_places_the_kinds_of_a_target_half_an_interval_apart():
    cadence = _Cadence(1.0)
    cadence.members = [("a", "rest"), ("a", "models"), ("b", "rest"), ("b", "models"), ("c", "rest")]
    cadence.spread_kinds()
    assert cadence.members == [("a", "rest"), ("b", "rest"), ("c", "rest"), ("a", "models"), ("b", "models")]


def run_scheduler(jobs: list[ProbeJob], seconds: float, hold: dict[str, float], max_concurrent: int = 64,
                  reload: tuple[float, list[ProbeJob]] | None = None):
    """Run the real Scheduler in-process for ``seconds``; each probe sleeps ``hold[kind]``.

    ``reload`` = (after how many seconds, the new jobs) applies new jobs as a reload does.
    """
    spans: list[tuple[str, str, float, float]] = []
    metrics = ProbeMetrics(CollectorRegistry())

    async def run_job(job: ProbeJob) -> None:
        start = time.monotonic()
        await asyncio.sleep(hold[job.probe.kind])
        spans.append((job.target, job.probe.kind, start, time.monotonic()))

    async def main() -> None:
        sched = Scheduler(run_job, metrics, max_concurrent)
        sched.set_jobs(jobs)
        for job in jobs:
            metrics.add_job(job)
        task = asyncio.get_running_loop().create_task(sched.run())
        if reload:
            await asyncio.sleep(reload[0])
            sched.set_jobs(reload[1])
        await asyncio.sleep(seconds - (reload[0] if reload else 0))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sched.drain(0)

    asyncio.run(main())
    return spans, metrics


def overlaps(spans) -> bool:  # noqa: ANN001
    ordered = sorted(spans, key=lambda s: s[2])
    return any(b[2] < a[3] for a, b in zip(ordered, ordered[1:]))


@pytest.mark.slow
def test_the_kinds_of_a_target_wait_for_each_other_and_the_wait_is_measured():
    # rest holds 150 ms and models 50 ms; models of a 200 ms cadence and rest of a 300 ms one
    # keep colliding, yet each target's probes run one at a time while targets run side by side.
    jobs = [_job(t, "rest", 0.3) for t in ("a", "b")] + [_job(t, "models", 0.2) for t in ("a", "b")]
    spans, metrics = run_scheduler(jobs, 2.0, {"rest": 0.15, "models": 0.05})
    for target in ("a", "b"):
        mine = [s for s in spans if s[0] == target]
        assert len(mine) >= 10 and not overlaps(mine), mine
    assert overlaps(spans)  # different targets did run at once
    record = metrics.schedule["p"]
    target_wait = record.waits[WAIT_LIMITS.index("target")]
    assert sum(target_wait.counts) == sum(record.start_delay.counts) >= len(spans)
    assert target_wait.total > 0.05  # the collisions were waited out, and counted as such
    assert sum(record.waits[WAIT_LIMITS.index("provider")].counts[1:]) == 0  # no provider wait at all


@pytest.mark.slow
def test_a_target_busy_for_a_whole_interval_skips_the_other_kinds_run(caplog):
    # rest (every 0.5 s) starts first and holds the target 1.2 s; models (every 0.6 s, first
    # slot 0.3 s later) gives its run up after waiting 0.6 s.
    jobs = [_job("a", "rest", 0.5), _job("a", "models", 0.6)]
    caplog.set_level(logging.INFO, logger="modelwatch.scheduler")
    spans, metrics = run_scheduler(jobs, 1.4, {"rest": 1.2, "models": 0.01})
    assert not overlaps(spans)
    page = b"".join(asyncio.run(metrics.render())).decode()
    skipped = [line for line in page.splitlines()
               if line.startswith('modelwatch_skipped_runs_total{target="a",provider="p",model="m",kind="models"')]
    assert skipped and float(skipped[0].split()[-1]) >= 1, skipped
    assert "another kind of the target still going for a whole interval" in caplog.text


@pytest.mark.slow
def test_a_provider_that_cannot_carry_its_schedule_is_logged_once_and_shows_in_the_metrics(caplog):
    # 6 probes every 300 ms hold 100 ms each: 2 slots needed, the provider allows 1.
    jobs = [_job(f"t{i}", "rest", 0.3, limit=1) for i in range(6)]
    caplog.set_level(logging.INFO, logger="modelwatch.scheduler")
    spans, metrics = run_scheduler(jobs, 2.0, {"rest": 0.1})
    behind = [r for r in caplog.records if "cannot carry" in r.getMessage()]
    assert len(behind) == 1 and behind[0].fields["provider"] == "p", caplog.text
    record = metrics.schedule["p"]
    assert record.needed > 1.5 and record.limit == 1
    delays = record.start_delay
    assert delays.total / sum(delays.counts) > 0.05  # probes started late ...
    assert record.waits[WAIT_LIMITS.index("provider")].total > 0.5  # ... waiting for the provider's slot
    assert not overlaps([(*s[:2], s[2], s[3] - 0.002) for s in spans])  # and never two at once


@pytest.mark.slow
def test_a_reload_that_gives_a_target_a_second_kind_does_not_start_it_beside_the_first():
    # "a" has only rest (1 s per run) when the reload adds models; rest is running by then.
    first = [_job("a", "rest", 5.0)]
    spans, _ = run_scheduler(first, 1.6, {"rest": 1.0, "models": 0.05},
                             reload=(0.2, first + [_job("a", "models", 0.3)]))
    assert {s[1] for s in spans} == {"rest", "models"}
    assert not overlaps(spans), sorted(spans, key=lambda s: s[2])


@pytest.mark.slow
def test_a_reload_that_raises_the_limit_is_logged_once_as_carrying_the_schedule_again(caplog):
    slow = [_job(f"t{i}", "rest", 0.3, limit=1) for i in range(6)]  # needs 2 slots, has 1
    roomy = [_job(f"t{i}", "rest", 0.3, limit=4) for i in range(6)]
    caplog.set_level(logging.INFO, logger="modelwatch.scheduler")
    _, metrics = run_scheduler(slow, 3.5, {"rest": 0.1}, reload=(1.5, roomy))
    changes = [(r.getMessage(), r.fields) for r in caplog.records if "the schedule" in r.getMessage()]
    assert len(changes) == 2, changes
    assert "cannot carry" in changes[0][0] and changes[0][1]["max_concurrent_probes"] == 1
    assert "carries the schedule again" in changes[1][0] and changes[1][1]["max_concurrent_probes"] == 4
    assert metrics.schedule["p"].limit == 4


@pytest.mark.slow
def test_a_run_that_gets_no_slot_within_its_interval_is_skipped_not_queued_ever_later():
    """4 probes every 200 ms hold 150 ms each behind one slot (3 needed): without a bound the
    queue, and every start delay, would grow for as long as the daemon runs."""
    jobs = [_job(f"t{i}", "rest", 0.2, limit=1) for i in range(4)]
    spans, metrics = run_scheduler(jobs, 3.0, {"rest": 0.15})
    delays = metrics.schedule["p"].start_delay
    over_interval = sum(delays.counts[DELAY_BUCKETS.index(0.25) + 1:])
    assert sum(delays.counts) >= 10 and over_interval == 0, delays.counts  # never beyond one interval
    skipped = sum(metrics._series[metrics._job_key(j)].skipped for j in jobs)  # noqa: SLF001
    assert skipped >= 10  # the runs that found no slot in time were counted, not silently queued
    assert not overlaps([(*s[:2], s[2], s[3] - 0.002) for s in spans])
