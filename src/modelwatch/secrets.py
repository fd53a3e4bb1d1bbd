"""Typed secrets and redaction of secret material from any text.

A :class:`Secret` never prints its value: ``str``, ``repr`` and f-strings give
``<secret>``. Every Secret created in this process is remembered (by value) so
that :func:`redact` can scrub it, and the fragments providers echo back, from
error messages and log lines before they are stored, printed or exported.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from pydantic_core import core_schema

_known: set[str] = set()
_known_lock = threading.Lock()
_index: KeyIndex | None = None  # of _known, rebuilt when a new secret is created
_MIN_FRAGMENT = 8  # shorter fragments of a key are too likely to match ordinary text
_MIN_TAIL = 3  # a masked echo shows the last 4 (OpenAI); after a mask even 3 are evidence
_MIN_HEAD = 4

# Shapes that carry a key whatever its value: bearer/basic credentials, key-like query
# parameters and well-known key prefixes. Masked echoes are handled by _MASKED below.
# ek_: OpenAI's ephemeral client secrets, which a WebRTC probe mints for every call.
_KEY_PREFIX = r"(?:(?:sk|rk|pk|gsk|xai|sess|ek)[-_]|AIza)"
_PATTERNS = [
    re.compile(r"(?i)\b(bearer\s+|basic\s+)[A-Za-z0-9._~+/=\-]{4,}"),
    re.compile(r"(?i)([?&](?:key|api[-_]?key|access_token|token)=)[^&\s\"']+"),
    # not \b: a key glued to a word by "_" (``incomplete_sk-...``) must not slip through
    re.compile(r"(?<![A-Za-z0-9])(?:sk|rk|pk|gsk|xai|sess|ek)[-_][A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?<![A-Za-z0-9])AIza[A-Za-z0-9_\-]{10,}"),
    re.compile(r"(?i)(incorrect api key provided:\s*)\S+"),
]
# A masked echo: the key's first characters, a mask of "*", "." or "…", its last few
# ("sk-abc1****wxyz", "sk-proj-...QZXW", "sk-pr…QZXW"). Head and tail are whole words
# (the lookbehind), so the match is linear and "abc...xyz" is judged as one token.
_MASKED = re.compile(r"(?<![A-Za-z0-9_\-])(?P<head>[A-Za-z0-9_\-]{0,64})"
                     r"(?P<mask>[*.…]{2,}|…)(?P<tail>[A-Za-z0-9_\-]{0,64})")
_HEAD_IS_KEY = re.compile(r"(?:^|[^A-Za-z0-9])" + _KEY_PREFIX)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
REDACTED = "<redacted>"
_NOT_IN_KEY = re.compile(r"[\x00-\x20\x7f-\x9f]")


class Secret:
    """A secret string (an API key) that never prints its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ValueError("secret is empty")
        if _NOT_IN_KEY.search(value):
            # A CR/LF would split the request header it goes into; no provider's key has spaces.
            raise ValueError("must be one line without spaces or control characters")
        self._value = value
        register_secret(value)

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


def register_secret(value: str) -> None:
    """Redact ``value`` (and its echoed fragments) from every text from now on."""
    global _index
    value = value.strip()
    if not value:
        return
    with _known_lock:
        if value not in _known:
            _known.add(value)
            _index = None


def _lower(text: str) -> str:
    """ASCII lower case: unlike ``str.lower`` it keeps every index where it was."""
    return text.translate(_ASCII_LOWER)


class KeyIndex:
    """Known keys, lower-cased, ready for lookups: whole, and as 8-character windows."""

    __slots__ = ("keys", "windows", "short")

    def __init__(self, values: Iterable[str]) -> None:
        self.keys = [_lower(v) for v in values if len(v) >= 4]
        # A long key's every window: any 8+ piece of it (prefix, suffix, middle) then
        # shows as a run of windows, found in one pass over the text whatever the key count.
        self.windows = {k[i:i + _MIN_FRAGMENT] for k in self.keys if len(k) >= 2 * _MIN_FRAGMENT
                        for i in range(len(k) - _MIN_FRAGMENT + 1)}
        self.short = [k for k in self.keys if len(k) < 2 * _MIN_FRAGMENT]  # only whole

    def spans(self, lowered: str) -> list[tuple[int, int]]:
        """Where in ``lowered`` (lower-cased text) pieces of the keys appear."""
        size, windows = _MIN_FRAGMENT, self.windows
        spans = [(i, i + size) for i in range(len(lowered) - size + 1) if lowered[i:i + size] in windows] \
            if windows else []
        for key in self.short:
            at = lowered.find(key)
            while at != -1:
                spans.append((at, at + len(key)))
                at = lowered.find(key, at + 1)
        return spans


def _key_index(extra: tuple[str, ...]) -> KeyIndex:
    global _index
    with _known_lock:
        if _index is None:
            _index = KeyIndex(_known)
        index = _index
    return KeyIndex([*_known, *extra]) if extra else index


def _masked_echo(match: re.Match, keys: list[str]) -> str:
    """REDACTED for a masked token that is a key's echo, else the token unchanged."""
    if not match.group("head") and match.string.endswith(REDACTED, 0, match.start()):
        return ""  # the head was a key shape already cut out ("sk-ant-api03-…AbCd")
    return REDACTED if _is_masked_key(match, keys) else match.group(0)


def _is_masked_key(match: re.Match, keys: list[str]) -> bool:
    """Whether a masked token is a key's echo: a star mask, a key prefix, or a known key's ends."""
    head, mask, tail = match.group("head"), match.group("mask"), match.group("tail")
    if mask.count("*") >= 3 or _HEAD_IS_KEY.search(head):
        return True
    head, tail = _lower(head), _lower(tail)
    return any((len(tail) >= _MIN_TAIL and key.endswith(tail))
               or (len(head) >= _MIN_HEAD and key.startswith(head)) for key in keys)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace each run of overlapping ``spans`` in ``text`` with one REDACTED."""
    out, pos = [], 0
    for start, end in sorted(spans):
        if start > pos or not out:
            out.append(text[pos:start])
            out.append(REDACTED)
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """Remove every known secret, its echoed fragments and key-shaped strings from text.

    ``extra`` are more secret values to treat as known ones.
    """
    if not text:
        return text
    index = _key_index(extra)
    # Shapes first, so a known key's fragment cannot split a key-shaped string in two.
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    if "**" in text or ".." in text or "…" in text:
        text = _MASKED.sub(lambda m: _masked_echo(m, index.keys), text)
    spans = index.spans(_lower(text))
    return _cut(text, spans) if spans else text


def short_error(text: str, limit: int = 240) -> str:
    """Redact and shorten an error text to one line of at most ``limit`` characters."""
    # Cut (with a margin) before redacting, so a huge error body costs no more than a short one:
    # a key cut at the margin leaves at most a piece that the final cut drops.
    text = redact(" ".join(str(text)[:4 * limit].split())[:limit + 64])
    return text if len(text) <= limit else text[: limit - 1] + "…"
