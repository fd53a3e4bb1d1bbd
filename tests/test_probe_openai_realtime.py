"""The realtime probe against the real simulator: every stage, both modalities and interfaces,
every failure."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from conftest import TEST_KEY, ttft_reading_error
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe


def probe(tmp_path, sim_url, models: dict[str, str], *, extra: str = "", ptype: str = "openai",
          key: str = TEST_KEY, base_path: str = "/v1", provider_extra: str = "", timeout: str = "5s"):
    cfg = tmp_path / "c.yaml"
    lines = [f"defaults: {{timeout: {timeout}}}", "providers:",
             f"  p: {{type: {ptype}, base_url: '{sim_url}{base_path}', api_key: '{key}'{provider_extra}}}",
             "targets:"]
    lines += [f"  - {{name: {n}, provider: p, model: {m}, probes: [{{kind: realtime{extra}}}]}}"
              for n, m in models.items()]
    cfg.write_text("\n".join(lines) + "\n")
    config = load_config(cfg)

    async def go():
        async with new_http_session() as http:
            results = await asyncio.gather(*(run_probe(j, http, prober_for(j.provider.type, "realtime"))
                                             for j in config.jobs))
        return {r.target: r for r in results}
    return asyncio.run(go())


def sim_log(sim_url):
    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        return {r["request_id"]: r for r in json.load(resp)}


@pytest.mark.parametrize("extra", ["", ", interface: beta"])
def test_text_session_records_every_stage(tmp_path, sim_url, extra):
    r = probe(tmp_path, sim_url, {"t": "rt-healthy"}, extra=extra)["t"]
    assert r.outcome == "ok", r
    assert r.kind == "realtime" and r.http_status == 101
    assert 0 < r.connect_s <= r.ttfb_s <= r.ttft_s <= r.duration_s
    assert r.ttft_s >= 0.040
    assert r.input_tokens > 0 and r.output_tokens > 0 and r.request_id


@pytest.mark.parametrize("extra", ["", ", interface: beta"])
def test_audio_session_times_the_first_audio_chunk(tmp_path, sim_url, extra):
    r = probe(tmp_path, sim_url, {"a": "rt-healthy"}, extra=", modality: audio" + extra)["a"]
    assert r.outcome == "ok", r
    assert r.ttft_s >= 0.040 and r.duration_s >= r.ttft_s + 0.2  # 300 ms of audio paced in real time
    assert r.output_audio_tokens and r.output_audio_tokens > 0
    assert r.input_audio_tokens and r.input_audio_tokens > 0


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_beta_names_on_a_ga_session_are_accepted(tmp_path, sim_url, modality):
    r = probe(tmp_path, sim_url, {"legacy": "rt-legacy-names"}, extra=f", modality: {modality}")["legacy"]
    assert r.outcome == "ok", r


def test_a_pre_ga_server_needs_interface_beta(tmp_path, sim_url):
    beta = probe(tmp_path, sim_url, {"old": "rt-beta"}, extra=", interface: beta")["old"]
    assert beta.outcome == "ok", beta
    ga = probe(tmp_path, sim_url, {"old": "rt-beta"})["old"]  # GA fields refused by a beta server
    assert (ga.outcome, ga.error_code) == ("bad_request", "unknown_parameter")


def test_azure_forms(tmp_path, sim_url):
    v1 = probe(tmp_path, sim_url, {"az": "rt-healthy"}, ptype="azure-openai", base_path="/openai/v1")["az"]
    assert v1.outcome == "ok", v1
    dated = probe(tmp_path, sim_url, {"az": "rt-healthy"}, ptype="azure-openai", base_path="/openai",
                  provider_extra=", api_version: 2025-04-01-preview")["az"]
    assert dated.outcome == "ok", dated


FAILURES = {
    # model: (outcome, error_code or None for "any", http_status)
    "rt-beta-retired": ("protocol_error", "beta_api_shape_disabled", 101),
    "rt-http-403": ("auth_error", None, 401),
    "rt-quota": ("quota_exhausted", "insufficient_quota", 429),
    "rt-rate": ("rate_limited", "rate_limit_exceeded", 429),
    "rt-unavailable": ("overloaded", None, 503),
    "rt-failed-model": ("model_unavailable", "model_not_found", 101),
    "rt-failed-quota": ("quota_exhausted", "insufficient_quota", 101),
    "rt-error-event": ("server_error", "server_error", 101),
    "rt-close-1011": ("server_error", "close_1011", 101),
    "rt-drop": ("protocol_error", "abnormal_close", 101),
    "rt-ignore-client": ("server_error", "server_error", 101),
    "rt-content-filter": ("content_blocked", "content_filter", 101),
    "no-such-model": ("model_unavailable", "model_not_found", 404),
}


def test_each_failure_is_classified(tmp_path, sim_url):
    extra = ", interface: beta"  # only rt-beta-retired cares: it refuses the beta header
    results = probe(tmp_path, sim_url, {"rt-beta-retired": "rt-beta-retired"}, extra=extra)
    results |= probe(tmp_path, sim_url, {m: m for m in FAILURES if m != "rt-beta-retired"})
    for model, (outcome, code, status) in FAILURES.items():
        r = results[model]
        assert r.outcome == outcome, (model, r)
        assert code is None or r.error_code == code, (model, r)
        assert r.http_status == status, (model, r)
        assert r.error_code and r.duration_s is not None and r.duration_s < 5


def test_refused_keys_in_every_style(tmp_path, sim_url):
    bad = "sk-bad-RealtimeCanary0123456789"
    results = probe(tmp_path, sim_url, {"h": "rt-healthy", "e": "rt-error-then-close", "c": "rt-close-only"},
                    key=bad)
    assert (results["h"].outcome, results["h"].http_status) == ("auth_error", 401)
    assert (results["e"].outcome, results["e"].error_code) == ("auth_error", "invalid_api_key")
    assert results["c"].outcome == "protocol_error" and results["c"].error_code == "close_1000"
    for r in results.values():
        text = json.dumps(r.as_row())
        assert bad not in text and bad[:10] not in text and bad[-6:] not in text


def test_a_session_that_never_starts_times_out_naming_the_stage(tmp_path, sim_url):
    r = probe(tmp_path, sim_url, {"n": "rt-never-starts"}, extra=", ttft_timeout: 400ms")["n"]
    assert (r.outcome, r.error_code) == ("timeout", "session")
    assert r.connect_s is not None and r.ttfb_s is None and 0.4 <= r.duration_s < 1.0


def test_realtime_ttft_is_truthful(tmp_path, sim_url):
    results = probe(tmp_path, sim_url, {f"f{i}": "rt-fixed-ttft" for i in range(4)})
    log = sim_log(sim_url)
    for r in results.values():
        assert r.outcome == "ok", r
        sim = log[r.request_id]
        assert 0 <= ttft_reading_error(r, sim) < 0.005, (r.ttft_s, sim)
