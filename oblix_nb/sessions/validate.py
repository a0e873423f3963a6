"""Input checks shared by every session-store engine: they run before any SQL, so bad input never reaches a
database and a refused call changes nothing.

What is refused, and with which exception (the store's methods document the same):

- text (titles, message content and ids, model ids, request ids, search queries, metadata keys and string
  values): a lone UTF-16 surrogate (``"\\ud800"``, which has no UTF-8 form) -> ``ValueError`` naming the field
  and the index. NUL and every other character are ordinary text.
- JSON values (context, metadata, message metrics and routing, metadata filters): nested deeper than
  :data:`MAX_JSON_DEPTH` levels, or circular -> ``ValueError`` (never ``RecursionError``); NaN or infinity, a
  non-string key at any level, or a value that is not JSON (a set, an object) -> ``TypeError``. Integers of
  any size are kept exactly (JSON text), except ones beyond Python's 4,300-digit conversion limit
  (``ValueError``).
- limits and offsets: not an integer -> ``TypeError``; negative or beyond SQL's signed 64-bit range
  (``2**63 - 1``) -> ``ValueError`` (never ``OverflowError``).
"""
from __future__ import annotations

import json
import math
import operator
from typing import Any

MAX_JSON_DEPTH = 100      # containers inside containers, counting the outermost as 1
SQL_INT_MAX = 2 ** 63 - 1  # SQLite INTEGER / PostgreSQL BIGINT

_EXIT = object()  # marks the end of a container in check_json's walk
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # built once: json.dumps(**kw) rebuilds it


def check_text(value: str, field: str) -> str:
    """``value`` (a str) if it has a UTF-8 form, else ValueError naming ``field`` and the lone surrogate."""
    if value.isascii():  # O(1) in CPython
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field} contains a lone surrogate {value[exc.start]!r} at index {exc.start}: "
                         f"text must be valid Unicode") from None
    return value


def check_str(value: Any, field: str) -> str:
    """A str field: TypeError for another type, ValueError as check_text."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string, not {type(value).__name__}")
    return check_text(value, field)


def _where(path: tuple) -> str:
    """A readable location for an error: ``metadata['a'][0]`` (long paths are shortened)."""
    parts: list[str] = []
    while path:
        path, key = path
        parts.append(key)
    parts.reverse()
    text = parts[0] + "".join(f"[{p!r}]" for p in parts[1:])
    return text if len(text) <= 200 else text[:120] + " ... " + text[-60:]


def _plain_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _plain(items, depth: int) -> bool:
    """Fast path of check_json: True if every value is of an exact JSON type (str with a UTF-8 form, int,
    bool, None, finite float, dict with str keys, list, tuple) within the depth limit. False means "look
    closer" (the slow walk then accepts or reports precisely); a cycle ends here at the depth limit."""
    if depth > MAX_JSON_DEPTH:
        return False
    for v in items:
        t = type(v)
        if t is str:
            if not (v.isascii() or _plain_text(v)):
                return False
        elif t is dict:
            try:
                ascii_keys = all(map(str.isascii, v))  # TypeError for a key that is not a str
            except TypeError:
                return False
            if not (ascii_keys or all(map(_plain_text, v))) or not _plain(v.values(), depth + 1):
                return False
        elif t is list or t is tuple:
            if not _plain(v, depth + 1):
                return False
        elif t is float:
            if v - v != 0:  # NaN or infinity
                return False
        elif not (v is None or t is int or t is bool):
            return False
    return True


def check_json(value: Any, what: str) -> None:
    """Check that ``value`` is JSON that can be stored and read back exactly (see the module docstring).

    A fast recursive pass (bounded by the depth limit) accepts ordinary values; anything else gets an
    iterative walk, so any depth or a cycle is reported instead of exhausting the stack.
    """
    if _plain((value,), 0):
        return
    on_path: set[int] = set()
    todo: list = [(value, (None, what), 1)]
    while todo:
        item, path, depth = todo.pop()
        if item is _EXIT:
            on_path.discard(path)
            continue
        if isinstance(item, str):
            if not item.isascii():
                check_text(item, _where(path))
        elif item is None or isinstance(item, (bool, int)):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise TypeError(f"{_where(path)} is {item}: NaN and infinity are not JSON values "
                                f"({what} is not JSON-serialisable)")
        elif isinstance(item, (dict, list, tuple)):
            key = id(item)
            if key in on_path:
                raise ValueError(f"{what} is circular: {_where(path)} contains itself")
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
            on_path.add(key)
            todo.append((_EXIT, key, 0))
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str):
                        raise TypeError(f"{what} keys must be strings, not {type(k).__name__} ({k!r} in "
                                        f"{_where(path)})")
                    if not k.isascii():
                        check_text(k, f"{_where(path)} key")
                    todo.append((v, (path, k), depth + 1))
            else:
                for i, v in enumerate(item):
                    todo.append((v, (path, i), depth + 1))
        else:
            raise TypeError(f"{what} is not JSON-serialisable: {_where(path)} is a {type(item).__name__}")


def check_setting_key(key: Any) -> None:
    """A settings key (``SessionStore.set_setting``): a non-empty string of at most 200 characters."""
    if not isinstance(key, str) or not key or len(key) > 200:
        raise TypeError(f"a setting key must be a non-empty string of at most 200 characters, not {key!r}")
    check_text(key, "setting key")


def dumps(value: Any, what: str, checked: bool = False) -> str:
    """``value`` as JSON text (UTF-8, not ASCII-escaped), after :func:`check_json` unless already ``checked``."""
    if not checked:
        check_json(value, what)
    try:
        return _ENCODE(value)
    except ValueError as exc:  # an int beyond Python's digit limit
        raise ValueError(f"{what} cannot be written as JSON: {exc}") from None


def json_object(value: Any, what: str) -> tuple[dict, str]:
    """``(value, its JSON text)`` for a dict of JSON values (None means {}). TypeError for anything else."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    return value, dumps(value, what)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def canonical_json(value: Any, what: str = "metadata value") -> str:
    """The JSON text metadata values are compared by: keys sorted, ``1.0`` written as ``1``.

    So ``1 == 1.0`` match, while ``1``, ``"1"`` and ``true`` stay distinct.
    """
    check_json(value, what)  # bounds the recursion below
    try:
        return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{what} cannot be written as JSON: {exc}") from None


def check_limit(limit: Any, name: str = "limit") -> int:
    """SQL LIMIT/OFFSET for a user value: None means no limit (-1). Accepts any integer type (``__index__``,
    e.g. numpy ints) but not bool; TypeError otherwise; ValueError if negative or above ``2**63 - 1``."""
    if limit is None:
        return -1
    if isinstance(limit, bool):
        raise TypeError(f"{name} must be an int or None, not bool")
    try:
        value = operator.index(limit)
    except TypeError:
        raise TypeError(f"{name} must be an int or None, not {type(limit).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    if value > SQL_INT_MAX:
        raise ValueError(f"{name} must be at most 2**63 - 1 ({SQL_INT_MAX}), not {value}")
    return value


def check_title(title: Any) -> None:
    if title is not None:
        check_str(title, "title")


def check_query(query: Any) -> str:
    """A search query: a non-blank str without lone surrogates (every other character is literal text)."""
    check_str(query, "search query")
    if not query.strip():
        raise ValueError("search query must not be empty")
    return query
