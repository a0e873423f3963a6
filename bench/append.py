"""Append path: this tree's SessionStore against the one at a git revision, side by side in one process.

    python bench/append.py [--baseline-rev 22abd59] [--rounds 7] [--appends 3000]

Issue 8 added input checks (lone surrogates, JSON depth/cycles), checkpointed replies (``upsert_message``)
and background search indexing to the write path; the goal is that appending costs at most 5 % more.
The baseline is the package as it was at ``--baseline-rev`` (default: the last commit before those
changes), extracted with ``git archive`` into a temp folder and imported as ``oblix_nb_base``.

Each round, for each side in alternating order, on a fresh database: a 1,000-message session, then
``--appends`` timed ``append_message`` calls of a plain ~190-character message (bench/sessions.py's append
row), then the same number of replies as execute() stores them (with metrics and routing dicts). The figure
per side is the median over all rounds' calls. Prints JSON: rows of ``{metric, ours_ms, baseline_ms,
ratio, target_ratio, ok}`` with ratio = ours / baseline (<= 1.05 is the goal).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.")
METRICS = {"total_latency": 1.234, "time_to_first_token": 0.056, "tokens_per_second": 41.5, "input_tokens": 321,
           "output_tokens": 48, "start_time": "2026-11-30T08:00:00.000Z", "end_time": "2026-11-30T08:00:01.234Z",
           "model_name": "smollm2:135m", "model_type": "openai", "usage_source": {"input": "server",
           "output": "server"}, "finish_reason": "stop", "context": {"messages": 5, "dropped": 0, "truncated": 0}}
ROUTING = {"target": "local", "model_id": "openai:smollm2:135m", "reason": "local: resources fine",
           "candidates": ["openai:smollm2:135m"], "fallback_from": None}


def load_baseline(rev: str, into: Path):
    """``oblix_nb`` as of ``rev``, importable as ``oblix_nb_base`` (its imports are package-relative)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "oblix_nb"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "oblix_nb").rename(into / "oblix_nb_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("oblix_nb_base.sessions").SessionStore


def run_side(store_cls, path: Path, appends: int) -> tuple[list[int], list[int]]:
    store = store_cls(path)
    try:
        sid = store.create(title="bench")
        store.append_messages(sid, [{"role": "user", "content": f"[{j}] {TEXT}"} for j in range(1000)])
        plain, replies = [], []
        for k in range(appends):
            t0 = time.perf_counter_ns()
            store.append_message(sid, "user", f"[a{k}] {TEXT}")
            plain.append(time.perf_counter_ns() - t0)
        for k in range(appends):
            t0 = time.perf_counter_ns()
            store.append_message(sid, "assistant", f"[r{k}] {TEXT}", model_id="openai:smollm2:135m",
                                 metrics=METRICS, routing=ROUTING, request_id=f"req-{k}")
            replies.append(time.perf_counter_ns() - t0)
        return plain, replies
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="22abd59",
                        help="git revision of the baseline package (default: before issue 8's store changes)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--appends", type=int, default=3000)
    args = parser.parse_args()

    from oblix_nb.sessions import SessionStore

    work = Path(tempfile.mkdtemp(prefix="oblix-bench-append-"))
    try:
        Base = load_baseline(args.baseline_rev, work / "pkg")
        sides = {"ours": (SessionStore, [], []), "baseline": (Base, [], [])}
        for r in range(args.rounds):
            order = ["ours", "baseline"] if r % 2 == 0 else ["baseline", "ours"]
            for name in order:
                cls, plain, replies = sides[name]
                p, q = run_side(cls, work / f"{name}.db", args.appends)
                plain += p
                replies += q
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(values):
        return statistics.median(values) / 1e6

    rows = []
    for metric, index in (("append_message to a 1,000-message session (plain message)", 1),
                          ("append_message of a reply with metrics and routing (execute()'s store)", 2)):
        ours, base = med(sides["ours"][index]), med(sides["baseline"][index])
        rows.append({"metric": metric, "ours_ms": round(ours, 4), "baseline_ms": round(base, 4),
                     "ratio": round(ours / base, 3), "target_ratio": 1.05, "ok": ours / base <= 1.05})
    print(json.dumps({
        "bench": f"append path: this tree vs {args.baseline_rev}, same process, interleaved rounds",
        "ratio": "ours_ms / baseline_ms",
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "data": {"rounds": args.rounds, "appends_per_round": args.appends},
        "rows": rows,
        "all_ok": all(r["ok"] for r in rows),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
