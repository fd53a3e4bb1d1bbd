"""The free model-list check (``kind: models``) against the simulator, in every dialect."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from conftest import TEST_KEY
from modelwatch.config import load_config
from modelwatch.probes import prober_for
from modelwatch.probes.base import new_http_session, run_probe
from modelwatch.probes.models import is_listed, listed_models

PROVIDERS = {
    # provider block (without the key), base path
    "openai": "{type: openai, base_url: '%s/v1'}",
    "compat": "{type: openai-compatible, base_url: '%s/v1'}",
    "azure": "{type: azure-openai, base_url: '%s/openai/v1'}",
    "anthropic": "{type: anthropic, base_url: '%s/v1'}",
    "anthropic-x": "{type: anthropic, base_url: '%s/v1', auth_style: x-api-key, api_version: '2023-06-01'}",
    "gemini": "{type: gemini, base_url: '%s/v1beta'}",
}


def run_models(tmp_path, sim_url, provider: str, model: str, key: str = TEST_KEY):
    block = PROVIDERS[provider] % sim_url
    block = block[:-1] + f", api_key: '{key}'}}"
    path = tmp_path / "c.yaml"
    path.write_text(f"providers:\n  p: {block}\n"
                    f"targets:\n  - {{name: t, provider: p, model: {model}, probes: [{{kind: models}}]}}\n")
    job = load_config(path).jobs[0]

    async def go():
        async with new_http_session() as http:
            return await run_probe(job, http, prober_for(job.provider.type, "models"))
    return asyncio.run(go())


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_listed_model_is_ok_without_tokens(tmp_path, sim_url, provider):
    r = run_models(tmp_path, sim_url, provider, "healthy")
    assert r.outcome == "ok", r
    assert r.kind == "models" and r.http_status == 200
    assert 0 < r.connect_s <= r.ttfb_s <= r.duration_s
    assert r.ttft_s is None and r.input_tokens is None and r.output_tokens is None
    assert r.request_id.startswith("req_")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "compat"])
def test_unlisted_model_is_model_unavailable(tmp_path, sim_url, provider):
    r = run_models(tmp_path, sim_url, provider, "retired-model-2023")
    assert (r.outcome, r.error_code) == ("model_unavailable", "not_listed")
    assert "retired-model-2023" in r.error


def test_azure_lists_base_models_so_a_deployment_name_is_not_checked(tmp_path, sim_url):
    assert run_models(tmp_path, sim_url, "azure", "my-deployment").outcome == "ok"


@pytest.mark.parametrize("provider, code", [("openai", "invalid_api_key"), ("anthropic", "authentication_error"),
                                            ("anthropic-x", "authentication_error"),
                                            ("gemini", "api_key_invalid")])
def test_refused_key_is_auth_error_in_each_dialect(tmp_path, sim_url, provider, code):
    key = "sk-bad-Refused0000111122223333"
    r = run_models(tmp_path, sim_url, provider, "healthy", key=key)
    assert (r.outcome, r.error_code) == ("auth_error", code)
    assert r.http_status in (400, 401)
    assert "Refused0000" not in (r.error or "")  # providers echo key fragments; we never keep them


def test_dialects_answer_in_their_own_shape(sim_url):
    def get(path, headers):
        req = urllib.request.Request(sim_url + path, headers=headers)
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)
    gemini = get("/v1beta/models", {"x-goog-api-key": "k"})
    anthropic = get("/v1/models", {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    openai = get("/v1/models", {"Authorization": "Bearer k"})
    assert gemini["models"][0]["name"].startswith("models/")
    assert anthropic["has_more"] is False and anthropic["data"][0]["type"] == "model"
    assert openai["object"] == "list"
    assert listed_models(gemini)[0] == listed_models(openai)[0]
    assert {i.removesuffix("-20251001") for i in listed_models(anthropic)[0]} == listed_models(openai)[0]


def test_an_alias_matches_its_dated_snapshot_and_nothing_else():
    ids = {"claude-haiku-4-5-20251001", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"}
    assert is_listed("claude-haiku-4-5", ids) and is_listed("gpt-4o-mini", ids)
    assert not is_listed("gpt-4o", ids)  # gpt-4o-mini is another model, not a snapshot of gpt-4o
    assert not is_listed("claude-haiku-4", ids)


def test_paged_lists_are_not_taken_as_complete():
    assert listed_models({"data": [{"id": "a"}], "has_more": True}) == ({"a"}, False)
    assert listed_models({"models": [{"name": "models/a"}], "nextPageToken": "x"}) == ({"a"}, False)
    assert listed_models({"object": "list"}) is None and listed_models([1]) is None


LIST_FAILURES = {
    # provider: {error kind: (outcome, http_status)}
    "openai": {"rate_limited": ("rate_limited", 429), "server_error": ("server_error", 500),
               "overloaded": ("overloaded", 503), "bad_gateway": ("server_error", 502)},
    "anthropic": {"rate_limited": ("rate_limited", 429), "server_error": ("server_error", 500),
                  "overloaded": ("overloaded", 529)},
    "gemini": {"rate_limited": ("rate_limited", 429), "server_error": ("server_error", 500),
               "overloaded": ("overloaded", 503)},
}


@pytest.mark.parametrize("provider,kind", [(p, k) for p, kinds in LIST_FAILURES.items() for k in kinds])
def test_list_failures_are_classified_in_each_dialect(tmp_path, provider, kind):
    """A 429 or 5xx from the model list is the provider's problem, classified like a paid probe's."""
    from conftest import with_sim
    from modelwatch.sim.scenario import Scenario

    scenario = Scenario.model_validate({"models": {"healthy": {}}, "model_list": {"error": kind}})

    async def body(session, url):
        block = PROVIDERS[provider] % url
        path = tmp_path / "c.yaml"
        path.write_text(f"providers:\n  p: {block[:-1]}, api_key: '{TEST_KEY}'}}\n"
                        "targets:\n  - {name: t, provider: p, model: healthy, probes: [{kind: models}]}\n")
        job = load_config(path).jobs[0]
        async with new_http_session() as http:
            return await run_probe(job, http, prober_for(job.provider.type, "models"))

    r = with_sim(scenario, body)
    assert (r.outcome, r.http_status) == LIST_FAILURES[provider][kind], r
    assert r.error_code and r.duration_s is not None
