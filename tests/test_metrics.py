"""Probe series: values, exposition format, and a render that never holds the loop for long."""

from __future__ import annotations

import asyncio
import subprocess
import time
import pytest

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import write_config
from modelwatch.config import load_config
from modelwatch.metrics import ProbeMetrics
from modelwatch.outcomes import Outcome, ProbeResult


def jobs(tmp_path, n: int, name: str = "t"):
    cfg = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", {f"{name}{i}": "m" for i in range(n)})
    return load_config(cfg).jobs


def page(metrics: ProbeMetrics) -> str:
    return b"".join(asyncio.run(metrics.render())).decode()


def values(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def result(job, outcome="ok", **kw) -> ProbeResult:
    return ProbeResult(ts=1700000000.5, target=job.target, provider=job.provider_name, model=job.model,
                       kind=job.probe.kind, outcome=outcome, location=job.location, **kw)


def test_series_exist_at_zero_then_count(tmp_path, promtool):
    (job,) = jobs(tmp_path, 1)
    m = ProbeMetrics(CollectorRegistry())
    m.add_job(job)
    labels = (("kind", "rest"), ("model", "m"), ("provider", "sim"), ("target", "t0"))
    v = values(page(m))
    for outcome in Outcome:
        assert v[("modelwatch_probes_total", tuple(sorted(labels + (("outcome", outcome.value),))))] == 0
    assert ("modelwatch_probe_success", labels) not in v  # no probe completed yet
    m.observe(result(job, duration_s=0.45, ttft_s=0.25, input_tokens=9, output_tokens=2))
    m.observe(result(job, "rate_limited", duration_s=0.01))
    m.skip(job)
    text = page(m)
    v = values(text)
    assert v[("modelwatch_probes_total", tuple(sorted(labels + (("outcome", "ok"),))))] == 1
    assert v[("modelwatch_probes_total", tuple(sorted(labels + (("outcome", "rate_limited"),))))] == 1
    assert v[("modelwatch_probe_success", labels)] == 0  # the last one failed
    assert v[("modelwatch_probe_last_run_timestamp_seconds", labels)] == 1700000000.5
    assert v[("modelwatch_probe_duration_seconds_count", labels)] == 1  # successful probes only
    assert v[("modelwatch_probe_duration_seconds_bucket", tuple(sorted(labels + (("le", "0.3"),))))] == 0
    assert v[("modelwatch_probe_duration_seconds_bucket", tuple(sorted(labels + (("le", "0.5"),))))] == 1
    assert v[("modelwatch_probe_ttft_seconds_sum", labels)] == 0.25
    assert v[("modelwatch_probe_tokens_total", tuple(sorted(labels + (("direction", "output"),))))] == 2
    assert v[("modelwatch_skipped_runs_total", labels)] == 1
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_label_values_are_escaped(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers:\n  p: {type: openai-compatible, base_url: 'http://127.0.0.1:9/v1'}\n"
                   "targets:\n  - {name: t, provider: p, model: 'we\"ird\\\\model', probes: [{kind: rest}]}\n")
    (job,) = load_config(cfg).jobs
    m = ProbeMetrics(CollectorRegistry())
    m.add_job(job)
    m.observe(result(job))
    models = {s.labels["model"] for f in text_string_to_metric_families(page(m)) for s in f.samples
              if "model" in s.labels}
    assert models == {job.model} and '"' in job.model and '\\' in job.model


@pytest.mark.slow
def test_render_of_many_targets_lets_the_loop_run(tmp_path):
    m = ProbeMetrics(CollectorRegistry(), location="eu")
    all_jobs = jobs(tmp_path, 1000)
    for job in all_jobs:
        m.add_job(job)
        m.observe(result(job, duration_s=0.3, ttft_s=0.2, input_tokens=9, output_tokens=8))

    async def go():
        ticks = 0
        longest = 0.0

        async def ticker():
            nonlocal ticks, longest
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0)
                longest = max(longest, time.perf_counter() - before)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        chunks = await m.render()
        m.remove_job(all_jobs[0])  # a reload meanwhile must not break anything
        task.cancel()
        return chunks, ticks, longest

    chunks, ticks, longest = asyncio.run(go())
    text = b"".join(chunks).decode()
    assert ticks > 20  # other tasks ran many times while the page was built
    v = values(text)
    assert len({k[1] for k in v if k[0] == "modelwatch_probe_success"}) == 1000
    assert all(dict(k[1]).get("location") == "eu" for k in v if k[0].startswith("modelwatch_probe_"))


def test_schedule_series_are_per_provider_and_promtool_clean(promtool):
    m = ProbeMetrics(CollectorRegistry(), location="eu")
    record = m.provider_schedule("sim", 2)
    record.started(0.3, 0.0, 0.25, 0.001)
    record.started(0.0004, 0.0, 0.0, 0.0)
    record.needed = 2.5
    text = page(m)
    v = values(text)
    here = (("location", "eu"), ("provider", "sim"))
    assert v[("modelwatch_probe_start_delay_seconds_bucket", tuple(sorted(here + (("le", "0.001"),))))] == 1
    assert v[("modelwatch_probe_start_delay_seconds_bucket", tuple(sorted(here + (("le", "0.25"),))))] == 1
    assert v[("modelwatch_probe_start_delay_seconds_bucket", tuple(sorted(here + (("le", "0.5"),))))] == 2
    assert v[("modelwatch_probe_start_delay_seconds_bucket", tuple(sorted(here + (("le", "300.0"),))))] == 2
    assert v[("modelwatch_probe_start_delay_seconds_count", here)] == 2
    for limit, total in (("target", 0.0), ("provider", 0.25), ("global", 0.001)):
        labels = tuple(sorted(here + (("limit", limit),)))
        assert v[("modelwatch_probe_slot_wait_seconds_count", labels)] == 2  # every start, once per limit
        assert v[("modelwatch_probe_slot_wait_seconds_sum", labels)] == total
    assert v[("modelwatch_provider_concurrency_needed", here)] == 2.5
    assert v[("modelwatch_provider_max_concurrent_probes", here)] == 2
    assert not any("target" in dict(k[1]) for k in v if "start_delay" in k[0] or "slot_wait" in k[0])
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def voice_jobs(tmp_path):
    cfg = tmp_path / "voice.yaml"
    cfg.write_text("""
providers: {p: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}}
targets:
  - {name: chain, provider: p, model: m, probes: [{kind: voice-chain}]}
  - {name: conv, provider: p, model: m, probes: [{kind: conversation, turns: 12}]}
  - {name: conv-rt, provider: p, model: m, probes: [{kind: conversation, api: realtime, modality: audio, turns: 3}]}
  - {name: barge, provider: p, model: m, probes: [{kind: realtime, modality: audio, interrupt_after: 200ms}]}
  - {name: plain, provider: p, model: m, probes: [{kind: realtime}]}
""")
    return {job.target: job for job in load_config(cfg).jobs}


def test_voice_series_exist_only_where_they_apply_and_count(tmp_path, promtool):
    from modelwatch.outcomes import StageTiming, TurnTiming
    jobs_ = voice_jobs(tmp_path)
    m = ProbeMetrics(CollectorRegistry())
    for job in jobs_.values():
        m.add_job(job)
    v = values(page(m))
    def series(metric: str) -> set[tuple[str, str]]:
        return {(dict(k)["target"], dict(k).get("stage") or dict(k).get("turn_band") or "")
                for name, k in v if name == metric + "_count"}
    assert series("modelwatch_probe_stage_seconds") == {("chain", s) for s in ("stt", "llm", "tts")}
    assert series("modelwatch_probe_turn_ttft_seconds") == {("conv", "1-5"), ("conv", "6-10"), ("conv", "11-20"),
                                                            ("conv-rt", "1-5")}
    assert series("modelwatch_probe_interrupt_seconds") == {("barge", "")}
    info = {dict(k)["target"]: (dict(k)["api"], dict(k)["modality"], dict(k)["transport"])
            for name, k in v if name == "modelwatch_probe_info"}
    assert info == {"chain": ("chat", "audio", "http"), "conv": ("chat", "text", "http"),
                    "conv-rt": ("realtime", "audio", "websocket"), "barge": ("chat", "audio", "websocket"),
                    "plain": ("chat", "text", "websocket")}

    chain = jobs_["chain"]
    m.observe(result(chain, ttft_s=1.2, duration_s=1.5, stages=(
        StageTiming("stt", 0.0, 0.05, 0.2, 0.4), StageTiming("llm", 0.41, 0.05, 0.3, 0.45),
        StageTiming("tts", 0.87, 0.05, 0.33, 0.6))))
    conv = jobs_["conv"]
    m.observe(result(conv, ttft_s=0.3, turns=tuple(TurnTiming(k, k * 0.5, 0.2 + k / 100, 0.4) for k in range(1, 13))))
    m.observe(result(jobs_["barge"], ttft_s=0.4, interrupt_s=0.07))
    text = page(m)
    v = values(text)
    def one(metric: str, target: str, **extra: str) -> dict[str, float]:
        return {name.rsplit("_", 1)[1]: value for (name, k), value in v.items()
                if name.startswith(metric + "_") and not name.endswith("_bucket") and dict(k)["target"] == target
                and all(dict(k).get(a) == b for a, b in extra.items())}
    # stt and llm add their whole duration, tts its first audio byte
    assert one("modelwatch_probe_stage_seconds", "chain", stage="stt") == {"count": 1, "sum": 0.4}
    assert one("modelwatch_probe_stage_seconds", "chain", stage="llm") == {"count": 1, "sum": 0.45}
    assert one("modelwatch_probe_stage_seconds", "chain", stage="tts") == {"count": 1, "sum": 0.33}
    assert one("modelwatch_probe_turn_ttft_seconds", "conv", turn_band="1-5")["count"] == 5
    assert one("modelwatch_probe_turn_ttft_seconds", "conv", turn_band="6-10")["count"] == 5
    assert one("modelwatch_probe_turn_ttft_seconds", "conv", turn_band="11-20") == pytest.approx(
        {"count": 2, "sum": 0.31 + 0.32})
    assert one("modelwatch_probe_interrupt_seconds", "barge") == {"count": 1, "sum": 0.07}
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_turn_bands_follow_the_design():
    from modelwatch.outcomes import turn_band
    assert [turn_band(t) for t in (1, 5, 6, 10, 11, 20, 21, 50, 51, 100)] == [
        "1-5", "1-5", "6-10", "6-10", "11-20", "11-20", "21-50", "21-50", "51+", "51+"]
