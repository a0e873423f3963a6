"""The usage log: one row per model reply (SQLite migration 5), what budgets and ``client.usage()`` add up.

A row is written for every reply, stored in a session or not, finished or cut short, so spend is counted
even for ``execute()`` calls without a session, and deleting a session does not give its spend back.

Both engines keep it (SQLite migration 5, PostgreSQL migration 3). In a shared PostgreSQL store each row
records its ``author`` and spend is summed per user (one user's calls never use up another's budget).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

from .._util import iso
from .base import SPEND_SQL, USAGE_COLUMNS, USAGE_GROUPS, SessionStoreBase  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_COLUMNS = USAGE_COLUMNS  # old names, kept for importers
GROUPS = dict.fromkeys(USAGE_GROUPS)


def supported(store: object) -> bool:
    """Whether ``store`` keeps a usage log: every :class:`~.base.SessionStoreBase` does (a store of another
    kind may not)."""
    return isinstance(store, SessionStoreBase)


def require(store: object, what: str) -> None:
    if not supported(store):
        raise NotImplementedError(f"{what} needs the usage log, which the SQLite and PostgreSQL session stores keep; "
                                  f"{type(store).__name__} has none")


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record(store: "SessionStoreBase", response: dict, target: Optional[str], partial: bool = False) -> None:
    """Log one reply from execute()'s response dict (its metrics carry tokens and cost). A store without a
    usage log (neither SQLite nor PostgreSQL) logs nothing: each reply's cost is still in its message's metrics."""
    if not supported(store):
        return
    m = response.get("metrics") or {}
    store.log_usage((m.get("end_time") or iso(), response.get("session_id"), response.get("request_id"),
                     response.get("model_id"), target, _int(m.get("input_tokens")), _int(m.get("output_tokens")),
                     _int(m.get("cache_read_tokens")), _int(m.get("cache_write_tokens")), _num(m.get("cost_usd")),
                     _num(m.get("cost_estimate_usd")), 1 if partial else 0))


# (store URL, author, since, session_id) -> (highest seq summed, sum). The log is append-only, so a sum stays
# right when only rows above its mark are added to it, whichever process wrote them.
_sums: dict[tuple, tuple[int, float]] = {}
_sums_lock = threading.Lock()


def spent(store: "SessionStoreBase", since: Optional[str] = None, session_id: Optional[str] = None) -> float:
    """USD spent (exact costs, estimates where there is no exact one) since ``since`` (an ISO timestamp;
    None: ever), in one session if ``session_id`` is given (on a shared database: this store's author's).

    Sums are kept per store and read incrementally: each call adds only the rows logged since the last one
    (by any process), so a check stays fast however long the log grows."""
    require(store, "spend")
    key = (store.url, store.author, since, session_id)
    with _sums_lock:
        mark, total = _sums.get(key, (0, 0.0))
    top, added = store.usage_spend(mark, since, session_id)
    if top < mark:  # not the log the mark was taken on (replaced file): sum it all again
        top, added = store.usage_spend(0, since, session_id)
        total = 0.0
    total += added
    with _sums_lock:
        if len(_sums) > 10_000:
            _sums.clear()
        _sums[key] = (top, total)
    return total


def usage_df(store: "SessionStoreBase", by: str = "model") -> "pd.DataFrame":
    """Replies, tokens and cost grouped ``by`` "model", "session" or "day" (local). See ``OblixClient.usage``."""
    import pandas as pd

    if by not in USAGE_GROUPS:
        raise ValueError(f"by must be one of {list(USAGE_GROUPS)}, not {by!r}")
    require(store, "client.usage()")
    rows = store.usage_groups(by)
    titles = store.session_titles() if by == "session" else {}
    names = ["replies", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd",
             "cost_estimate_usd", "unpriced_replies", "spend_usd", "first", "last"]
    columns = list(zip(*rows)) if rows else [()] * (len(names) + 1)
    key_name = {"model": "model_id", "session": "session_id", "day": "day"}[by]
    data: dict = {}
    if by == "day":
        data[key_name] = pd.to_datetime(pd.Series(columns[0], dtype=object), format="%Y-%m-%d").dt.date.array
    else:
        data[key_name] = pd.array(columns[0], dtype="str")  # session_id NA: calls made outside a session
    if by == "session":
        data["title"] = pd.array([titles.get(sid) for sid in columns[0]], dtype="str")  # NA: deleted/none
    for name, values in zip(names, columns[1:]):
        if name in ("first", "last"):
            data[name] = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=True).array
        elif name in ("cost_usd", "cost_estimate_usd", "spend_usd"):
            data[name] = pd.array(values, dtype="Float64")
        else:
            data[name] = pd.array(values, dtype="Int64")
    return pd.DataFrame(data)
