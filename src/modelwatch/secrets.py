"""Typed secrets and redaction of secret material from any text.

A :class:`Secret` never prints its value: ``str``, ``repr`` and f-strings give
``<secret>``. Every Secret created in this process is remembered (by value) so
that :func:`redact` can scrub it, and the fragments providers echo back, from
error messages and log lines before they are stored, printed or exported.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from pydantic_core import core_schema

_known: set[str] = set()
_known_lock = threading.Lock()
_MIN_FRAGMENT = 8  # shorter fragments of a key are too likely to match ordinary text

# Shapes that carry a key whatever its value: masked echoes ("sk-abc1****wxyz"),
# bearer/basic credentials, key-like query parameters and well-known key prefixes.
_PATTERNS = [
    re.compile(r"(?i)\b(bearer\s+|basic\s+)[A-Za-z0-9._~+/=\-]{4,}"),
    re.compile(r"(?i)([?&](?:key|api[-_]?key|access_token|token)=)[^&\s\"']+"),
    re.compile(r"[A-Za-z0-9_\-]{0,40}\*{3,}[A-Za-z0-9_\-*]{0,40}"),
    # not \b: a key glued to a word by "_" (``incomplete_sk-...``) must not slip through
    re.compile(r"(?<![A-Za-z0-9])(?:sk|rk|pk|gsk|xai|sess)[-_][A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?<![A-Za-z0-9])AIza[A-Za-z0-9_\-]{10,}"),
    re.compile(r"(?i)(incorrect api key provided:\s*)\S+"),
]
REDACTED = "<redacted>"


class Secret:
    """A secret string (an API key) that never prints its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ValueError("secret is empty")
        self._value = value
        with _known_lock:
            _known.add(value)

    def reveal(self) -> str:
        """Return the secret value: only for building a request header."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<secret>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("secrets cannot be pickled")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: "<secret>"),
        )

    @classmethod
    def _validate(cls, value: Any) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return cls(value)


def _fragments(secret: str) -> list[str]:
    """Prefixes and suffixes of a known key that providers echo (longest first)."""
    n = len(secret)
    if n < _MIN_FRAGMENT * 2:
        return [secret]
    out = [secret]
    for k in range(n - 1, _MIN_FRAGMENT - 1, -1):
        out.append(secret[:k])
        out.append(secret[-k:])
    return out


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """Remove every known secret, its echoed fragments and key-shaped strings from text."""
    if not text:
        return text
    # Shapes first, so a known key's fragment cannot split a key-shaped string in two.
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    with _known_lock:
        secrets = list(_known)
    for value in [*secrets, *extra]:
        if len(value) < 4:
            continue
        if value[:_MIN_FRAGMENT] in text or value[-_MIN_FRAGMENT:] in text:
            for frag in _fragments(value):
                if frag in text:
                    text = text.replace(frag, REDACTED)
    return text


def short_error(text: str, limit: int = 240) -> str:
    """Redact and shorten an error text to one line of at most ``limit`` characters."""
    text = redact(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
