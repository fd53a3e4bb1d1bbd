"""``modelwatch run`` end to end: simulator -> probes -> SQLite and /metrics, then a clean stop."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
import pytest

from conftest import free_port, sim_log, write_config
from daemon_helpers import (assert_one_at_a_time_per_target, http_get, http_post, max_overlap, metric, rows,
                            running_daemon, samples, wait_for)
from modelwatch.outcomes import COLUMNS, Outcome

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

TARGETS = {"healthy": "healthy", "limited": "err-rate", "fixed": "fixed-ttft"}


def test_daemon_probes_writes_rows_serves_metrics_and_stops_cleanly(tmp_path, sim_url, promtool):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, TARGETS, interval="500ms",
                       listen=f"127.0.0.1:{port}", db=db, location="lab")
    with running_daemon(cfg, port) as (proc, url):
        first = http_get(url + "/metrics")
        # Every outcome series exists at 0 before the first probe result.
        for target in TARGETS:
            for outcome in Outcome:
                key = ("modelwatch_probes_total", tuple(sorted({
                    "target": target, "provider": "sim", "model": TARGETS[target], "kind": "rest",
                    "location": "lab", "outcome": outcome.value}.items())))
                assert key in samples(first), key
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and all(
            metric(t, "modelwatch_probes_total", target=n) >= 3 for n in TARGETS) and t, 20)
        assert metric(text, "modelwatch_probes_total", target="healthy", outcome="ok") >= 3
        assert metric(text, "modelwatch_probes_total", target="limited", outcome="rate_limited") >= 3
        assert metric(text, "modelwatch_probe_success", target="healthy") == 1
        assert metric(text, "modelwatch_probe_success", target="limited") == 0
        assert metric(text, "modelwatch_probe_ttft_seconds_count", target="fixed") >= 3
        assert metric(text, "modelwatch_probe_tokens_total", target="healthy", direction="output") >= 12
        assert metric(text, "modelwatch_config_last_reload_successful") == 1
        assert metric(text, "modelwatch_event_loop_lag_seconds_count") > 0
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "Traceback" not in proc.stderr.read()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    stored = rows(db)
    # Everything /metrics counted before the stop reached the database, complete.
    counted = metric(text, "modelwatch_probes_total")
    assert len(stored) >= counted
    assert {r["target"] for r in stored} == set(TARGETS)
    assert all(r["outcome"] and r["duration_s"] is not None and r["location"] == "lab" for r in stored)
    assert set(COLUMNS) <= set(stored[0])
    fixed = [r for r in stored if r["target"] == "fixed"]
    assert all(0.250 <= r["ttft_s"] < 0.265 for r in fixed), [r["ttft_s"] for r in fixed]


def test_start_times_are_spread_over_the_interval(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    targets = {f"t{i}": "healthy" for i in range(8)}
    cfg = write_config(tmp_path / "c.yaml", sim_url, targets, interval="2s",
                       listen=f"127.0.0.1:{port}", db=db)
    with running_daemon(cfg, port) as (_, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_total") >= 16, 15)
    firsts = sorted(rows(db, "SELECT target, MIN(ts) AS ts FROM probe_results GROUP BY target"),
                    key=lambda r: r["ts"])
    starts = [r["ts"] for r in firsts]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert starts[-1] - starts[0] > 1.5  # spread across the 2 s interval ...
    assert min(gaps) > 0.15  # ... evenly: 8 targets, one every ~250 ms
    # and each keeps its cadence afterwards
    for r in firsts:
        ts = [x["ts"] for x in rows(db, "SELECT ts FROM probe_results WHERE target=? ORDER BY ts",
                                    (r["target"],))]
        assert all(1.9 < b - a < 2.1 for a, b in zip(ts, ts[1:])), ts


def test_a_probe_still_running_skips_its_next_run(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"stuck": "stall", "fine": "healthy"},
                       interval="300ms", timeout="1s", listen=f"127.0.0.1:{port}", db=db)
    with running_daemon(cfg, port) as (_, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total", target="stuck") >= 2 and t, 15)
        assert metric(text, "modelwatch_skipped_runs_total", target="stuck") >= 2
        assert metric(text, "modelwatch_skipped_runs_total", target="fine") == 0
        # the slow target never delayed the fast one
        assert metric(text, "modelwatch_probes_total", target="fine") >= 5
    stuck = rows(db, "SELECT ts, duration_s FROM probe_results WHERE target='stuck' ORDER BY ts")
    for a, b in zip(stuck, stuck[1:]):
        assert b["ts"] >= a["ts"] + a["duration_s"] - 0.01  # never overlapped itself


def test_reload_keeps_old_config_when_new_one_is_bad(tmp_path, sim_url):
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"}, interval="300ms",
                       listen=f"127.0.0.1:{port}")
    with running_daemon(cfg, port) as (proc, url):
        good = cfg.read_text()
        cfg.write_text(good + "bogus_key: 1\n")
        status, body = http_post(url + "/-/reload")
        assert status == 500 and "bogus_key: unknown key" in body
        text = http_get(url + "/metrics")
        assert metric(text, "modelwatch_config_last_reload_successful") == 0
        before = metric(text, "modelwatch_probes_total", target="a")
        wait_for(lambda: metric(http_get(url + "/metrics"), "modelwatch_probes_total", target="a") > before, 5)

        write_config(tmp_path / "c.yaml", sim_url, {"b": "healthy"}, interval="300ms",
                     listen=f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGHUP)
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total", target="b") >= 1 and t, 10)
        assert metric(text, "modelwatch_config_last_reload_successful") == 1
        assert metric(text, "modelwatch_probes_total", target="a") == 0  # series removed
        assert proc.poll() is None


def test_sigint_also_stops_with_exit_zero(tmp_path, sim_url):
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"a": "healthy"}, listen=f"127.0.0.1:{port}")
    with running_daemon(cfg, port) as (proc, _):
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_concurrency_is_bounded_per_provider_and_globally(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = tmp_path / "c.yaml"
    targets = "".join(f"  - {{name: one{i}, provider: narrow, model: fixed-ttft, probes: [{{kind: rest}}]}}\n"
                      for i in range(3))
    targets += "".join(f"  - {{name: wide{i}, provider: wide, model: fixed-ttft, probes: [{{kind: rest}}]}}\n"
                       for i in range(4))
    cfg.write_text(
        f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}'}}\n"
        "max_concurrent_probes: 3\ndefaults: {interval: 300ms, timeout: 3s}\nproviders:\n"
        f"  narrow: {{type: openai, base_url: '{sim_url}/v1', api_key: sk-t-0000000000, max_concurrent_probes: 1}}\n"
        f"  wide: {{type: openai, base_url: '{sim_url}/v1', api_key: sk-t-0000000000}}\n"
        f"targets:\n{targets}")
    with running_daemon(cfg, port) as (_, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_total") >= 20, 20)

    stored = rows(db)
    spans = lambda pred: [(r["ts"], r["ts"] + r["duration_s"] - 0.002) for r in stored if pred(r)]
    assert max_overlap(spans(lambda r: r["provider"] == "narrow")) == 1
    assert max_overlap(spans(lambda r: True)) == 3  # the global bound, reached and held


def test_realtime_probes_in_the_daemon(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {interval: 400ms, timeout: 3s}\nproviders:\n"
        f"  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: sk-t-0000000000}}\n"
        "targets:\n"
        "  - {name: rt, provider: sim, model: rt-healthy, probes: [{kind: realtime}, {kind: rest}]}\n"
        "  - {name: rt-audio, provider: sim, model: rt-healthy, probes: [{kind: realtime, modality: audio}]}\n")
    with running_daemon(cfg, port) as (_, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and all(
            metric(t, "modelwatch_probes_total", target=n, kind="realtime", outcome="ok") >= 2
            for n in ("rt", "rt-audio")) and t, 20)
        assert metric(text, "modelwatch_probe_ttft_seconds_count", target="rt", kind="realtime") >= 2
        assert metric(text, "modelwatch_probes_total", target="rt", kind="rest") >= 1
    stored = rows(db, "SELECT * FROM probe_results WHERE kind='realtime'")
    assert {r["target"] for r in stored} == {"rt", "rt-audio"}
    assert all(r["http_status"] == 101 and r["ttft_s"] and r["request_id"] for r in stored
               if r["outcome"] == "ok")
    assert any(r["output_audio_tokens"] for r in stored if r["target"] == "rt-audio")


def test_a_stalled_daemon_says_so_in_the_rows_it_measured(tmp_path, sim_url):
    """SIGSTOP freezes the daemon (as CPU starvation or a VM pause would) while probes wait for their
    first token: those TTFTs come out late by the stall, and each such row names the stall in
    ``loop_lag_s`` instead of leaving it to be read as the provider's slowness."""
    port = free_port()
    db = tmp_path / "mw.db"
    targets = {f"f{i}": "fixed-ttft" for i in range(4)}
    cfg = write_config(tmp_path / "c.yaml", sim_url, targets, interval="300ms",
                       listen=f"127.0.0.1:{port}", db=db)
    with running_daemon(cfg, port) as (proc, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_total") >= 8, 15)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.6)
        proc.send_signal(signal.SIGCONT)
        before = metric(http_get(url + "/metrics"), "modelwatch_probes_total")
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total") >= before + 8 and t, 15)
        assert metric(text, "modelwatch_probes_lagged_total") >= 1
    stored = rows(db)
    # Every row but those of probes that finished in the stop grace, after the lag watch stopped.
    assert sum(r["loop_lag_s"] is None for r in stored) <= len(targets)
    stored = [r for r in stored if r["loop_lag_s"] is not None]
    late = [r for r in stored if r["ttft_s"] is not None and r["ttft_s"] > 0.3]
    assert late, "the stall delayed some first-token reading"
    for r in late:  # the simulator sent the first token at 250 ms: the rest was our own delay,
        # which a 100 ms timer sees less the part of its period that had passed when the stall began
        assert r["loop_lag_s"] >= r["ttft_s"] - 0.3 - 0.1, (r["ttft_s"], r["loop_lag_s"])
    assert max(r["loop_lag_s"] for r in stored) >= 0.5
    on_time = [r["loop_lag_s"] for r in stored if r["ttft_s"] is not None and r["ttft_s"] < 0.265]
    assert sorted(on_time)[len(on_time) // 2] < 0.05  # an unstalled probe does not claim lag


def test_reload_keeps_unchanged_targets_counters_and_in_flight_probes(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"keep": "healthy", "slow": "slow-ttft"},
                       interval="400ms", timeout="5s", listen=f"127.0.0.1:{port}", db=db)
    with running_daemon(cfg, port) as (proc, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total", target="keep") >= 2 and metric(
            t, "modelwatch_probes_in_flight") >= 1 and t, 15)
        kept = metric(text, "modelwatch_probes_total", target="keep")
        ttft_kept = metric(text, "modelwatch_probe_ttft_seconds_count", target="keep")
        reloaded_at = time.time()
        # "slow" (3 s to its first token) is in flight; the reload adds "new" and keeps the rest.
        write_config(cfg, sim_url, {"keep": "healthy", "slow": "slow-ttft", "new": "healthy"},
                     interval="400ms", timeout="5s", listen=f"127.0.0.1:{port}", db=db)
        status, body = http_post(url + "/-/reload")
        assert status == 200, body
        after = http_get(url + "/metrics")
        assert metric(after, "modelwatch_probes_total", target="keep") >= kept  # not reset to 0
        assert metric(after, "modelwatch_probe_ttft_seconds_count", target="keep") >= ttft_kept
        wait_for(lambda: rows(db, "SELECT * FROM probe_results WHERE target='slow' AND ts < ?",
                              (reloaded_at,)), 10)
        wait_for(lambda: metric(http_get(url + "/metrics"), "modelwatch_probes_total", target="new") >= 1, 10)
        # a bad config by SIGHUP keeps all of it running and says so
        cfg.write_text(cfg.read_text() + "nonsense: true\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(http_get(url + "/metrics"), "modelwatch_config_last_reload_successful") == 0, 10)
        now = metric(http_get(url + "/metrics"), "modelwatch_probes_total", target="new")
        wait_for(lambda: metric(http_get(url + "/metrics"), "modelwatch_probes_total", target="new") > now, 10)
    slow = rows(db, "SELECT * FROM probe_results WHERE target='slow' AND ts < ?", (reloaded_at,))
    assert slow[0]["outcome"] == "ok" and slow[0]["ttft_s"] >= 3.0  # the in-flight probe finished and counted


def test_reload_applies_a_new_concurrency_limit(tmp_path, sim_url):
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = tmp_path / "c.yaml"

    def write(limit: int) -> None:
        targets = "".join(f"  - {{name: t{i}, provider: sim, model: fixed-ttft, probes: [{{kind: rest}}]}}\n"
                          for i in range(4))
        cfg.write_text(
            f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}', enable_reload: true}}\n"
            f"max_concurrent_probes: {limit}\ndefaults: {{interval: 200ms, timeout: 3s}}\nproviders:\n"
            f"  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: sk-t-0000000000}}\n"
            f"targets:\n{targets}")

    write(4)
    with running_daemon(cfg, port) as (_, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_total") >= 8, 15)
        write(1)
        assert http_post(url + "/-/reload")[0] == 200
        reloaded_at = time.time()
        wait_for(lambda: metric(http_get(url + "/metrics"), "modelwatch_probes_total") >= 30, 20)
    stored = rows(db)
    # Probes started a second after the reload (those holding the old limit have long ended).
    later = [(r["ts"], r["ts"] + r["duration_s"] - 0.002) for r in stored if r["ts"] > reloaded_at + 1]
    earlier = [(r["ts"], r["ts"] + r["duration_s"] - 0.002) for r in stored if r["ts"] < reloaded_at]
    assert len(later) >= 5
    assert max_overlap(earlier) > 1  # four targets, ~280 ms each, every 200 ms: they overlapped
    assert max_overlap(later) == 1


def test_a_probe_finishing_in_the_stop_grace_records_no_invented_loop_lag(tmp_path, sim_url):
    """The lag watch stops first on shutdown; the age of its last tick is no lag (issue 17)."""
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", sim_url, {"s": "slow-ttft"}, interval="1h", timeout="5s",
                       listen=f"127.0.0.1:{port}")
    with running_daemon(cfg, port) as (proc, url):
        wait_for(lambda: metric(http_get(url + "/metrics") or "", "modelwatch_probes_in_flight") >= 1, 70)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    got = rows(tmp_path / "modelwatch.db")
    assert [r["outcome"] for r in got] == ["ok"]  # it finished within the grace and was kept
    assert got[0]["loop_lag_s"] is None


def test_a_provider_limit_too_small_for_its_schedule_shows_in_metrics_and_logs_once(tmp_path, sim_url,
                                                                                    promtool):
    """8 probes every 500 ms of ~290 ms each need ~4.6 slots; the provider allows 2: the schedule slips."""
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = write_config(tmp_path / "c.yaml", sim_url, {f"s{i}": "fixed-ttft" for i in range(8)},
                       interval="500ms", listen=f"127.0.0.1:{port}", db=db)
    cfg.write_text(cfg.read_text().replace("api_key: ", "max_concurrent_probes: 2, api_key: "))
    with running_daemon(cfg, port) as (proc, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and metric(
            t, "modelwatch_probes_total") >= 20 and t, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
    started = metric(text, "modelwatch_probe_start_delay_seconds_count", provider="sim")
    assert started >= 20
    late = started - metric(text, "modelwatch_probe_start_delay_seconds_bucket", provider="sim", le="0.1")
    assert late / started > 0.5, text  # most probes started more than 100 ms after their slot ...
    waited = metric(text, "modelwatch_probe_slot_wait_seconds_sum", provider="sim", limit="provider")
    assert waited / started > 0.1  # ... because they queued for the provider's two slots,
    assert metric(text, "modelwatch_probe_slot_wait_seconds_sum", limit="global") < 0.05  # not the global 64
    assert metric(text, "modelwatch_probe_slot_wait_seconds_count", limit="target") == started
    assert metric(text, "modelwatch_provider_max_concurrent_probes", provider="sim") == 2
    assert metric(text, "modelwatch_provider_concurrency_needed", provider="sim") > 3
    assert metric(text, "modelwatch_skipped_runs_total") > 0
    behind = [line for line in err.splitlines() if "cannot carry the schedule" in line]
    assert len(behind) == 1, err  # once per change of state, not once per probe
    assert "level=warning" in behind[0] and "limit=provider provider=sim max_concurrent_probes=2" in behind[0]
    assert "carries the schedule again" not in err and "Traceback" not in err
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    stored = rows(db)
    assert max_overlap([(r["ts"], r["ts"] + r["duration_s"] - 0.002) for r in stored]) == 2


def test_the_kinds_of_one_target_never_overlap_while_targets_run_side_by_side(tmp_path, sim_url):
    """A REST probe (~290 ms) and a models check of the same target every 400 ms, three targets:
    the sim's request log, joined to the rows by request id, shows each target's requests one at a
    time (each sim request lies inside its probe's span) and different targets' at once."""
    port = free_port()
    db = tmp_path / "mw.db"
    cfg = tmp_path / "c.yaml"
    targets = "".join(f"  - {{name: {t}, provider: sim, model: fixed-ttft, probes: [{{kind: rest}}, {{kind: models}}]}}\n"
                      for t in ("a", "b", "c"))
    cfg.write_text(
        f"storage: {{path: {db}}}\nserver: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {interval: 400ms, timeout: 3s}\nproviders:\n"
        f"  sim: {{type: openai, base_url: '{sim_url}/v1', api_key: sk-t-0000000000}}\n"
        f"targets:\n{targets}")
    with running_daemon(cfg, port) as (_, url):
        text = wait_for(lambda: (t := http_get(url + "/metrics")) and all(
            metric(t, "modelwatch_probes_total", target=n, kind=k, outcome="ok") >= 4
            for n in ("a", "b", "c") for k in ("rest", "models")) and t, 20)
    assert metric(text, "modelwatch_probe_slot_wait_seconds_sum", limit="target") > 0  # they met, and waited
    assert_one_at_a_time_per_target(rows(db), sim_log(sim_url))
