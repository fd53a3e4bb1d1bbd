"""Problems with a file, all reported at once as ``file: key.path: reason``.

Config (``config.py``) and simulator scenarios (``sim/scenario.py``) are both
YAML validated by strict pydantic models. They collect every problem in a
:class:`Problems`, turn pydantic's errors into short reasons without its URLs
or the offending input (a value may be a secret), and raise them together.
``parse_listen`` is the one ``HOST:PORT`` rule of the daemon and the simulator.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = ["Problems", "key_path", "parse_listen", "reason"]

# pydantic's location part for "the key itself is invalid" in a dict (not its value).
KEY_MARKER = "[key]"


class Problems:
    """Collects ``file: path: reason`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.unset: set[tuple[Path, str]] = set()  # values left empty by a missing variable

    def add(self, file: Path | str, path: str, reason: str) -> None:
        """Record one problem; an empty ``path`` is about the file as a whole."""
        self.lines.append(f"{file}: {path}: {reason}" if path else f"{file}: {reason}")

    def from_validation(self, file: Path | str, prefix: str, exc: ValidationError, *,
                        known_keys: Collection[str] = (), key_marker: bool = True) -> None:
        """Record every error of ``exc``, its location appended to ``prefix``.

        ``known_keys`` adds a "did you mean" to an unknown key close to one of
        them; ``key_marker=False`` names an invalid dict key by its path alone
        (``errors.meltdown``, not ``errors.meltdown.[key]``).
        """
        for err in exc.errors(include_url=False, include_input=False):
            loc = err["loc"] if key_marker else tuple(p for p in err["loc"] if p != KEY_MARKER)
            path = key_path(prefix, loc)
            if (file, path) not in self.unset:  # already reported as a missing variable
                self.add(file, path, reason(err, loc, known_keys))


def key_path(prefix: str, loc: tuple) -> str:
    """A pydantic location as ``providers.openai.headers`` or ``targets[0].probes[1].kind``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "constrained-")):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def reason(err: dict, loc: tuple = (), known_keys: Collection[str] = ()) -> str:
    """A short reason for one pydantic error, in modelwatch's words."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), known_keys, n=1) if loc and known_keys else []
        return "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return "must be one of " + expected.replace("'", "")
    if kind == "string_pattern_mismatch":
        return "must be letters, digits and . _ : / - (at most 128, starting with a letter or digit)"
    if kind in ("too_short",) and "list" in msg.lower():
        return "must not be empty"
    return msg.removeprefix("Value error, ").rstrip(".").replace("Input should", "must")


def parse_listen(value: Any, default_host: str | None = None) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:9477``) into a (host, port) pair.

    An empty host (``:9477``) is refused unless the caller names the host it
    means by ``default_host``: to a server that binds it, an empty host would
    mean every interface.
    """
    text = str(value).strip()
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})$", text)
    if not match or int(match.group(3)) > 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9477 or [::1]:9477")
    host = match.group(1) or match.group(2) or default_host
    if not host:
        # ":9477" would silently listen on every interface: say which one is meant.
        raise ValueError("must name the host: 127.0.0.1:9477 for this machine only, "
                         "0.0.0.0:9477 or [::]:9477 for every interface")
    return host, int(match.group(3))
