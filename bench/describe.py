"""Benchmark: describing a 10-million-row DataFrame for a prompt (not a test; prints one JSON object).

    python bench/describe.py [--rows 10000000] [--repeat 3] [--max-chars 4000]

Times, best of ``--repeat``, on one frame (int, float with 0.1% NaN, categorical, bool, datetime columns):

* ``describe``: ``oblix_nb.notebook.describe.describe(df, max_chars=...)`` — shape, dtypes, exact missing
  counts, ``describe()`` statistics from a 100,000-row sample, first rows; bounded in size;
* ``baseline``: what one would paste into a prompt by hand — ``df.describe(include="all")`` on every row plus
  ``df.isna().sum()`` and ``df.head()`` as text (its size is not bounded by any budget either).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from oblix_nb.notebook.describe import describe  # noqa: E402


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    values = rng.normal(size=rows)
    values[::1000] = np.nan
    return pd.DataFrame({
        "id": np.arange(rows),
        "x": values,
        "group": pd.Categorical.from_codes(rng.integers(0, 5, rows), ["a", "b", "c", "d", "e"]),
        "ok": rng.integers(0, 2, rows).astype(bool),
        "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, rows), unit="s"),
    })


def best(fn, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=4000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    df = frame(args.rows)
    built = time.perf_counter() - t0
    ours, text = best(lambda: describe(df, "df", max_chars=args.max_chars), args.repeat)
    base, base_text = best(lambda: "\n\n".join([df.describe(include="all").to_string(),
                                                df.isna().sum().to_string(), df.head().to_string()]),
                           args.repeat)
    print(json.dumps({"rows": args.rows, "columns": df.shape[1], "build_s": round(built, 2),
                      "describe_s": round(ours, 4), "describe_chars": len(text),
                      "baseline_s": round(base, 4), "baseline_chars": len(base_text),
                      "speedup": round(base / ours, 1), "max_chars": args.max_chars}, indent=2))


if __name__ == "__main__":
    main()
