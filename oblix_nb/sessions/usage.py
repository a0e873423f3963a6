"""The usage log: one row per model reply (SQLite migration 5), what budgets and ``client.usage()`` add up.

A row is written for every reply, stored in a session or not, finished or cut short, so spend is counted
even for ``execute()`` calls without a session, and deleting a session does not give its spend back.

Both engines keep it (SQLite migration 5, PostgreSQL migration 3). In a shared PostgreSQL store each row
records its ``author`` and spend is summed per user (one user's calls never use up another's budget).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

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


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record(store: SessionStoreBase, response: dict, target: str | None, partial: bool = False) -> None:
    """Log one reply from execute()'s response dict (its metrics carry tokens and cost). A store without a
    usage log (neither SQLite nor PostgreSQL) logs nothing: each reply's cost is still in its message's metrics."""
    if not supported(store):
        return
    store.log_usage(row(response, target, partial))


def row(response: dict, target: str | None, partial: bool = False) -> tuple:
    """The usage-log row (``USAGE_COLUMNS`` order) of one reply, from execute()'s response dict."""
    m = response.get("metrics") or {}
    return (m.get("end_time") or iso(), response.get("session_id"), response.get("request_id"),
            response.get("model_id"), target, _int(m.get("input_tokens")), _int(m.get("output_tokens")),
            _int(m.get("cache_read_tokens")), _int(m.get("cache_write_tokens")), _num(m.get("cost_usd")),
            _num(m.get("cost_estimate_usd")), 1 if partial else 0)


# (store URL, author, since, session_id) -> (mark, sum of the rows up to mark, recent (time, highest seq) seen).
# The log is append-only, so a sum stays right when only rows above its mark are added to it, whichever process
# wrote them, as long as no row at or below the mark can still appear.
_sums: dict[tuple, tuple[int, float, tuple]] = {}
_sums_lock = threading.Lock()
#: where usage rows can commit out of seq order (PostgreSQL: a concurrent writer's row with a lower seq may
#: commit after a higher one was seen), a seq seen this long ago is taken as settled: every row at or below it
#: has committed (a usage row is one autocommit INSERT). Rows above the settled mark are summed on every call.
SETTLE_S = 60.0
_OBSERVE_EVERY_S = 1.0


def spent(store: SessionStoreBase, since: str | None = None, session_id: str | None = None) -> float:
    """USD spent (exact costs, estimates where there is no exact one) since ``since`` (an ISO timestamp;
    None: ever), in one session if ``session_id`` is given (on a shared database: this store's author's).

    Sums are kept per store and read incrementally: each call adds only the rows logged since the last one
    (by any process), so a check stays fast however long the log grows. On PostgreSQL, where concurrent
    writers commit out of seq order, the rows logged in the last ``SETTLE_S`` seconds are summed again on each
    call, so a row that commits after a higher one was seen is still counted."""
    require(store, "spend")
    key = (store.url, store.author, since, session_id)
    ordered = getattr(store, "_SEQ_COMMIT_ORDER", True)
    now = time.monotonic()
    with _sums_lock:
        mark, total, seen = _sums.get(key, (0, 0.0, ()))
    settled = [top for t, top in seen if now - t >= SETTLE_S]
    if settled and max(settled) > mark:
        _, added = store.usage_spend(mark, since, session_id, upto=max(settled))
        mark, total = max(settled), total + added
        seen = tuple((t, top) for t, top in seen if now - t < SETTLE_S)
    top, added = store.usage_spend(mark, since, session_id)
    if top < mark:  # not the log the mark was taken on (replaced file): sum it all again
        top, added = store.usage_spend(0, since, session_id)
        mark, total, seen = 0, 0.0, ()
    result = total + added
    if ordered:
        state = (top, result, ())
    else:
        if not seen or (top > seen[-1][1] and now - seen[-1][0] >= _OBSERVE_EVERY_S):
            seen = (*seen, (now, top))
        state = (mark, total, seen)
    with _sums_lock:
        if len(_sums) > 10_000:
            _sums.clear()
        _sums[key] = state
    return result


def cached_spend(store: SessionStoreBase, since: str | None = None,
                 session_id: str | None = None) -> tuple[int, float]:
    """``(seq, USD)``: the last sum :func:`spent` (or :func:`remember_spend`) kept for this window, (0, 0.0)
    if none: a reservation sums only the rows above it."""
    with _sums_lock:
        mark, total, _seen = _sums.get((store.url, store.author, since, session_id), (0, 0.0, ()))
    return mark, total


def remember_spend(store: SessionStoreBase, since: str | None, session_id: str | None, top: int,
                   total: float) -> None:
    """Keep a window's sum read by a reservation (see :func:`cached_spend`). Only where rows commit in seq order:
    elsewhere (PostgreSQL) a row below ``top`` may still commit, so the mark stays where :func:`spent` settled it."""
    if not getattr(store, "_SEQ_COMMIT_ORDER", True):
        return
    with _sums_lock:
        if len(_sums) > 10_000:
            _sums.clear()
        _sums[(store.url, store.author, since, session_id)] = (top, total, ())


def usage_df(store: SessionStoreBase, by: str = "model") -> pd.DataFrame:
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
