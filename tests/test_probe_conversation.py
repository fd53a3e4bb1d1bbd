"""Conversations against the real simulator: REST with the growing history, Realtime and Gemini Live.

Each turn's TTFT is held against what the simulator injected for that turn
(the scenario adds 8 ms a turn after turn 3), and each way a session ends
early against its outcome, with the turn in ``error_code`` and the turns
before it kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TEST_KEY, run_jobs, sim_requests
from modelwatch.config import load_config

TOLERANCE_S = 0.005
# The simulator's loop (uvloop) keeps timers to the millisecond and stamps its own times a
# step apart from the frame it times: its figures carry that much slack either way.
CLOCK_S = 0.0015
PROVIDERS = {
    "rest": ("openai", "/v1", ""),
    "realtime": ("openai", "/v1", ", api: realtime"),
    "live": ("gemini", "/v1beta", ""),  # a Gemini conversation is a Live session, api or not
}


def converse(tmp_path: Path, url: str, model: str, how: str, turns: int, extra: str = "", timeout: str = "5s"):
    ptype, base, api = PROVIDERS[how]
    cfg = tmp_path / "conv.yaml"
    cfg.write_text(f"""
defaults: {{timeout: {timeout}}}
providers:
  p: {{type: {ptype}, base_url: '{url}{base}', api_key: '{TEST_KEY}'}}
targets:
  - {{name: c, provider: p, model: {model}, probes: [{{kind: conversation, turns: {turns}{api}{extra}}}]}}
""")
    job = load_config(cfg).jobs[0]
    before = len(sim_requests(url))
    return job, run_jobs([job])["c"], sim_requests(url)[before:]


def per_turn(how: str, requests: list[dict], key: str = "injected_ttft_s") -> list[float]:
    """What the simulator injected (or did) for each turn, in turn order."""
    if how == "rest":  # one request per turn, each knowing its turn from the history it carries
        return [q[key] for q in sorted(requests, key=lambda q: q["turn"])]
    [session] = requests
    return [t[key] for t in session["turns"]]


def assert_turns_read_truthfully(how: str, turns, requests: list[dict], connect_s: float | None = None) -> None:
    """Each turn's TTFT is what the simulator did, read within 5 ms, and the simulator kept to its
    injected delay: together, within 5 ms of the injected delay at idle. The simulator's own lateness
    (a busy machine) is its own, so it is held apart from the probe's reading error. A REST turn
    counts from its request, connection included: the first turn's holds the probe's first connect
    (name resolution in a fresh executor thread too), which the simulator cannot see, so that is
    taken off as for any probe's first token (conftest.ttft_reading_error)."""
    injected, actual = per_turn(how, requests), per_turn(how, requests, "actual_ttft_s")
    for turn, truth, did in zip(turns, injected, actual, strict=True):
        unseen = (connect_s or 0.0) if how == "rest" and turn.turn == 1 else 0.0
        assert did >= truth - CLOCK_S, (turn, truth, did)
        assert -CLOCK_S <= turn.ttft_s - unseen - did <= TOLERANCE_S, (how, turn, truth, did)


@pytest.mark.parametrize("how", ["rest", "realtime", "live"])
def test_every_turn_is_timed_as_the_simulator_served_it(tmp_path, voice_sim, how):
    job, r, requests = converse(tmp_path, voice_sim, "conv", how, turns=8)
    assert r.outcome == "ok", r
    assert [t.turn for t in r.turns] == list(range(1, 9))
    injected = per_turn(how, requests)
    assert len(injected) == 8
    assert injected[-1] - injected[2] == pytest.approx(5 * 0.008, abs=1e-6)  # the scenario's growth
    assert_turns_read_truthfully(how, r.turns, requests, r.connect_s)
    assert all(turn.ttft_s <= turn.duration_s for turn in r.turns)
    starts = [t.start_s for t in r.turns]
    assert starts == sorted(starts)
    assert r.ttft_s == pytest.approx(r.turns[0].start_s + r.turns[0].ttft_s, abs=2e-6)
    assert r.duration_s >= r.turns[-1].start_s + r.turns[-1].duration_s - 2e-6  # each rounded to 1 us
    # each turn's input is the context so far: it grows, and the probe's tokens are their sum
    inputs = [t.input_tokens for t in r.turns]
    assert all(b > a for a, b in zip(inputs, inputs[1:])), inputs
    assert r.input_tokens == sum(inputs) and r.output_tokens == sum(t.output_tokens for t in r.turns)


def test_the_rest_baseline_resends_the_history_with_the_model_answers(tmp_path, voice_sim):
    _, r, requests = converse(tmp_path, voice_sim, "conv", "rest", turns=3)
    assert r.outcome == "ok", r
    assert [q["turn"] for q in requests] == [1, 2, 3]


def test_audio_turns_over_a_realtime_session(tmp_path, voice_sim):
    _, r, requests = converse(tmp_path, voice_sim, "conv", "realtime", turns=3, extra=", modality: audio")
    assert r.outcome == "ok", r
    assert len(r.turns) == 3 and r.input_audio_tokens and r.output_audio_tokens
    assert_turns_read_truthfully("realtime", r.turns, requests)


@pytest.mark.parametrize("how, model, outcome, code, kept", [
    ("rest", "conv-rest-fail4", "server_error", "turn4:server_error", 3),
    ("realtime", "conv-rt-fail3", "rate_limited", "turn3:rate_limit_exceeded", 2),
    ("live", "conv-close3", "server_error", "turn3:close_1011", 2),
])
def test_a_failure_at_turn_k_ends_the_probe_and_keeps_the_turns_before(tmp_path, voice_sim, how, model, outcome,
                                                                       code, kept):
    _, r, _ = converse(tmp_path, voice_sim, model, how, turns=6)
    assert (r.outcome, r.error_code) == (outcome, code), r
    assert [t.turn for t in r.turns] == list(range(1, kept + 2))  # the failed turn is kept too
    assert all(t.ttft_s is not None for t in r.turns[:kept]) and r.turns[-1].duration_s is None


def test_a_session_cap_ends_the_conversation_at_its_turn(tmp_path, voice_sim):
    _, r, _ = converse(tmp_path, voice_sim, "conv-expire", "realtime", turns=40)
    assert r.outcome == "protocol_error", r
    turn = int(r.error_code.split(":")[0].removeprefix("turn"))
    assert r.error_code == f"turn{turn}:session_expired" and 2 < turn < 40
    assert len(r.turns) == turn


def test_a_go_away_ends_a_live_conversation(tmp_path, voice_sim):
    _, r, _ = converse(tmp_path, voice_sim, "conv-goaway", "live", turns=40)
    assert r.outcome == "protocol_error" and r.error_code.endswith(":go_away"), r
    assert 1 < len(r.turns) < 40


def test_the_first_turn_spends_the_first_token_budget(tmp_path, voice_sim):
    _, r, _ = converse(tmp_path, voice_sim, "conv", "realtime", turns=3, extra=", ttft_timeout: 10ms")
    assert (r.outcome, r.error_code) == ("timeout", "turn1:ttft"), r


@pytest.mark.parametrize("how, bands", [(5, ("1-5",)), (20, ("1-5", "6-10", "11-20")),
                                         (100, ("1-5", "6-10", "11-20", "21-50", "51+"))])
def test_the_turn_bands_a_conversation_exports(tmp_path, how, bands):
    from modelwatch.probes import detail_series
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
providers: {{p: {{type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}}}}
targets: [{{name: c, provider: p, model: m, probes: [{{kind: conversation, turns: {how}}}]}}]
""")
    assert detail_series(load_config(cfg).jobs[0]).turn_bands == bands
