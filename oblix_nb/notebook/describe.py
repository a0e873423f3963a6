"""Compact, bounded descriptions of notebook values, written for a model's context window.

:func:`describe` turns a value into Markdown of at most ``max_chars`` characters:

* **pandas DataFrame** (and Series): shape, index, memory; one row per column with its dtype, missing count and
  ``describe()`` statistics (mean/std/quartiles for numbers, unique/top/freq for the rest); a few first rows.
* **dask DataFrame**: columns and dtypes, partitions, and the first rows of the first partition only.
* **NumPy array**: shape, dtype, memory; min/max/mean/std and NaN count; a summarised preview.
* **str**: the text; **anything else**: its type and a truncated ``repr`` (``reprlib``: containers are cut
  element-wise, never printed whole).

Nothing is ever stringified whole: statistics of a frame with more than :data:`SAMPLE_ROWS` rows come from a
random sample of that many rows (said so in the text), missing counts are exact up to :data:`EXACT_CELLS`
cells (else estimated from the sample), only :data:`MAX_COLUMNS` columns are detailed, and sample rows come
from ``head()``. A 10-million-row frame is described in well under a second. If the text is still longer
than ``max_chars`` the detail is reduced step by step (fewer rows, fewer columns, no statistics) and, last,
the middle is cut out.

pandas and NumPy are only imported when such a value is described.
"""
from __future__ import annotations

import reprlib
import sys
from collections.abc import Callable
from typing import Any

SAMPLE_ROWS = 100_000
EXACT_CELLS = 50_000_000
MAX_COLUMNS = 40
SAMPLE_ARRAY = 1_000_000
CELL_CHARS = 40
DEFAULT_MAX_CHARS = 4000


def clip(text: str, max_chars: int) -> str:
    """``text`` shortened to at most ``max_chars`` characters by cutting out its middle (head kept longer)."""
    if len(text) <= max_chars:
        return text
    marker = "\n…[{n} characters omitted]…\n"
    room = max(max_chars - len(marker.format(n=len(text))), 0)
    head = room - room // 3
    tail = room // 3
    return text[:head] + marker.format(n=len(text) - head - tail) + (text[-tail:] if tail else "")


def is_data(value: Any) -> bool:
    """True for values that are described rather than inlined: pandas/dask frames and series, NumPy arrays."""
    return _kind(value) is not None


def _kind(value: Any) -> str | None:
    module = type(value).__module__ or ""
    if module.startswith("pandas"):
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(value, pd.DataFrame):
            return "frame"
        if pd is not None and isinstance(value, pd.Series):
            return "series"
    if module.startswith("dask") and hasattr(value, "npartitions") and hasattr(value, "dtypes"):
        return "dask"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return "array"
    pd = sys.modules.get("pandas")  # subclasses of DataFrame defined elsewhere
    if pd is not None and isinstance(value, pd.DataFrame):
        return "frame"
    if pd is not None and isinstance(value, pd.Series):
        return "series"
    return None


def describe(value: Any, name: str | None = None, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Markdown describing ``value`` (called ``name``) in at most ``max_chars`` characters (see module doc)."""
    max_chars = max(int(max_chars), 200)
    kind = _kind(value)
    label = f"`{name}`" if name else "value"
    if kind in ("frame", "series"):
        levels: list[tuple] = [(5, MAX_COLUMNS, True), (3, MAX_COLUMNS, True), (3, 20, True), (2, 12, True), (0, 12, True),
                  (0, 8, False), (0, 4, False)]
        make: Callable[..., str] = lambda rows, cols, stats: _describe_pandas(value, label, kind, rows, cols, stats)
    elif kind == "dask":
        levels = [(5, MAX_COLUMNS), (3, 20), (0, 8)]
        make = lambda rows, cols: _describe_dask(value, label, rows, cols)  # noqa: E731
    elif kind == "array":
        levels = [(50, 110), (20, 100), (6, 80)]
        make = lambda threshold, width: _describe_array(value, label, threshold, width)  # noqa: E731
    else:
        return clip(_describe_other(value, label, max_chars), max_chars)
    text = ""
    for level in levels:
        text = make(*level)
        if len(text) <= max_chars:
            return text
    return clip(text, max_chars)


# --------------------------------------------------------------------------- pandas
def _fmt(value: Any) -> str:
    """One table cell: short, single-line, pipes escaped."""
    try:
        if isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    text = text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_fmt(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _memory(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _sample(frame, n: int):
    """A random sample of ``n`` rows (positions sorted, so the order is kept); the frame itself if smaller."""
    import numpy as np

    if len(frame) <= n:
        return frame, False
    positions = np.sort(np.random.default_rng(0).choice(len(frame), size=n, replace=False))
    return frame.iloc[positions], True


def _index_note(index) -> str:
    kind = type(index).__name__
    names = [str(x) for x in getattr(index, "names", [None]) if x is not None]
    text = kind + (f" ({', '.join(names)})" if names else "")
    if len(index) and kind != "RangeIndex":
        text += f": {_fmt(index[0])} … {_fmt(index[-1])}"
    elif kind == "RangeIndex" and len(index):
        text += f": {index.start} … {index[-1]}"
    return text


def _describe_pandas(value, label: str, kind: str, rows: int, max_cols: int, stats: bool) -> str:
    import pandas as pd

    frame = value.to_frame() if kind == "series" else value
    n_rows, n_cols = frame.shape
    shown = frame.iloc[:, :max_cols]
    if kind == "series":
        head = (f"### {label}: pandas Series, {n_rows:,} values, dtype {value.dtype}"
                + (f", name {value.name!r}" if value.name is not None else ""))
    else:
        head = f"### {label}: pandas DataFrame, {n_rows:,} rows × {n_cols:,} columns"
    try:
        memory = _memory(float(frame.memory_usage(index=True, deep=False).sum()))
    except Exception:  # noqa: BLE001
        memory = "?"
    parts = [head, f"index: {_index_note(frame.index)}; memory: {memory} (shallow)"]

    sample, sampled = _sample(shown, SAMPLE_ROWS) if stats else (shown, False)
    exact_missing = n_rows * shown.shape[1] <= EXACT_CELLS
    try:
        missing = (shown if exact_missing else sample).isna().sum()
        if not exact_missing and sampled:
            missing = (missing * (n_rows / max(len(sample), 1))).round().astype("int64")
    except Exception:  # noqa: BLE001
        missing = None
    summary = _statistics(sample) if stats and n_rows and shown.shape[1] else None
    stat_names = [s for s in ("mean", "std", "min", "25%", "50%", "75%", "max", "unique", "top", "freq")
                  if summary is not None and any(s in column for column in summary)]
    header = ["column", "dtype", "missing"] + stat_names
    table_rows = []
    for position, column in enumerate(shown.columns):
        miss = "?"
        if missing is not None:
            count = int(missing.iloc[position])
            miss = f"{'~' if not exact_missing else ''}{count:,}"
            if n_rows and count:
                miss += f" ({count / n_rows:.1%})"
        row = [column, str(shown.dtypes.iloc[position]), miss]
        for s in stat_names:
            cell = summary[position].get(s) if summary is not None else None
            row.append("" if cell is None or (not isinstance(cell, str) and pd.isna(cell)) else cell)
        table_rows.append(row)
    if table_rows:
        note = ""
        if summary is not None:
            note = (f" (statistics from a random sample of {len(sample):,} rows)" if sampled else "")
        parts.append("Columns" + (" with describe() statistics" if summary is not None else "") + note + ":\n"
                     + _table(header, table_rows))
    if n_cols > max_cols:
        rest = [str(c) for c in frame.columns[max_cols:max_cols + 50]]
        more = n_cols - max_cols
        parts.append(f"…and {more:,} more column{'s' if more != 1 else ''}: " + ", ".join(rest)
                     + (", …" if more > 50 else ""))
    if rows and n_rows:
        first = shown.head(rows)
        parts.append(f"First {len(first)} row{'s' if len(first) != 1 else ''}:\n" + _table(
            ["(index)"] + [str(c) for c in first.columns],
            [[idx] + list(values) for idx, values in zip(first.index, first.itertuples(index=False, name=None))]))
    return "\n\n".join(parts)


def _statistics(sample) -> list[dict] | None:
    """``describe()`` of each column (by position) as dicts; a column that cannot be described as is (e.g.
    lists, which are unhashable) is described by its values' reprs; None if nothing can be."""
    try:
        summary = sample.describe(include="all").T
        if len(summary) == sample.shape[1]:
            return [summary.iloc[i].to_dict() for i in range(len(summary))]
    except Exception:  # noqa: BLE001 - fall back to one column at a time
        pass
    out: list[dict] = []
    for position in range(sample.shape[1]):
        column = sample.iloc[:, position]
        try:
            out.append(column.describe().to_dict())
        except Exception:  # noqa: BLE001
            try:
                out.append(column.map(repr).describe().to_dict())
            except Exception:  # noqa: BLE001
                out.append({})
    return out if any(out) else None


def _describe_dask(value, label: str, rows: int, max_cols: int) -> str:
    dtypes = value.dtypes
    columns = list(dtypes.index)
    parts = [f"### {label}: dask DataFrame, {len(columns):,} columns, {value.npartitions:,} partitions "
             f"(lazy: rows not counted)",
             _table(["column", "dtype"], [[c, str(dtypes[c])] for c in columns[:max_cols]])]
    if len(columns) > max_cols:
        parts.append(f"…and {len(columns) - max_cols:,} more columns")
    if rows:
        try:
            first = value.head(rows, npartitions=1, compute=True).iloc[:, :max_cols]
            parts.append(f"First {len(first)} rows (first partition):\n" + _table(
                ["(index)"] + [str(c) for c in first.columns],
                [[i] + list(v) for i, v in zip(first.index, first.itertuples(index=False, name=None))]))
        except Exception as exc:  # noqa: BLE001
            parts.append(f"(first rows unavailable: {type(exc).__name__})")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- numpy
def _describe_array(a, label: str, threshold: int, width: int) -> str:
    import numpy as np

    parts = [f"### {label}: numpy.ndarray, shape {a.shape}, dtype {a.dtype}, {a.size:,} elements, "
             f"memory {_memory(float(a.nbytes))}"]
    if a.size and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        if a.size > SAMPLE_ARRAY:
            idx = np.sort(np.random.default_rng(0).choice(a.size, size=SAMPLE_ARRAY, replace=False))
            flat, note = a.flat[idx], f" (from a random sample of {SAMPLE_ARRAY:,} elements)"
        else:
            flat, note = a.reshape(-1), ""
        try:
            if a.dtype == np.bool_:
                parts.append(f"true: {int(flat.sum()):,} of {flat.size:,}{note}")
            elif np.iscomplexobj(flat):
                parts.append(f"mean {complex(flat.mean()):.4g}{note}")
            else:
                values = flat.astype(np.float64, copy=False)
                finite = np.isfinite(values)
                nan = int(np.isnan(values).sum())
                ok = values[finite]
                stats = (f"min {ok.min():.4g}, max {ok.max():.4g}, mean {ok.mean():.4g}, std {ok.std():.4g}"
                         if ok.size else "no finite values")
                extra = f"; NaN: {nan:,}" if nan else ""
                inf = int(values.size - finite.sum()) - nan
                extra += f"; ±inf: {inf:,}" if inf else ""
                parts.append(f"{stats}{extra}{note}")
        except Exception:  # noqa: BLE001
            pass
    try:
        preview = np.array2string(a, threshold=threshold, edgeitems=3, max_line_width=width)
    except Exception:  # noqa: BLE001
        preview = reprlib.repr(a)
    parts.append("```\n" + preview + "\n```")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- anything else
def _short_repr(max_chars: int) -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxset, r.maxfrozenset, r.maxdeque, r.maxdict = 4, 30, 30, 30, 30, 30, 30
    r.maxstring = r.maxother = r.maxlong = max(max_chars, 40)
    return r


def type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"


def _describe_other(value: Any, label: str, max_chars: int) -> str:
    if isinstance(value, str):
        return f"### {label}: str, {len(value):,} characters\n\n{clip(value, max_chars)}"
    size = ""
    try:
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            size = f", {len(value):,} items"
    except Exception:  # noqa: BLE001
        pass
    try:
        text = _short_repr(max_chars).repr(value)
    except Exception as exc:  # noqa: BLE001
        text = f"<repr failed: {type(exc).__name__}>"
    return f"### {label}: {type_name(value)}{size}\n\n```\n{clip(text, max_chars)}\n```"


def inline_text(value: Any, max_chars: int) -> str:
    """A plain value's text for a ``{name}`` in a prompt: ``str(value)`` for str and numbers (as before),
    a bounded ``repr`` for containers, clipped to ``max_chars``."""
    if isinstance(value, (str, int, float, complex, bool)) or value is None:
        return clip(str(value), max_chars)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return clip(_short_repr(max_chars).repr(value), max_chars)
    try:
        return clip(str(value), max_chars)
    except Exception as exc:  # noqa: BLE001
        return f"<{type_name(value)}: str() failed: {type(exc).__name__}>"
