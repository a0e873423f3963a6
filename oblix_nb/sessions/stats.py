"""Request statistics: what ``client.stats()`` computes, independent of the storage engine.

The store computes the aggregates in SQL (``SessionStore.stats``: counts, sums and the rows at each
percentile's position, never every message in Python); this module holds what every engine shares: the
argument rules (``by``, ``since``/``until``), the percentile arithmetic, and the pandas frame built from the
store's rows (pandas imported on call).

What is counted (per group):

- ``requests``: assistant replies, plus prompts sent by ``execute`` that got no reply at all (every candidate
  failed before its first token, or the request was stopped before it). Such unanswered requests have no
  model or route: they form the ``None`` group when grouping by model or route.
- ``errors``: unanswered requests plus replies cut by a failure (``metrics.error`` set).
- ``partial``: replies flagged partial (stopped or cut by a failure; what arrived was kept).
- ``fallbacks``: replies given by a fallback model after the first choice failed (``routing.fallback_from``).
- ``ttft_p50``, ``ttft_p95`` (seconds), ``tokens_per_second_p50``: percentiles with linear interpolation
  (pandas' and numpy's default), over the replies that report the metric; NaN when none does.
- ``input_tokens``, ``output_tokens``: sums over replies (unknown counts add nothing).
- ``cost_usd``: sum of ``metrics.cost_usd`` over the replies whose cost is known; NaN when none is known.
  ``cost_unknown``: how many replies have no known cost.

Timestamps are UTC; ``day`` is the UTC date. A message is in the window when ``since <= timestamp < until``.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .._util import iso, parse_iso, utcnow

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STATS_BY = ("model", "route", "session", "day")
# Index name of the frame for each ``by``.
INDEX_NAMES = {"model": "model_id", "route": "route", "session": "session_id", "day": "day"}
COUNT_COLUMNS = ("requests", "errors", "partial", "fallbacks", "input_tokens", "output_tokens", "cost_unknown")
PERCENTILES = (("ttft_p50", "ttft", 0.5), ("ttft_p95", "ttft", 0.95), ("tokens_per_second_p50", "tps", 0.5))
STATS_COLUMNS = ["requests", "errors", "partial", "fallbacks", "ttft_p50", "ttft_p95", "tokens_per_second_p50",
                 "input_tokens", "output_tokens", "cost_usd", "cost_unknown"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def check_by(by: Any) -> str:
    if by not in STATS_BY:
        raise ValueError(f"by must be one of {', '.join(map(repr, STATS_BY))}, not {by!r}")
    return by


def parse_time(value: Any, name: str, now: datetime | None = None) -> str | None:
    """A window bound as the store's canonical ISO string, or None.

    Accepts a datetime (naive means UTC; pandas Timestamps too), a date (its midnight UTC), an ISO 8601
    string, a relative age such as ``"7d"``, ``"12h"``, ``"30min"``, ``"2w"`` (that long before ``now``), or a
    timedelta (likewise). Anything else raises TypeError; an unparsable string ValueError.
    """
    if value is None:
        return None
    now = now or utcnow()
    if isinstance(value, timedelta):
        return iso(now - value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return iso(dt.astimezone(timezone.utc))
    if isinstance(value, date):
        return iso(datetime.combine(value, time(0), tzinfo=timezone.utc))
    if isinstance(value, str):
        match = _RELATIVE.match(value)
        if match:
            return iso(now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2].lower()]))
        try:
            return iso(parse_iso(value))
        except (ValueError, OverflowError):
            raise ValueError(f"{name}={value!r} is neither an ISO 8601 time nor an age like '7d', '12h', "
                             f"'30min'") from None
    raise TypeError(f"{name} must be a datetime, date, ISO string, age like '7d', or timedelta, "
                    f"not {type(value).__name__}")


def window(since: Any, until: Any, now: datetime | None = None) -> tuple[str | None, str | None]:
    """``(since, until)`` as canonical strings; ValueError if ``since`` is after ``until``."""
    now = now or utcnow()
    lo, hi = parse_time(since, "since", now), parse_time(until, "until", now)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"since ({lo}) is after until ({hi})")
    return lo, hi


def positions(n: int, q: float) -> tuple[int, int, float]:
    """The 0-based ranks around quantile ``q`` of ``n`` sorted values, and the interpolation weight."""
    pos = (n - 1) * q
    lo = int(pos)
    return lo, min(lo + 1, n - 1) if pos > lo else lo, pos - lo


def lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation, step for step (so results equal ``Series.quantile`` exactly)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def stats_frame(rows: list[dict], by: str, since: str | None = None, until: str | None = None,
                now: datetime | None = None) -> pd.DataFrame:
    """The frame for the store's rows (``{"key", <STATS_COLUMNS>, and "title" for sessions}``).

    Index: ``model_id`` / ``route`` / ``session_id`` / ``day`` (UTC midnight datetimes), sorted (a None key
    last). Days without requests appear with zero counts, from ``since`` (or the first day with data) to
    ``until`` (or today when only ``since`` is given, else the last day with data), so a daily series has no
    gaps. Sessions get a ``title`` column first.
    """
    import numpy as np
    import pandas as pd

    columns = (["title"] if by == "session" else []) + STATS_COLUMNS
    data: dict = {}
    for name in columns:
        values = [row[name] for row in rows]
        if name in COUNT_COLUMNS:
            data[name] = np.array(values, dtype="int64")
        elif name == "title":
            data[name] = pd.array(values, dtype="str")
        else:
            data[name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
    keys = [row["key"] for row in rows]
    if by == "day":
        index = pd.DatetimeIndex(pd.to_datetime(keys, format="%Y-%m-%d", utc=True) if keys else [], tz="UTC",
                                 name="day")
    else:
        index = pd.Index(keys, dtype=object, name=INDEX_NAMES[by])
    frame = pd.DataFrame(data, index=index, columns=columns)
    frame = frame.sort_index(na_position="last") if len(frame) else frame
    if by == "day":
        frame = _fill_days(frame, since, until, now)
    return frame


def _fill_days(frame: pd.DataFrame, since: str | None, until: str | None,
               now: datetime | None) -> pd.DataFrame:
    import pandas as pd

    def day(stamp: str) -> pd.Timestamp:
        return pd.Timestamp(stamp[:10], tz="UTC")

    first = day(since) if since else (frame.index.min() if len(frame) else None)
    if until:
        last = day(iso(parse_iso(until) - timedelta(milliseconds=1)))
    elif since:
        last = max([day(iso(now or utcnow()))] + ([frame.index.max()] if len(frame) else []))
    else:
        last = frame.index.max() if len(frame) else None
    if first is None or last is None or last < first:
        return frame
    full = pd.date_range(first, last, freq="D", name="day")
    filled = frame.reindex(full)
    for name in COUNT_COLUMNS:
        filled[name] = filled[name].fillna(0).astype("int64")
    return filled
