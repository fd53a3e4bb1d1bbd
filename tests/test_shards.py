"""Shards (``shard: i/N``): rendezvous hashing of ``target/kind``, the plan, the config and the metric."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from modelwatch.config import ConfigError, load_config
from modelwatch.metrics import ProbeMetrics
from modelwatch.shards import parse_shard, plan, shard_of

KEYS = [(f"provider/model-{i:05d}", kind) for i in range(5000) for kind in ("rest", "realtime")]


@pytest.mark.parametrize("text, parsed", [("0/1", (0, 1)), ("2/3", (2, 3)), (" 9 / 10 ", (9, 10))])
def test_shard_parses(text, parsed):
    assert parse_shard(text) == parsed


@pytest.mark.parametrize("value, problem", [
    ("3/3", "shard 3 does not exist in 3 shards: they are 0 to 2"),
    ("1/0", "must have from 1 to 1000 shards"),
    ("0/1001", "must have from 1 to 1000 shards"),
    ("a/b", "must be i/N"), ("1", "must be i/N"), (2, "must be i/N"), ("-1/3", "must be i/N"),
])
def test_a_bad_shard_is_refused_with_its_reason(value, problem):
    with pytest.raises(ValueError, match=problem.replace("/", "/")):
        parse_shard(value)


def test_every_probe_has_exactly_one_shard_and_the_shares_are_even():
    shares = plan(KEYS, 4)
    assert sorted(k for share in shares for k in share) == sorted(KEYS)  # each once, none lost
    for share in shares:
        assert abs(len(share) - len(KEYS) / 4) < 0.06 * len(KEYS) / 4, [len(s) for s in shares]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_one_more_shard_moves_about_its_share_and_only_to_it(n):
    moved = [(k, shard_of(*k, n + 1)) for k in KEYS if shard_of(*k, n) != shard_of(*k, n + 1)]
    assert abs(len(moved) / len(KEYS) - 1 / (n + 1)) < 0.02, (n, len(moved))
    assert {to for _, to in moved} == {n}  # every probe that moves goes to the new shard


def test_every_host_computes_the_same_plan():
    # sha256, not Python's salted hash(): another process (another hash seed) agrees
    src = str(Path(__file__).parent.parent / "src")
    code = (f"import sys; sys.path.insert(0, {src!r}); from modelwatch.shards import shard_of; "
            "print(','.join(str(shard_of(f'provider/model-{i:05d}', 'rest', 7)) for i in range(200)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert other == ",".join(str(shard_of(f"provider/model-{i:05d}", "rest", 7)) for i in range(200))


def write(tmp_path, shard: str | None):
    cfg = tmp_path / "c.yaml"
    targets = "\n".join(f"  - {{name: t{i}, provider: p, model: m, probes: [{{kind: rest}}, {{kind: models}}]}}"
                        for i in range(30))
    cfg.write_text(("" if shard is None else f"shard: '{shard}'\n")
                   + "providers: {p: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}}\n"
                   + f"targets:\n{targets}\n")
    return cfg


def test_shards_split_the_config_between_them(tmp_path):
    whole = {(j.target, j.probe.kind) for j in load_config(write(tmp_path, None)).jobs}
    shares = [{(j.target, j.probe.kind) for j in load_config(write(tmp_path, f"{i}/3")).jobs} for i in range(3)]
    assert set().union(*shares) == whole and sum(len(s) for s in shares) == len(whole) == 60
    assert all(shares)
    config = load_config(write(tmp_path, "1/3"), whole=True)
    assert len(config.jobs) == 60 and config.shard == (1, 3)


def test_a_bad_shard_in_the_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "5/3"))
    assert info.value.problems == [f"{tmp_path / 'c.yaml'}: shard: shard 5 does not exist in 3 shards: they are 0 to 2"]


def test_check_config_prints_the_plan(tmp_path):
    cfg = write(tmp_path, "0/2")
    done = subprocess.run([sys.executable, "-m", "modelwatch", "check-config", "-c", str(cfg), "--shards", "3"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "probes (shard 0/2)" in lines[0]
    heads = [line for line in lines if line.startswith("shard ")]
    assert [h.split(":")[0] for h in heads] == ["shard 0/3", "shard 1/3", "shard 2/3"]
    counts = [int(h.split(": ")[1].split()[0]) for h in heads]
    listed = [line.strip() for line in lines if line.startswith("  ")]
    assert sum(counts) == 60 == len(listed) == len(set(listed))
    for head, (share) in zip(heads, plan([tuple(x.split("/")) for x in listed], 3), strict=True):
        assert f": {len(share)} probes" in head


def test_the_shard_is_a_metric_that_follows_reloads():
    m = ProbeMetrics(CollectorRegistry())
    m.set_shard((1, 3))
    assert m.registry.get_sample_value("modelwatch_shard_info", {"shard": "1", "shards": "3"}) == 1
    m.set_shard(None)
    assert m.registry.get_sample_value("modelwatch_shard_info", {"shard": "1", "shards": "3"}) is None
    assert m.registry.get_sample_value("modelwatch_shard_info", {"shard": "0", "shards": "1"}) == 1
