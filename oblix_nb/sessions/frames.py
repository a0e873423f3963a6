"""Sessions and messages as pandas DataFrames, read straight from the store (pandas imported on call).

``messages_df`` has the engine do the per-message JSON work (SQLite's ``json_extract``, PostgreSQL's ``->>``
on the metrics/routing columns: see each store's ``message_rows``) and builds each column once with its final dtype, so 100,000 messages take a fraction of a second
(see ``bench/frames.py``); nothing is materialised as per-message dicts.

Dtypes: timestamps are UTC datetimes; ``role``, ``model_id``, ``route_target``, ``session_id`` and
``session_title`` are categoricals; token counts are nullable ``Int64``; timings are ``float64`` (NaN when
unknown); ``cost_usd`` is nullable ``Float64`` (NA when the cost is unknown, 0 for local models); ``partial``
is ``bool``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .base import SessionStoreBase as SessionStore

SESSION_COLUMNS = ["session_id", "title", "created_at", "updated_at", "message_count", "author", "cost_usd"]

# messages_df's columns; each engine's ``message_rows`` returns rows in this order.
MESSAGE_COLUMNS = ["session_id", "session_title", "message_id", "role", "content", "timestamp", "model_id",
                   "route_target", "time_to_first_token", "tokens_per_second", "total_latency", "input_tokens",
                   "output_tokens", "cost_usd", "partial", "request_id", "author"]
_CATEGORICAL = ("session_id", "session_title", "role", "model_id", "route_target", "author")
_FLOATS = ("time_to_first_token", "tokens_per_second", "total_latency")
_INTS = ("input_tokens", "output_tokens")
_NULLABLE_FLOATS = ("cost_usd",)  # NA (unknown) stays distinct from 0.0 (free)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _utc(values):
    import pandas as pd

    return pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=True)


def messages_df(store: SessionStore, session_ids: str | Iterable[str] | None = None,
                author: str | None = None) -> pd.DataFrame:
    """One row per message (all sessions, or ``session_ids``; only ``author``'s messages if given), sessions
    in creation order, messages in conversation order. Unknown ids raise SessionNotFoundError.

    Columns: session_id, session_title, message_id, role, content, timestamp, model_id, route_target,
    time_to_first_token, tokens_per_second, total_latency, input_tokens, output_tokens, cost_usd, partial,
    request_id, author.
    """
    import numpy as np
    import pandas as pd

    if isinstance(session_ids, str):
        session_ids = [session_ids]
    rows = store.message_rows(None if session_ids is None else list(session_ids), author=author)
    columns = list(zip(*rows)) if rows else [()] * len(MESSAGE_COLUMNS)
    data = {}
    for name, values in zip(MESSAGE_COLUMNS, columns):
        if name in _CATEGORICAL:
            data[name] = pd.Categorical(values)
        elif name in _FLOATS:
            data[name] = np.array(values, dtype="float64")  # None -> NaN
        elif name in _INTS:
            data[name] = _int64_array(values)
        elif name in _NULLABLE_FLOATS:
            data[name] = pd.array([None if v is None else float(v) for v in values], dtype="Float64")
        elif name == "timestamp":
            data[name] = _utc(values).array
        elif name == "partial":
            data[name] = np.fromiter((v == 1 for v in values), dtype=bool, count=len(values))
        else:
            data[name] = pd.array(values, dtype="str") if values else pd.array([], dtype="str")
    frame = pd.DataFrame(data, columns=MESSAGE_COLUMNS)
    if not rows:
        frame["timestamp"] = pd.Series([], dtype="datetime64[us, UTC]")
    return frame


def _int64(value):
    """A token count as Int64 can hold it, else None (the exact value stays in the message's metrics)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


def _int64_array(values):
    import pandas as pd

    try:
        return pd.array(values, dtype="Int64")
    except (TypeError, ValueError, OverflowError):  # a count beyond 64 bits, or not a number
        return pd.array([_int64(v) for v in values], dtype="Int64")


def sessions_df(store: SessionStore, limit: int | None = None, filter_metadata: dict | None = None,
                offset: int = 0, author: str | None = None) -> pd.DataFrame:
    """One row per session, most recently updated first (as ``list_sessions``), metadata keys expanded to
    columns (named after the key; ``meta_<key>`` if the key clashes with a base column). ``author`` keeps
    the sessions that user created.

    Base columns: session_id, title, created_at, updated_at (UTC datetimes), message_count (Int64), author,
    cost_usd (Float64: the sum of its replies' known ``metrics.cost_usd``; NA when none is known).
    Metadata columns get pandas' nullable dtypes where the values allow (Int64, Float64, boolean, string);
    lists and dicts stay objects.
    """
    import pandas as pd

    summaries = store.summaries(limit=limit, filter_metadata=filter_metadata, offset=offset, author=author,
                                with_author=True)
    data: dict = {
        "session_id": pd.array([s["id"] for s in summaries], dtype="str"),
        "title": pd.array([s["title"] for s in summaries], dtype="str"),
        "created_at": _utc([s["created_at"] for s in summaries]).array,
        "updated_at": _utc([s["updated_at"] for s in summaries]).array,
        "message_count": pd.array([s["message_count"] for s in summaries], dtype="Int64"),
        "author": pd.array([s["author"] for s in summaries], dtype="str"),
    }
    costs = store.session_costs([s["id"] for s in summaries])
    data["cost_usd"] = pd.array([costs.get(s["id"]) for s in summaries], dtype="Float64")
    keys: dict[str, None] = {}
    for s in summaries:
        keys.update(dict.fromkeys(s["metadata"]))
    for key in keys:
        column = key if key not in data else f"meta_{key}"
        values = [s["metadata"].get(key) for s in summaries]
        data[column] = _meta_column(values)
    return pd.DataFrame(data)


def _meta_column(values: list):
    import pandas as pd

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.array(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) and _INT64_MIN <= v <= _INT64_MAX
                       for v in present):
        return pd.array(values, dtype="Int64")
    if present and all(isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool)
                       and abs(v) < 2 ** 53 for v in present):  # floats, or ints a float holds exactly
        return pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    if present and all(isinstance(v, str) for v in present):
        return pd.array(values, dtype="str")
    return pd.array(values, dtype=object)

