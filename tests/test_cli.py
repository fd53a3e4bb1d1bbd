"""The command line as a user runs it: exit codes, output formats, one-line errors."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import TEST_KEY, sim_log, write_config
from daemon_helpers import assert_one_at_a_time_per_target, rows
from modelwatch.cli import cli
from modelwatch.outcomes import COLUMNS

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

COMMANDS = sorted(cli.commands)


def mw(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelwatch", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_the_design_commands_exist():
    assert set(COMMANDS) >= {"run", "probe", "check-config", "report", "sim", "demo"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    out = mw(command, "--help")
    assert out.returncode == 0
    assert "Example:" in out.stdout


def test_probe_json_lines_have_the_column_names_and_exit_codes(tmp_path, sim_url):
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"good": "healthy", "bad": "err-server"})
    out = mw("probe", "-c", str(cfg), "--json")
    assert out.returncode == 1, out.stderr  # one probe failed
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [tuple(obj) for obj in lines] == [COLUMNS, COLUMNS]
    by_target = {obj["target"]: obj for obj in lines}
    assert by_target["good"]["outcome"] == "ok" and by_target["bad"]["outcome"] == "server_error"
    ok = mw("probe", "-c", str(cfg), "good")
    assert ok.returncode == 0 and re.match(r"good\s+rest\s+ok\s+connect=\d+ms", ok.stdout)


def test_probe_selects_targets_by_glob_and_kind(tmp_path, sim_url):
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a-1": "healthy", "a-2": "healthy", "b": "healthy"})
    out = mw("probe", "-c", str(cfg), "a-*", "--kind", "rest")
    assert out.returncode == 0
    assert sorted(line.split()[0] for line in out.stdout.splitlines()) == ["a-1", "a-2"]
    none = mw("probe", "-c", str(cfg), "zzz")
    assert none.returncode == 2 and "no enabled probe matches zzz" in none.stderr


def test_probe_runs_targets_at_once_and_the_kinds_of_a_target_one_after_another(tmp_path, sim_url):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: '{TEST_KEY}'}}\n"
                   "targets:\n" + "".join(
                       f"  - {{name: {t}, provider: sim, model: fixed-ttft, probes: [{{kind: rest}}, {{kind: models}}]}}\n"
                       for t in ("a", "b", "c")))
    out = mw("probe", "-c", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["target"], r["kind"]) for r in results] == [  # in config order, as always
        (t, k) for t in ("a", "b", "c") for k in ("rest", "models")]
    assert_one_at_a_time_per_target(results, sim_log(sim_url))
    started = sorted(r["ts"] for r in results if r["kind"] == "rest")
    assert started[-1] - started[0] < 0.2  # the targets did not wait for each other


def test_probe_does_not_leak_the_key_it_sends(tmp_path, sim_url):
    key = "sk-bad-CliCanary9876543210abcdef"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"}, key=key)
    for args in (["probe", "-c", str(cfg)], ["probe", "-c", str(cfg), "--json"],
                 ["--log-level", "debug", "probe", "-c", str(cfg)]):
        out = mw(*args)
        assert out.returncode == 1 and "auth_error" in out.stdout
        for text in (out.stdout, out.stderr):
            assert key not in text and key[:10] not in text and key[-6:] not in text


def test_config_errors_exit_2_with_one_line_each(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: 3\nwat: 1\n")
    for command in ("run", "probe", "check-config"):
        out = mw(command, "-c", str(bad))
        assert out.returncode == 2, command
        assert "Traceback" not in out.stderr
        assert f"{bad}: wat: unknown key" in out.stderr
        assert f"{bad}: targets: must be a list of targets" in out.stderr
    missing = mw("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read file: No such file or directory" in missing.stderr


def test_default_config_path_comes_from_the_environment(tmp_path, sim_url):
    import os
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"})
    out = mw("check-config", env={**os.environ, "MODELWATCH_CONFIG": str(cfg)})
    assert out.returncode == 0 and "1 targets, 1 probes" in out.stdout


def test_log_level_before_or_after_the_command(tmp_path, sim_url):
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "err-rate"})
    before = mw("--log-level", "warning", "probe", "-c", str(cfg))
    after = mw("probe", "-c", str(cfg), "--log-level", "warning")
    assert before.returncode == after.returncode == 1
    bad = mw("probe", "-c", str(cfg), "--log-level", "loud")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_dry_run_prints_cost_per_day_and_probes_nothing(tmp_path, sim_url):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: '{TEST_KEY}'}}\n"
        "targets:\n  - {name: a, provider: sim, model: healthy, price: {input: 1.0, output: 2.0},"
        " probes: [{kind: rest, interval: 60s, max_tokens: 10}]}\n")
    import urllib.request
    urllib.request.urlopen(urllib.request.Request(f"{sim_url}/_sim/requests", method="DELETE")).close()
    out = mw("probe", "-c", str(cfg), "--dry-run")
    assert out.returncode == 0
    assert "1440 probes/day" in out.stdout
    # 1440 probes x (8 + 1 prompt tokens) x $1/M + 1440 x 10 output tokens x $2/M
    assert f"${(1440 * 9 * 1.0 + 1440 * 10 * 2.0) / 1e6:.4f}/day" in out.stdout
    with urllib.request.urlopen(f"{sim_url}/_sim/requests") as resp:
        assert json.load(resp) == []


def test_report_from_the_daemon_database(tmp_path, sim_url):
    db = tmp_path / "mw.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"ok": "healthy", "limited": "err-rate"},
                       interval="300ms", db=db, listen="127.0.0.1:0")
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError):  # the table may not exist yet
                if db.exists() and len(rows(db)) >= 6:
                    break
            time.sleep(0.2)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    table = mw("report", "--db", str(db), "--since", "1h")
    assert table.returncode == 0
    assert re.search(r"ok\s+rest\s+\d+\s+100\.00%", table.stdout)
    assert re.search(r"limited\s+rest\s+\d+\s+0\.00%.*rate_limited=\d+", table.stdout)
    data = json.loads(mw("report", "--db", str(db), "--format", "json").stdout)
    ok = next(r for r in data if r["target"] == "ok")
    assert ok["availability"] == 1.0 and ok["ttft_p50_s"] > 0
    limited = next(r for r in data if r["target"] == "limited")
    # a target only ever rate limited says nothing about the provider: no provider availability
    assert limited["rate_limited"] == limited["probes"] and limited["provider_availability"] is None
    csv_out = mw("report", "--db", str(db), "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("target,kind,probes,availability") and len(csv_out) == 3
    assert mw("report", "--db", str(tmp_path / "none.db")).returncode == 2
    assert mw("report", "--db", str(db), "--since", "soon").returncode == 2


def test_demo_runs_simulator_and_daemon_then_stops(tmp_path):
    db = tmp_path / "demo.db"
    out = mw("demo", "--for", "6s", "--db", str(db), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "metrics:" in out.stdout and "/metrics" in out.stdout
    stored = rows(db)
    assert {"gpt-4o-mini", "flaky-model", "gpt-4o-mini-realtime", "gpt-4o-mini-realtime-audio",
            "gpt-4o-mini-responses", "claude-haiku-4-5", "gemini-2.5-flash",
            "gemini-live-2.5-flash"} <= {r["target"] for r in stored}
    assert any(r["outcome"] == "ok" for r in stored)
    for target in ("gpt-4o-mini-responses", "gemini-2.5-flash"):  # every protocol answers in the demo
        assert any(r["outcome"] == "ok" and r["ttft_s"] for r in stored if r["target"] == target), target
    realtime = [r for r in stored if r["kind"] == "realtime"]
    assert realtime and all(r["outcome"] == "ok" for r in realtime), realtime
    assert any(r["output_audio_tokens"] for r in realtime if r["target"].endswith("-audio"))
    assert all(r["cost_usd"] > 0 for r in stored if r["outcome"] == "ok" and r["kind"] != "models")
