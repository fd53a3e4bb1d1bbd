"""Barge-in (``interrupt_after`` on an audio realtime probe) against the real simulator.

The probe interrupts the spoken answer ``interrupt_after`` past its first
audio, sends ``response.cancel`` and truncates the item to what was heard;
``interrupt_s`` is held against the acknowledgement delay the simulator
injected, and audio after the acknowledgement must fail the probe.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TEST_KEY, run_jobs, sim_requests
from modelwatch.config import ConfigError, load_config

# The simulator's loop (uvloop) keeps timers to the millisecond and stamps its own times a
# step apart from the frame it times: its figures carry that much slack either way.
CLOCK_S = 0.0015


def barge(tmp_path: Path, url: str, model: str, extra: str = ", interrupt_after: 200ms"):
    cfg = tmp_path / "barge.yaml"
    cfg.write_text(f"""
defaults: {{timeout: 5s}}
providers:
  p: {{type: openai, base_url: '{url}/v1', api_key: '{TEST_KEY}'}}
targets:
  - {{name: b, provider: p, model: {model}, probes: [{{kind: realtime, modality: audio{extra}}}]}}
""")
    before = len(sim_requests(url))
    return run_jobs(load_config(cfg).jobs)["b"], sim_requests(url)[before:]


@pytest.mark.parametrize("interface", ["", ", interface: beta"])
def test_the_cancel_is_timed_to_its_acknowledgement(tmp_path, voice_sim, interface):
    r, [session] = barge(tmp_path, voice_sim, "barge", ", interrupt_after: 200ms" + interface)
    assert r.outcome == "ok", r
    [turn] = session["turns"]
    assert turn["outcome"] == "cancelled"
    # the scenario acknowledges 60 ms after the cancel arrives (what it did: cancel_latency_s);
    # the probe reads that plus loopback, within 5 ms
    assert turn["cancel_latency_s"] >= 0.060 - CLOCK_S
    assert 0 <= r.interrupt_s - turn["cancel_latency_s"] <= 0.005, (r.interrupt_s, turn)
    # cancelled 200 ms into a 2 s answer: the acknowledgement ends the probe's measurement
    assert r.duration_s == pytest.approx(r.ttft_s + 0.2 + r.interrupt_s, abs=0.01)
    assert r.output_audio_tokens and r.output_audio_tokens < 2000 / 50  # billed for what was sent


def test_the_item_is_truncated_to_the_audio_heard(tmp_path, voice_sim):
    r, [session] = barge(tmp_path, voice_sim, "barge", ", interrupt_after: 300ms")
    assert r.outcome == "ok", r
    # the simulator refuses a truncation past the audio it sent: none came back as an error


def test_audio_after_the_acknowledgement_fails_the_probe(tmp_path, voice_sim):
    r, _ = barge(tmp_path, voice_sim, "barge-leak")
    assert (r.outcome, r.error_code) == ("protocol_error", "audio_after_cancel"), r
    assert r.interrupt_s is not None  # the acknowledgement came, and was timed


def test_an_answer_shorter_than_interrupt_after_is_a_configuration_problem(tmp_path, voice_sim):
    r, _ = barge(tmp_path, voice_sim, "barge-short", ", interrupt_after: 500ms")
    assert (r.outcome, r.error_code) == ("bad_request", "interrupt_after_too_long"), r
    assert r.interrupt_s is None


def test_the_session_asks_for_a_long_answer_with_room_to_interrupt(tmp_path, voice_sim):
    _, [session] = barge(tmp_path, voice_sim, "barge")
    # the request log keeps no session.update; the probe's own event says what it asks for
    from modelwatch.probes.openai_realtime import INTERRUPT_INSTRUCTIONS, session_update
    cfg = tmp_path / "barge.yaml"
    update = session_update(load_config(cfg).jobs[0])["session"]
    assert update["instructions"] == INTERRUPT_INSTRUCTIONS and update["max_output_tokens"] == 400


@pytest.mark.parametrize("probe, problem", [
    ("{kind: realtime, interrupt_after: 200ms}", "interrupt_after needs modality: audio"),
    ("{kind: rest, modality: audio, interrupt_after: 200ms}", "interrupt_after: applies to realtime probes"),
    ("{kind: realtime, modality: audio, interrupt_after: 5ms}", "must be from 10ms to 1m"),
])
def test_interrupt_after_is_refused_where_it_cannot_apply(tmp_path, probe, problem):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
providers: {{p: {{type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}},
             g: {{type: gemini, base_url: 'http://127.0.0.1:9/v1beta', api_key: k}}}}
targets: [{{name: c, provider: p, model: m, probes: [{probe}]}}]
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert problem in str(info.value)


def test_gemini_live_has_no_barge_in(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
providers: {g: {type: gemini, base_url: 'http://127.0.0.1:9/v1beta', api_key: k}}
targets: [{name: c, provider: g, model: m, probes: [{kind: realtime, modality: audio, interrupt_after: 200ms}]}]
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "applies to realtime probes of openai, azure-openai and openai-compatible" in str(info.value)
