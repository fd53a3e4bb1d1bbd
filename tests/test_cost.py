"""What probing costs: per-probe cost, the daily budget that pauses paid probes, --dry-run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TEST_KEY, free_port
from daemon_helpers import http_get, metric, rows, running_daemon, wait_for
from modelwatch.config import PriceConfig, load_config
from modelwatch.cost import DailyBudget, daily_cost_usd, probe_cost_usd, utc_day_start

MINI = PriceConfig(input=0.15, output=0.60)
REALTIME = PriceConfig(input=0.60, output=2.40, audio_input=10.0, audio_output=20.0)


def test_probe_cost_splits_text_and_audio_tokens():
    assert probe_cost_usd(MINI, 20, 16) == pytest.approx((20 * 0.15 + 16 * 0.60) / 1e6)
    # realtime usage counts audio inside the totals: 30 in (25 audio), 40 out (36 audio)
    expected = (5 * 0.60 + 25 * 10.0 + 4 * 2.40 + 36 * 20.0) / 1e6
    assert probe_cost_usd(REALTIME, 30, 40, 25, 36) == pytest.approx(expected)
    # without audio rates, audio is charged at the text rates
    assert probe_cost_usd(MINI, 30, 40, 25, 36) == pytest.approx((30 * 0.15 + 40 * 0.60) / 1e6)


def test_no_price_or_no_usage_means_unknown_cost():
    assert probe_cost_usd(None, 20, 16) is None
    assert probe_cost_usd(MINI, None, None) is None
    assert probe_cost_usd(MINI, 0, 0) == 0


def test_budget_pauses_at_the_limit_and_resumes_at_utc_midnight():
    now = [utc_day_start(1_790_000_000) + 86400 - 5]  # five seconds before a UTC midnight
    budget = DailyBudget(0.01, clock=lambda: now[0])
    budget.add(0.004, now[0])
    assert not budget.exhausted()
    budget.add(0.006, now[0])
    assert budget.exhausted()
    now[0] += 4
    budget.add(0.5, now[0] - 10)  # a probe that started yesterday still counts as yesterday's
    assert budget.exhausted() and budget.spent_usd == pytest.approx(0.51)
    now[0] += 2  # past midnight: a new day
    assert not budget.exhausted() and budget.spent_usd == 0
    budget.add(0.003, now[0] - 3)  # ...and a probe that started before it is not today's
    assert budget.spent_usd == 0


def budget_config(tmp_path, sim_url, daily_usd: float, db):
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(f"""
storage: {{path: {db}}}
server: {{listen: '127.0.0.1:{port}'}}
budget: {{daily_usd: {daily_usd}}}
defaults: {{interval: 300ms, timeout: 3s}}
providers:
  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: '{TEST_KEY}'}}
targets:
  - name: paid
    provider: sim
    model: healthy
    price: {{input: 1000, output: 1000}}
    probes: [{{kind: rest}}]
  - {{name: free, provider: sim, model: healthy, price: {{input: 1000, output: 1000}}, probes: [{{kind: models}}]}}
""")
    return path, port


@pytest.mark.slow
def test_spent_budget_pauses_paid_probes_but_not_the_free_check(tmp_path, sim_url):
    db = tmp_path / "mw.db"
    # One healthy probe costs ~13 tokens at $1000/M, so a few probes use up $0.03.
    cfg, port = budget_config(tmp_path, sim_url, 0.03, db)
    with running_daemon(cfg, port) as (_, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and
                        metric(t, "modelwatch_budget_skipped_runs_total") >= 3 and
                        metric(t, "modelwatch_probes_total", target="free") >= 6 and t, 20)
        assert metric(text, "modelwatch_budget_paused") == 1
        assert metric(text, "modelwatch_budget_daily_usd") == 0.03
        paid = metric(text, "modelwatch_probes_total", target="paid")
        spent = metric(text, "modelwatch_budget_spent_usd")
        assert spent >= 0.03
        assert spent == pytest.approx(metric(text, "modelwatch_probe_cost_usd_total", target="paid"))
        assert metric(text, "modelwatch_probe_cost_usd_total", target="free") == 0
    stored = rows(db)
    paid_rows = [r for r in stored if r["target"] == "paid"]
    assert len(paid_rows) == paid >= 2 and all(r["cost_usd"] > 0.005 for r in paid_rows)
    assert sum(r["cost_usd"] for r in paid_rows) == pytest.approx(spent)
    # The probe that crossed the limit finished; none started after it.
    assert spent - paid_rows[-1]["cost_usd"] < 0.03 <= spent
    report = subprocess.run([sys.executable, "-m", "modelwatch", "report", "--db", str(db), "--format", "json"],
                            capture_output=True, text=True, timeout=30)
    by_target = {r["target"]: r for r in json.loads(report.stdout)}
    assert by_target["paid"]["cost_usd"] == pytest.approx(spent, abs=1e-6)
    assert by_target["free"]["cost_usd"] is None
    assert all(r["cost_usd"] is None for r in stored if r["target"] == "free")

    # A restart the same day remembers what was spent: paid probes stay paused from the start.
    with running_daemon(cfg, port) as (_, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and
                        metric(t, "modelwatch_probes_total", target="free") >= 2 and t, 20)
        assert metric(text, "modelwatch_budget_paused") == 1
        assert metric(text, "modelwatch_probes_total", target="paid") == 0
        assert metric(text, "modelwatch_budget_spent_usd") == pytest.approx(spent)


@pytest.mark.slow
def test_dry_run_prices_each_probe_and_weighs_the_budget(tmp_path, sim_url):
    cfg, _ = budget_config(tmp_path, sim_url, 0.03, tmp_path / "mw.db")
    out = subprocess.run([sys.executable, "-m", "modelwatch", "probe", "-c", str(cfg), "--dry-run"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    jobs = {j.target: j for j in load_config(cfg).jobs}
    expected = daily_cost_usd(jobs["paid"])
    # 300 ms interval; 8 framing + 1 prompt tokens in, the 16-token cap out; $1000/M
    assert expected == pytest.approx(288_000 * (8 + 1 + 16) * 1000 / 1e6)
    assert any(line.startswith("paid") and f"${expected:.4f}/day" in line for line in lines)
    assert any(line.startswith("free") and line.endswith("free") for line in lines)
    assert lines[-1].startswith("budget: $0.0300/day, OVER")


def test_audio_prompt_estimate_follows_the_bundled_audio_and_the_provider_rate(tmp_path, monkeypatch):
    from modelwatch.cost import tokens_per_probe
    from modelwatch.probes.spec import PROMPT_AUDIO_S
    from modelwatch.probes.audio import prompt_audio

    assert PROMPT_AUDIO_S == len(prompt_audio()) / 48000  # PCM16 mono at 24 kHz
    path = tmp_path / "c.yaml"
    path.write_text("""
providers:
  o: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}
  g: {type: gemini, base_url: 'http://127.0.0.1:9/v1beta', api_key: k}
targets:
  - {name: o, provider: o, model: m, probes: [{kind: realtime, modality: audio}]}
  - {name: g, provider: g, model: m, probes: [{kind: realtime, modality: audio}]}
""")
    jobs = {j.target: j for j in load_config(path).jobs}
    assert tokens_per_probe(jobs["o"])[2] == round(PROMPT_AUDIO_S * 10)
    assert tokens_per_probe(jobs["g"])[2] == round(PROMPT_AUDIO_S * 32)


def test_budget_survives_reloads_and_a_reload_after_midnight_starts_the_day_at_zero(tmp_path):
    import asyncio
    import dataclasses

    from modelwatch.config import BudgetConfig
    from modelwatch.daemon import Daemon

    path = tmp_path / "c.yaml"
    path.write_text(f"storage: {{path: {tmp_path / 'mw.db'}}}\nbudget: {{daily_usd: 1.0}}\n")
    cfg = load_config(path)
    now = [utc_day_start(1_790_000_000) + 86400 - 10]  # ten seconds before a UTC midnight
    daemon = Daemon(cfg)
    daemon._clock = lambda: now[0]

    async def go():
        await daemon._set_budget(cfg)
        daemon.budget.add(2.0, now[0])
        assert daemon.budget.exhausted()
        await daemon._set_budget(dataclasses.replace(cfg, budget=BudgetConfig(daily_usd=3.0)))
        assert daemon.budget.spent_usd == 2.0 and not daemon.budget.exhausted()  # same day, new limit
        now[0] += 20  # past midnight, no probe has run since
        await daemon._set_budget(cfg)
        assert daemon.budget.spent_usd == 0 and not daemon.budget.exhausted()
    asyncio.run(go())


def voice_config(tmp_path, probes: str, price: str):
    cfg = tmp_path / "voice.yaml"
    cfg.write_text(f"""
providers: {{p: {{type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}}}}
targets: [{{name: v, provider: p, model: m, price: {price}, probes: [{probes}]}}]
""")
    return cfg


def test_a_voice_chain_is_priced_stage_by_stage(tmp_path):
    from modelwatch.probes.audio import prompt_audio_seconds
    from modelwatch.probes.voice_chain import SPOKEN_S_PER_TOKEN
    per_minute = voice_config(tmp_path, "{kind: voice-chain, interval: 60s}",
                              "{input: 0, output: 0, stt: {per_minute: 0.006}, tts: {per_minute: 0.015}}")
    [job] = load_config(per_minute).jobs
    # speech billed by the minute: the spoken prompt, and an answer of the whole output cap
    expected = 0.006 * prompt_audio_seconds() / 60 + 0.015 * 16 * SPOKEN_S_PER_TOKEN / 60
    assert daily_cost_usd(job) == pytest.approx(expected * 1440)
    llm_only = voice_config(tmp_path, "{kind: voice-chain, interval: 60s}",
                            "{input: 1.0, output: 2.0, stt: {}, tts: {}}")
    [job] = load_config(llm_only).jobs
    assert daily_cost_usd(job) > 0 and daily_cost_usd(job) == pytest.approx(
        1440 * (8 + 4 + 16 * 2.0 / 1.0 * 1.0) * 1.0 / 1e6, rel=0.01)


def test_a_priced_voice_chain_must_price_its_speech_models(tmp_path):
    from modelwatch.config import ConfigError
    with pytest.raises(ConfigError) as info:
        load_config(voice_config(tmp_path, "{kind: voice-chain}", "{input: 0.15, output: 0.6}"))
    assert "needs stt and tts entries" in str(info.value)


def test_a_conversation_costs_its_growing_context(tmp_path):
    from modelwatch.cost import tokens_per_probe
    def tokens(turns: int) -> tuple:
        [job] = load_config(voice_config(tmp_path, f"{{kind: conversation, turns: {turns}}}",
                                         "{input: 1, output: 1}")).jobs
        return tokens_per_probe(job)
    ten, twenty = tokens(10), tokens(20)
    assert twenty[1] == 2 * ten[1]  # output: the cap per turn
    assert twenty[0] > 3.5 * ten[0]  # input: every turn resends the history, so it grows as turns squared


def test_a_barge_in_probe_is_estimated_at_its_larger_output_cap(tmp_path):
    from modelwatch.cost import tokens_per_probe
    [plain] = load_config(voice_config(tmp_path, "{kind: realtime, modality: audio}", "{input: 1, output: 1}")).jobs
    [barge] = load_config(voice_config(tmp_path, "{kind: realtime, modality: audio, interrupt_after: 300ms}",
                                       "{input: 1, output: 1}")).jobs
    assert tokens_per_probe(plain)[3] == 16 and tokens_per_probe(barge)[3] == 400
