"""Reading a YAML file that anyone may have written, safely and with bounds.

Config files and simulator scenarios are read the same way: a regular file of
bounded size, UTF-8, PyYAML's safe loader refusing duplicate keys, a mapping at
the top, and a bound on the values its aliases expand to. Each failure is one
problem for the whole file (see ``validation.Problems``); no message quotes
the file's lines, since the path may name any file at all.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from modelwatch.validation import Problems

__all__ = ["MAX_YAML_DEPTH", "MAX_YAML_FILE_BYTES", "MAX_YAML_VALUES", "parse_yaml", "read_small_file",
           "read_yaml"]

MAX_YAML_FILE_BYTES = 1_048_576
MAX_YAML_VALUES = 100_000  # values after alias expansion: bounds a "billion laughs" file
MAX_YAML_DEPTH = 64


def read_small_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refusing anything else (a FIFO, /dev/zero) and anything over ``limit``.

    Raises OSError, or ValueError with a reason that names no content.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("is not a regular file")
    if st.st_size > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB")
    with open(path, "rb") as f:  # the size may change between stat and read: read one past
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB")
    return data


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys instead of keeping the last."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:  # the keys written here: "<<" merges may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {str(key)[:64]!r} (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _too_big(value: Any) -> str | None:
    """Why a parsed tree is too large once its aliases are expanded, or None.

    YAML aliases share one object, so a few lines can stand for billions of values
    (a "billion laughs") or for a value containing itself; walking them, as every
    later step does, would never end. The walk stops at the first limit reached.
    """
    budget = MAX_YAML_VALUES
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return f"too many values once its aliases are expanded (at most {MAX_YAML_VALUES})"
        if depth > MAX_YAML_DEPTH:
            return f"nested too deeply (at most {MAX_YAML_DEPTH} levels)"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def read_yaml(file: Path, problems: Problems, limit: int = MAX_YAML_FILE_BYTES) -> dict | None:
    """The top-level mapping of a YAML file (empty file: ``{}``), or None with the problem recorded."""
    try:
        text = read_small_file(file, limit).decode("utf-8")
    except OSError as exc:
        problems.add(file, "", f"cannot read file: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.add(file, "", f"is not UTF-8 text (byte {exc.start})")
        return None
    except ValueError as exc:
        problems.add(file, "", str(exc))
        return None
    return parse_yaml(text, file, problems)


def parse_yaml(text: str, file: Path | str, problems: Problems) -> dict | None:
    """The top-level mapping of YAML ``text`` read from ``file``, or None with the problem recorded."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        # Never str(exc): PyYAML quotes the file's lines, and the file may be any file at all.
        problems.add(file, "", f"invalid YAML: {where}{getattr(exc, 'problem', None) or 'cannot parse'}")
        return None
    except RecursionError:
        problems.add(file, "", f"invalid YAML: nested too deeply (at most {MAX_YAML_DEPTH} levels)")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.add(file, "", "must be a YAML mapping at the top level")
        return None
    reason = _too_big(data)
    if reason:
        problems.add(file, "", reason)
        return None
    return data
