"""Config loading: every invalid file in tests/data/config/ gives exactly its expected problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelwatch.config import ConfigError, format_duration, load_config, parse_duration, parse_listen

DATA = Path(__file__).parent / "data" / "config"
INVALID = sorted(DATA.glob("*.yaml"))


def expected_problems(path: Path) -> list[str]:
    """The ``# error:`` header lines of a test file, with {file} and {dir} filled in."""
    lines = [line.split("# error: ", 1)[1].rstrip("\n")
             for line in path.read_text().splitlines() if line.startswith("# error: ")]
    return [(line if line.startswith("{dir}") else "{file}: " + line).format(file=path, dir=path.parent)
            for line in lines]


def test_every_invalid_file_declares_its_errors():
    assert len(INVALID) >= 20
    for path in INVALID:
        assert expected_problems(path), f"{path.name} has no '# error:' line"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_gives_exact_problems(path, monkeypatch):
    monkeypatch.delenv("MODELWATCH_TEST_UNSET_VARIABLE", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == expected_problems(path)


@pytest.mark.slow
def test_check_config_cli_prints_every_problem_without_traceback():
    path = DATA / "many_problems.yaml"
    proc = subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    for problem in expected_problems(path):
        assert problem in proc.stderr


def test_full_config_loads_with_defaults_includes_env_and_key_file(monkeypatch):
    monkeypatch.setenv("MODELWATCH_TEST_KEY", "sk-test-from-env-123456")
    monkeypatch.delenv("MODELWATCH_TEST_DB", raising=False)
    cfg = load_config(DATA / "valid" / "full.yaml")
    assert str(cfg.storage.path) == "/tmp/modelwatch-test.db"  # ${VAR:-default}
    assert cfg.storage.retention == 7 * 86400
    assert cfg.server.listen == "[::1]:9477"
    assert cfg.location == "eu-west" and cfg.max_concurrent_probes == 32
    jobs = {j.target: j for j in cfg.jobs}
    assert set(jobs) == {"gpt-4o-mini", "llama3.2"}  # the disabled probe is not scheduled
    mini = jobs["gpt-4o-mini"]
    assert mini.probe.interval == 30 and mini.probe.timeout == 20 and mini.probe.max_tokens == 8
    assert mini.provider.base_url == "https://api.openai.com/v1"  # trailing slash dropped
    assert mini.api_key.reveal() == "sk-test-from-env-123456"
    assert mini.price.output == 0.6 and mini.location == "eu-west"
    llama = jobs["llama3.2"]
    assert llama.probe.interval == 45 and llama.api_key is None  # defaults; compat needs no key
    assert llama.probe.max_tokens_field == "max_tokens"
    assert cfg.providers["local"].api_key_file.name == "key.txt"


def test_key_file_is_read_from_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai").write_text("sk-from-credentials-dir-999\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "providers:\n  openai: {type: openai, base_url: 'https://x.test/v1', api_key_file: openai}\n"
        "targets:\n  - {name: t, provider: openai, model: m, probes: [{kind: rest}]}\n")
    job = load_config(cfg_file).jobs[0]
    assert job.api_key.reveal() == "sk-from-credentials-dir-999"


def test_secret_never_prints(monkeypatch):
    monkeypatch.setenv("MODELWATCH_TEST_KEY", "sk-test-canary-abcdef123456")
    cfg = load_config(DATA / "valid" / "full.yaml")
    dumped = repr(cfg) + str(cfg.providers["openai"]) + cfg.providers["openai"].model_dump_json()
    assert "canary" not in dumped
    assert "<secret>" in dumped


@pytest.mark.parametrize("text,seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("30d", 2592000), (15, 15), ("1.5s", 1.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "5 minutes", "-1s", "0s", True, "1w"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips():
    for text in ("500ms", "30s", "5m", "1h", "30d"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text,pair", [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:9477", ("0.0.0.0", 9477)),
])
def test_parse_listen(text, pair):
    assert parse_listen(text) == pair


def test_parse_listen_refuses_a_missing_host():
    """":9477" once meant every interface without saying so (issue 17)."""
    with pytest.raises(ValueError, match="must name the host"):
        parse_listen(":9477")


def test_a_default_api_applies_where_it_can_and_an_explicit_one_is_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "defaults: {api: responses}\n"
        "providers:\n  openai: {type: openai, base_url: 'https://x.test/v1', api_key: k}\n"
        "  claude: {type: anthropic, base_url: 'https://y.test/v1', api_key: k}\n"
        "targets:\n  - {name: a, provider: openai, model: m, probes: [{kind: rest}, {kind: models}]}\n"
        "  - {name: b, provider: claude, model: m, probes: [{kind: rest}]}\n")
    jobs = {(j.target, j.probe.kind): j.probe.api for j in load_config(path).jobs}
    assert jobs == {("a", "rest"): "responses", ("a", "models"): "chat", ("b", "rest"): "chat"}
