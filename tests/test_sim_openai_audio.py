"""What the simulator's speech endpoints share: auth, Azure routes, injected errors, the request log.

Every test starts the simulator on port 0 and talks to it with aiohttp or the
official ``openai`` SDK; nothing is mocked.
"""

from __future__ import annotations

import json

import openai
import pytest

from audio_helpers import AZURE_KEY, KEY, make_scenario, post_transcription, sim_log, transcription_form, wav_bytes
from conftest import with_sim
from modelwatch.sim.openai_http import ERRORS
from modelwatch.sim.scenario import ERROR_KINDS, ScenarioError, parse_scenario

FAST = {"ttfb_ms": 0, "ttft_ms": 5, "inter_token_ms": 1, "tokens": 2, "audio_ms": 200, "audio_chunk_ms": 100}
SPEECH = {"model": "m", "input": "Say OK.", "voice": "alloy", "response_format": "pcm"}
ENDPOINTS = ("transcriptions", "speech")


async def post(session, url, endpoint: str, *, path: str | None = None, headers=KEY, model: str = "m"):
    """POST to a speech endpoint; returns (status, headers, body text)."""
    path = path or f"/v1/audio/{endpoint}"
    if endpoint == "transcriptions":
        return await post_transcription(session, url, transcription_form(model), path=path, headers=headers)
    async with session.post(url + path, json={**SPEECH, "model": model}, headers=headers) as response:
        return response.status, response.headers, (await response.read()).decode("latin-1")


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_openai_auth_failures_have_openai_401_bodies(endpoint):
    async def body(session, url):
        missing = await post(session, url, endpoint, headers={})
        refused = await post(session, url, endpoint, headers={"Authorization": "Bearer sk-bad-0123456789abcd"})
        return missing, refused, await sim_log(session, url)

    missing, refused, log = with_sim(make_scenario(m=FAST), body)
    assert missing[0] == 401 and json.loads(missing[2])["error"]["message"].startswith("Missing bearer")
    error = json.loads(refused[2])["error"]
    assert refused[0] == 401 and (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "sk-bad-0*********abcd" in error["message"] and "0123456789" not in error["message"]
    assert [e["outcome"] for e in log] == ["auth_error", "auth_error"]


def test_a_listed_key_is_required_when_keys_are_set():
    async def body(session, url):
        return [(await post(session, url, "speech", headers=headers))[0]
                for headers in ({"Authorization": "Bearer sk-listed"}, {"Authorization": "Bearer sk-other"})]

    assert with_sim(make_scenario(keys=["sk-listed"], m=FAST), body) == [200, 401]


# ---------------------------------------------------------------- Azure


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_azure_routes_take_the_api_key_and_name_the_deployment(endpoint):
    async def body(session, url):
        v1 = await post(session, url, endpoint, path=f"/openai/v1/audio/{endpoint}", headers=AZURE_KEY)
        dated = await post(session, url, endpoint, model="ignored", headers=AZURE_KEY,
                           path=f"/openai/deployments/m/audio/{endpoint}?api-version=2025-04-01-preview")
        no_key = await post(session, url, endpoint, path=f"/openai/v1/audio/{endpoint}", headers={})
        no_version = await post(session, url, endpoint, path=f"/openai/deployments/m/audio/{endpoint}",
                                headers=AZURE_KEY)
        unknown = await post(session, url, endpoint, headers=AZURE_KEY,
                             path=f"/openai/deployments/nope/audio/{endpoint}?api-version=v1")
        return v1, dated, no_key, no_version, unknown, await sim_log(session, url)

    v1, dated, no_key, no_version, unknown, log = with_sim(make_scenario(m=FAST), body)
    assert (v1[0], dated[0]) == (200, 200)
    assert [e["model"] for e in log[:2]] == ["m", "m"]  # the path's deployment, not the body's model
    assert no_key[0] == 401 and json.loads(no_key[2])["error"]["code"] == "401"
    assert no_version[0] == 404 and json.loads(no_version[2])["error"]["message"] == "Resource not found"
    assert unknown[0] == 404 and json.loads(unknown[2])["error"]["code"] == "DeploymentNotFound"


def test_azure_rate_limit_names_the_audio_operation():
    async def body(session, url):
        return await post(session, url, "speech", path="/openai/v1/audio/speech", headers=AZURE_KEY)

    status, headers, text = with_sim(make_scenario(m={**FAST, "error": "rate_limited"}), body)
    error = json.loads(text)["error"]
    assert status == 429 and error["code"] == "429" and headers["retry-after"] == "1"
    assert "Speech_Create" in error["message"] and "ChatCompletions" not in error["message"]


def test_the_azure_sdk_client_transcribes_and_speaks():
    async def body(session, url):
        client = openai.AsyncAzureOpenAI(azure_endpoint=url, api_key="azure-key-1", api_version="2025-04-01-preview",
                                         max_retries=0)
        text = await client.audio.transcriptions.create(model="m", file=("a.wav", wav_bytes()))
        speech = await client.audio.speech.create(model="m", input="Hi", voice="alloy", response_format="pcm")
        return text.text, len(speech.read()), [e["path"] for e in await sim_log(session, url)]

    text, size, paths = with_sim(make_scenario(m={**FAST, "transcript": "Hi there."}), body)
    assert text == "Hi there." and size == 200 * 48
    assert paths == ["/openai/deployments/m/audio/transcriptions", "/openai/deployments/m/audio/speech"]


# ---------------------------------------------------------------- injected errors


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("kind", [k for k in ERROR_KINDS if k != "content_blocked"])
def test_each_error_kind_gets_its_openai_status_and_body(endpoint, kind):
    async def body(session, url):
        return await post(session, url, endpoint), await sim_log(session, url)

    (status, headers, text), log = with_sim(make_scenario(m={**FAST, "error": kind}), body)
    spec = ERRORS[kind]
    assert status == spec.status and headers["x-request-id"].startswith("req_")
    if spec.html:
        assert headers["Content-Type"].startswith("text/html") and spec.message in text
    else:
        error = json.loads(text)["error"]
        assert (error["type"], error["code"]) == (spec.type, spec.code)
    if spec.retry_after_s is not None:
        assert headers["retry-after"] == f"{spec.retry_after_s:g}"
    assert (log[0]["status"], log[0]["outcome"]) == (spec.status, kind)


def test_unknown_models_get_404_model_not_found():
    async def body(session, url):
        return [await post(session, url, endpoint, model="gpt-nope") for endpoint in ENDPOINTS]

    for status, _, text in with_sim(make_scenario(m=FAST), body):
        error = json.loads(text)["error"]
        assert status == 404 and error["code"] == "model_not_found" and "gpt-nope" in error["message"]


def test_errors_wait_for_ttfb_and_follow_error_shape():
    async def body(session, url):
        return await post(session, url, "speech"), await sim_log(session, url)

    scenario = make_scenario(m={**FAST, "ttfb_ms": 40, "ttft_ms": 40, "error": "server_error",
                                "error_shape": "vllm_flat"})
    (status, _, text), log = with_sim(scenario, body)
    assert status == 500 and json.loads(text)["object"] == "error"
    assert log[0]["actual_duration_s"] >= 0.040


# ---------------------------------------------------------------- request log and scenario


def test_the_log_keeps_settings_but_no_audio_or_text():
    async def body(session, url):
        await post_transcription(session, url, transcription_form("m", prompt="secret words", language="en"))
        async with session.post(url + "/v1/audio/speech", headers=KEY, json={
                **SPEECH, "input": "private text", "instructions": "private style", "speed": 1.5}) as response:
            await response.read()
        return await sim_log(session, url)

    transcription, speech = with_sim(make_scenario(m=FAST), body)
    assert transcription["options"] == {"model": "m", "language": "en",
                                        "file": {"filename": "probe.wav", "bytes": len(wav_bytes())}}
    assert speech["options"] == {"model": "m", "voice": "alloy", "response_format": "pcm", "speed": 1.5}
    for entry in (transcription, speech):
        assert entry["status"] == 200 and entry["outcome"] == "ok"
        assert entry["injected_ttft_s"] == pytest.approx(0.005)
        assert entry["actual_ttft_s"] >= entry["injected_ttft_s"]
        assert entry["actual_duration_s"] >= entry["actual_ttft_s"]


def test_transcript_is_a_strict_string_knob():
    assert parse_scenario("models: {m: {transcript: Hello.}}").models["m"].transcript == "Hello."
    with pytest.raises(ScenarioError, match="transcript"):
        parse_scenario("models: {m: {transcript: 42}}")
    with pytest.raises(ScenarioError, match="did you mean 'transcript'"):
        parse_scenario("models: {m: {transcrpt: Hello.}}")
