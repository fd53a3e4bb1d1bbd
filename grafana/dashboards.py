"""Generate modelwatch's Grafana dashboards from code: grafana/dashboards/*.json.

    .venv/bin/python grafana/dashboards.py

rewrites the JSON files from the builders in overview_dashboard.py and target_dashboard.py,
which use Grafana's own grafana-foundation-sdk (a `test` extra: only this generator and the
tests need it, never the daemon). tests/test_dashboards.py fails while the committed JSON
differs from what this generates, so edit the Python, run this, commit both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The sibling modules import each other by name; this makes that work also when a test
# imports this file by path rather than running it.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402

import overview_dashboard  # noqa: E402
import target_dashboard  # noqa: E402
from dashboard_parts import number_panels  # noqa: E402
# Re-exported so that tests can take the query helpers from the generator module too.
from dashboard_queries import EXAMPLE_VALUES, panel_queries, substitute  # noqa: E402,F401

OUTPUT_DIR = HERE / "dashboards"
BUILDERS: dict[str, Callable] = {
    "modelwatch-overview.json": overview_dashboard.build,
    "modelwatch-target.json": target_dashboard.build,
}


def build(filename: str) -> dict:
    """The dashboard written to ``filename``, as plain JSON data."""
    board = number_panels(BUILDERS[filename]().build())
    return json.loads(json.dumps(board, cls=JSONEncoder))


def build_all() -> dict[str, dict]:
    """Every dashboard, by file name under grafana/dashboards/."""
    return {name: build(name) for name in BUILDERS}


def render(dashboard: dict) -> str:
    """The file text of a dashboard: stable, diff-friendly JSON."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write every dashboard; say which files changed."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    for name, dashboard in build_all().items():
        path = OUTPUT_DIR / name
        text = render(dashboard)
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        print(f"{'wrote' if changed else 'unchanged'} {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
