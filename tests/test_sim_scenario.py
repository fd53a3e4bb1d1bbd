"""Scenario files: every invalid file in tests/data/scenario/ gives exactly its expected problems.

Scenarios are read and reported like config files (``yamlfile``, ``validation``):
every problem at once, one ``file: key.path: reason`` a line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelwatch.sim import ScenarioError, default_scenario, load_scenario, parse_scenario

DATA = Path(__file__).parent / "data" / "scenario"
INVALID = sorted(DATA.glob("*.yaml"))


def expected_problems(path: Path) -> list[str]:
    """The ``# error:`` header lines of a test file, each prefixed with the file's path."""
    return [f"{path}: " + line.split("# error: ", 1)[1]
            for line in path.read_text().splitlines() if line.startswith("# error: ")]


def test_every_invalid_file_declares_its_errors():
    assert len(INVALID) >= 8
    for path in INVALID:
        assert expected_problems(path), f"{path.name} has no '# error:' line"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_scenario_gives_exact_problems(path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.problems == expected_problems(path)
    assert str(info.value) == "\n".join(expected_problems(path))
    assert isinstance(info.value, ValueError)
    assert "pydantic" not in str(info.value) and "Input should" not in str(info.value)


def test_text_scenarios_are_named_by_their_source():
    with pytest.raises(ScenarioError) as info:
        parse_scenario("models:\n  m: {tokenz: 3, close_code: 1006}\n", source="s.yaml")
    assert info.value.problems == ["s.yaml: models.m.tokenz: unknown key (did you mean 'tokens'?)"]


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.yaml")
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read file: No such file or directory"]


@pytest.mark.parametrize(("content", "problem"), [
    (b"\xff\xfe models: {}\n", "is not UTF-8 text (byte 0)"),
    (b"models: {}\n" + b"#" * 1_048_576, "is larger than 1024 KiB"),
    (b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
     "too many values once its aliases are expanded (at most 100000)"),
])
def test_hostile_scenario_files_are_bounded_like_config_files(tmp_path, content, problem):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.problems == [f"{path}: {problem}"]


def test_a_directory_is_not_a_scenario(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)
    assert info.value.problems == [f"{tmp_path}: is not a regular file"]


def test_an_empty_scenario_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    scenario = load_scenario(path)
    assert scenario.models == {} and scenario.default is None and scenario.seed == 1


@pytest.mark.slow
def test_sim_command_prints_every_problem_and_exits_2():
    path = DATA / "bad_values.yaml"
    proc = subprocess.run([sys.executable, "-m", "modelwatch", "sim", "--scenario", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "modelwatch: " + "\n".join(expected_problems(path)) + "\n"


def test_bundled_demo_scenario_loads():
    assert "gpt-4o-mini" in default_scenario().models


# ---------------------------------------------------------------- error_draws


def test_spread_error_draws_fail_the_same_requests_whatever_the_seeded_roll():
    block = parse_scenario("models: {m: {errors: {rate_limited: 0.10, server_error: 0.05, overloaded: 0.03},"
                           " error_draws: spread}}").models["m"]
    for roll in (0.0, 0.5, 0.999):  # the seeded draw is ignored: only the model's count matters
        kinds = [block.injected_error(0.0, roll, nth) for nth in range(1, 41)]
        failed = [n for n, kind in enumerate(kinds, 1) if kind]
        assert failed == [5, 13, 18, 26, 31, 34, 39]
        assert kinds[4] == kinds[12] == "rate_limited" and kinds[17] == "server_error" and kinds[30] == "overloaded"
    seeded = parse_scenario("models: {m: {errors: {rate_limited: 0.5}}}").models["m"]
    assert seeded.error_draws == "seeded"
    assert seeded.injected_error(0.0, 0.2, 5) == "rate_limited" and seeded.injected_error(0.0, 0.7, 5) is None


def test_spread_error_draws_keep_each_share_over_any_stretch():
    from modelwatch.sim.scenario import spread_roll

    hits = [n for n in range(1, 10_001) if spread_roll(n) < 0.18]
    assert abs(len(hits) / 10_000 - 0.18) < 0.001
    assert max(b - a for a, b in zip(hits, hits[1:])) <= 8  # never a long run of successes


def test_error_draws_must_be_seeded_or_spread():
    with pytest.raises(ScenarioError) as info:
        parse_scenario("models: {m: {error_draws: shuffled}}", "s.yaml")
    assert info.value.problems[0].startswith("s.yaml: models.m.error_draws:")


@pytest.mark.slow
def test_demo_flaky_model_fails_and_answers_within_its_first_15_requests_over_http():
    """15 requests: what the demo's flaky target (every 2 s) sends in its first 30 s.

    Other models' requests are interleaved, as in the demo: they must not move the flaky model's failures.
    """
    import asyncio

    import aiohttp

    from modelwatch.sim import start_sim

    async def ask(session, url, model):
        async with session.post(f"{url}/v1/chat/completions",
                                headers={"Authorization": "Bearer sk-test"},
                                json={"model": model, "stream": True, "max_tokens": 8,
                                      "messages": [{"role": "user", "content": "hi"}]}) as response:
            await response.read()
            return response.status

    async def run(interleave: int) -> list[int]:
        server = await start_sim(default_scenario(), port=0)
        try:
            async with aiohttp.ClientSession() as session:
                statuses = []
                for n in range(15):
                    others = [ask(session, server.url, "gpt-4o-mini") for _ in range(interleave * (n % 3))]
                    *_, status = await asyncio.gather(*others, ask(session, server.url, "flaky-model"))
                    statuses.append(status)
                return statuses
        finally:
            await server.close()

    quiet, busy = asyncio.run(run(0)), asyncio.run(run(2))
    assert quiet == busy
    assert 200 in quiet and any(status >= 400 for status in quiet), quiet
    assert quiet[4] == quiet[12] == 500  # the 5th request: about 10 s into the demo
