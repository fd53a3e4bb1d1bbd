"""Hostile and broken configs: each is a clear ``file: key.path: reason`` and exit 2.

What an adversarial run found (issues 10 and 17): values the validator took
but ``run`` could not use (an infinite or NaN interval, a 100 ns one that spun
the scheduler), files that hung or exhausted memory (a FIFO, /dev/zero, a YAML
"billion laughs"), internal errors instead of config errors (not UTF-8, deep
nesting, a date in extra_body), a non-config include whose lines were printed
as "unknown key" errors, and header or key values that would split a request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelwatch.config import ConfigError, load_config
from modelwatch.secrets import redact

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

PROVIDER = "providers:\n  p: {type: openai, base_url: 'https://x.test/v1', api_key: sk-test-abcdefgh12345678}\n"
TARGET = "targets:\n  - {name: t, provider: p, model: m, probes: [{kind: rest}]}\n"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def check_config(path: Path) -> subprocess.CompletedProcess:
    """The real CLI, with a timeout: a hang is a failure, not a stuck suite."""
    return subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


CASES = {
    # name: (config text, expected problem suffix)
    "interval_inf": ("defaults: {interval: .inf}\n", "defaults.interval: must be at most 3650d"),
    "interval_nan": ("defaults: {interval: .nan}\n",
                     "defaults.interval: must be a duration such as 500ms, 30s, 5m, 1h or 30d"),
    "interval_1e24": ("defaults: {interval: 1.0e+24}\n", "defaults.interval: must be at most 3650d"),
    "interval_huge_days": ("defaults: {interval: 99999999999d}\n", "defaults.interval: must be at most 3650d"),
    "interval_tiny": ("defaults: {interval: 0.0000001}\n", "defaults.interval: must be at least 1ms"),
    "interval_too_short": ("defaults: {interval: 20ms}\n", "defaults.interval: must be from 100ms to 30d"),
    "timeout_nan": ("defaults: {timeout: .nan}\n",
                    "defaults.timeout: must be a duration such as 500ms, 30s, 5m, 1h or 30d"),
    "timeout_too_long": ("defaults: {timeout: 2h}\n", "defaults.timeout: must be from 10ms to 1h"),
    "retention_inf": ("storage: {retention: .inf}\n", "storage.retention: must be at most 3650d"),
    "storage_path_empty": ("storage: {path: ''}\n", "storage.path: must be the path of the SQLite database file"),
    "listen_without_host": ("server: {listen: ':9477'}\n", "server.listen: must name the host: 127.0.0.1:9477 "
                            "for this machine only, 0.0.0.0:9477 or [::]:9477 for every interface"),
    "extra_body_date": (
        "providers:\n  c: {type: openai-compatible, base_url: 'http://127.0.0.1:1/v1'}\n"
        "targets:\n  - {name: t, provider: c, model: m, probes: [{kind: rest, extra_body: {since: 2024-01-01}}]}\n",
        "targets[0].probes[0].extra_body: must hold only JSON values: strings (quote dates), numbers, "
        "true/false, null, lists and mappings"),
    "duplicate_key": ("defaults: {interval: 30s}\ndefaults: {interval: 60s}\n",
                      "invalid YAML: line 2, column 1: duplicate key 'defaults' (first on line 1)"),
    "provider_name_quote": ("providers:\n  'a\"b': {type: openai, base_url: 'https://x.test/v1', api_key: k1234567}\n",
                            "providers: provider name 'a\"b' must be letters, digits and . _ : / - "
                            "(at most 128, starting with a letter or digit)"),
    "provider_name_cr": ("providers:\n  \"a\\rb\": {type: openai, base_url: 'https://x.test/v1', api_key: k1234567}\n",
                         "providers: provider name 'a\\rb' must be letters"),
    "header_crlf": ("providers:\n  p: {type: openai, base_url: 'https://x.test/v1', api_key: k1234567,"
                    " headers: {X-Gw: \"v\\r\\nX-Evil: 1\"}}\n",
                    "providers.p.headers: header 'X-Gw' must be one line without control characters"),
    "header_name_space": ("providers:\n  p: {type: openai, base_url: 'https://x.test/v1', api_key: k1234567,"
                          " headers: {'Authorization ': 'Bearer x'}}\n",
                          "providers.p.headers: header name 'Authorization ' is not a valid HTTP header name"),
    "api_key_crlf": ("providers:\n  p: {type: openai, base_url: 'https://x.test/v1', api_key: \"sk-a\\r\\nX: y\"}\n",
                     "providers.p.api_key: must be one line without spaces or control characters"),
    "base_url_bad_port": ("providers:\n  p: {type: openai, base_url: 'https://x.test:99999/v1', api_key: k1234567}\n",
                          "providers.p.base_url: has an invalid port (a number from 1 to 65535)"),
    "base_url_text_port": ("providers:\n  p: {type: openai, base_url: 'https://x.test:abc/v1', api_key: k1234567}\n",
                           "providers.p.base_url: has an invalid port (a number from 1 to 65535)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_value_is_a_config_error(name, tmp_path):
    text, expected = CASES[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    got = problems_of(path)
    assert any(p.startswith(f"{path}: {expected}") or p == f"{path}: {expected}" for p in got), got


def test_storage_path_that_is_a_directory_or_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, reason in ((tmp_path, "is a directory"), (fifo, "is not a regular file")):
        path = tmp_path / "c.yaml"
        path.write_text(f"storage: {{path: '{target}'}}\n")
        got = problems_of(path)
        assert got and got[0].startswith(f"{path}: storage.path: {target} {reason}"), got


def test_an_include_that_is_no_config_file_is_not_printed(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\nsecretuser:$6$salt$hash:19000:0:99999:7:::\n")
    path = tmp_path / "c.yaml"
    path.write_text(f"include: ['{shadow}']\n")
    proc = check_config(path)
    assert proc.returncode == 2
    assert f"{shadow}: is not a modelwatch config file" in proc.stderr
    assert "secretuser" not in proc.stderr + proc.stdout and "19000" not in proc.stderr + proc.stdout


def test_files_that_are_not_regular_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block forever
    for special in (fifo, Path("/dev/zero"), Path("/dev/urandom")):
        path = tmp_path / "c.yaml"
        path.write_text(f"include: ['{special}']\n")
        proc = check_config(path)
        assert proc.returncode == 2 and f"{special}: is not a regular file" in proc.stderr, proc.stderr
        path.write_text(PROVIDER.replace("api_key: sk-test-abcdefgh12345678", f"api_key_file: '{special}'") + TARGET)
        proc = check_config(path)
        assert proc.returncode == 2
        assert f"providers.p.api_key_file: {special} is not a regular file" in proc.stderr, proc.stderr
    proc = check_config(fifo)
    assert proc.returncode == 2 and f"{fifo}: is not a regular file" in proc.stderr


def test_a_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"location: caf\xe9\n")
    assert problems_of(path) == [f"{path}: is not UTF-8 text (byte 13)"]


def test_a_file_over_the_size_limit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# padding\n" * 120_000)
    assert problems_of(path) == [f"{path}: is larger than 1024 KiB"]


@pytest.mark.parametrize("where", ["", "defaults: {extra_body: *i}\n"])
def test_a_billion_laughs_is_bounded(where, tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "c.yaml"
    path.write_text("x:\n" + "\n".join("  " + ln for ln in lines) + "\n" + where)
    proc = check_config(path)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: too many values once its aliases are expanded (at most 100000)" in proc.stderr


def test_a_recursive_alias_and_deep_nesting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &d {extra_body: {loop: [*d]}}\n")
    got = problems_of(path)
    assert got == [f"{path}: nested too deeply (at most 64 levels)"] or \
        any("nested too deeply" in p or "invalid YAML" in p for p in got), got
    path.write_text("x: " + "[" * 50_000 + "]" * 50_000 + "\n")
    proc = check_config(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nested too deeply" in proc.stderr


def test_custom_header_values_are_redacted_like_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  p: {type: openai, base_url: 'https://x.test/v1', api_key: sk-test-abcdefgh12345678,"
                    " headers: {Ocp-Apim-Subscription-Key: 0123456789abcdef0123, Cookie: 'session=zz9yy8xx7ww6'}}\n"
                    + TARGET)
    cfg = load_config(path)
    assert "0123456789abcdef0123" not in repr(cfg.providers["p"])
    echoed = redact("401: subscription key 0123456789abcdef0123 invalid; cookie session=zz9yy8xx7ww6")
    assert "0123456789abcdef" not in echoed and "zz9yy8xx7ww6" not in echoed


def test_run_names_the_database_it_cannot_open(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = tmp_path / "c.yaml"
    path.write_text(f"storage: {{path: '{blocker}/modelwatch.db'}}\n" + PROVIDER + TARGET)
    assert problems_of(path) == [f"{path}: storage.path: {blocker}/modelwatch.db cannot be used: Not a directory"]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database, whatever its name says" * 100)
    path.write_text(f"storage: {{path: '{garbage}'}}\nserver: {{listen: '127.0.0.1:0'}}\n" + PROVIDER + TARGET)
    proc = subprocess.run([sys.executable, "-m", "modelwatch", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"cannot open the database {garbage}: file is not a database" in proc.stderr, proc.stderr


def test_merge_keys_may_still_be_overridden(tmp_path):
    """Refusing duplicate keys must not refuse YAML's own override of a merged key."""
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &base {interval: 30s, timeout: 5s}\n" + PROVIDER +
                    "targets:\n  - {name: t, provider: p, model: m, probes: [{<<: *base, kind: rest, interval: 45s}]}\n")
    probe = load_config(path).jobs[0].probe
    assert (probe.interval, probe.timeout) == (45.0, 5.0)
    path.write_text(PROVIDER + "targets:\n  - &t {name: t, provider: p, model: m, probes: [{kind: rest}]}\n"
                    "  - {<<: *t, name: u}\n")
    assert sorted(j.target for j in load_config(path).jobs) == ["t", "u"]
