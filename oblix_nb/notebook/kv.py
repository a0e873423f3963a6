"""``key=value`` pairs whose values keep their JSON type, shared by the magics and the session browser."""
from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any

_KEY = re.compile(r"^[A-Za-z_][\w.\-]*$")


def _no_constants(name: str):
    raise ValueError(name)


def parse_value(raw: str) -> Any:
    """A ``k=v`` value with its JSON type: ``3`` → 3, ``2.5`` → 2.5, ``true`` → True, ``null`` → None,
    ``"3"`` → "3", ``[1,2]`` → list, ``'{"a": 1}'`` (single quotes are shell quoting) → dict;
    anything else (bare words) → str. ``NaN``/``Infinity`` stay strings: they are not JSON."""
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        inner = raw[1:-1]
        try:
            return json.loads(inner, parse_constant=_no_constants)
        except ValueError:
            return inner
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except ValueError:
        try:
            parts = shlex.split(raw)
        except ValueError:
            return raw
        return " ".join(parts)


def parse_pairs(tokens: Iterable[str]) -> dict:
    """``["n=3", "ok=true"]`` → ``{"n": 3, "ok": True}``. ValueError on a token that is not ``key=value``."""
    out: dict = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not _KEY.match(key):
            raise ValueError(f"expected key=value (a key of letters, digits, '_', '-', '.'), got {token!r}")
        out[key] = parse_value(value)
    return out
