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
