"""The simulator stands apart from the probes it tests: it imports nothing from ``modelwatch.probes``.

A simulator that shared the probes' parsing or classification would agree with
them by construction and could not catch their mistakes. Checked on the source
with ``ast``, following every import inside the ``modelwatch`` package, at any
depth of a module (a function-level import counts too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "modelwatch"
SIM_MODULES = sorted(f"modelwatch.sim.{p.stem}" if p.stem != "__init__" else "modelwatch.sim"
                     for p in (PACKAGE / "sim").glob("*.py"))


def source_of(module: str) -> Path | None:
    """The file of a ``modelwatch`` module, or None for anything outside the package."""
    parts = module.split(".")
    if parts[0] != "modelwatch":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, including ``from X import name`` as X.name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def reachable(start: str) -> dict[str, str]:
    """Every ``modelwatch`` module ``start`` imports, directly or not, each with the module that imports it."""
    seen = {start: ""}
    todo = [start]
    while todo:
        module = todo.pop()
        path = source_of(module)
        if path is None:
            continue
        for name in imports_of(module, path):
            if name.startswith("modelwatch") and name not in seen and source_of(name) is not None:
                seen[name] = module
                todo.append(name)
    return seen


def test_the_layout_check_finds_the_simulator_and_the_probes():
    assert "modelwatch.sim.openai_realtime_session" in SIM_MODULES and len(SIM_MODULES) >= 15
    # The check itself sees imports: the daemon does reach the probes.
    assert any(name.startswith("modelwatch.probes") for name in reachable("modelwatch.daemon"))


@pytest.mark.parametrize("module", SIM_MODULES)
def test_simulator_imports_nothing_from_the_probes(module):
    chains = {}
    for name, importer in reachable(module).items():
        if name == "modelwatch.probes" or name.startswith("modelwatch.probes."):
            chains[name] = importer
    assert chains == {}, f"{module} reaches the probes: {chains}"
