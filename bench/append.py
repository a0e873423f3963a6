"""Append path: this tree's SessionStore against the one at a git revision, side by side in one process.

    python bench/append.py [--baseline-rev 22abd59] [--rounds 7] [--appends 3000]
    python bench/append.py --postgres [--baseline-rev 6787aad] [--rounds 5] [--appends 1000]
    python bench/append.py --pgbouncer [--baseline-rev 6787aad] [--appends 400]
    python bench/append.py --outage

``--postgres``: the same timed appends on a PostgreSQL server started from Debian's packages (tests/pg.py), a
fresh schema per round and side (issue 20: automatic prepared statements off by default, pooled connections
checked when taken; baseline 6787aad prepared after 5 executions and did not check). ``--pgbouncer``:
``--appends`` concurrent appends (16 threads) through pgbouncer in transaction and in session mode, errors
counted per side. ``--outage``: the longest event-loop stall while the server is stopped, measured by a probe
task on the package loop (sleep 10 ms, lateness recorded) while checkpoint-like writes run on that loop.

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


def load_baseline(rev: str, into: Path, name: str = "SessionStore"):
    """``oblix_nb`` as of ``rev``, importable as ``oblix_nb_base`` (its imports are package-relative)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "oblix_nb"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "oblix_nb").rename(into / "oblix_nb_base")
    sys.path.insert(0, str(into))
    return getattr(importlib.import_module("oblix_nb_base.sessions"), name)


def run_side(store_cls, path, appends: int) -> tuple[list[int], list[int]]:
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
        if isinstance(path, Path):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


def _pg_server():
    sys.path.insert(0, str(ROOT / "tests"))
    from pg import PostgresServer

    return PostgresServer.start()


def bench_pgbouncer(args, work: Path) -> dict:
    """Concurrent appends through pgbouncer (transaction and session mode): errors per side."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(ROOT / "tests"))
    from pg import PgBouncer

    from oblix_nb.sessions import open_store

    server = _pg_server()
    out = []
    try:
        base_open = load_baseline(args.baseline_rev, work / "pkg", "open_store")
        for mode in ("transaction", "session"):
            bouncer = PgBouncer.start(server, mode)
            try:
                for side, opener in (("ours", open_store), ("baseline", base_open)):
                    url = bouncer.new_database_url()
                    errors: list[str] = []
                    try:
                        store = opener(url)
                    except Exception as exc:  # noqa: BLE001 - the baseline's migrate may fail here
                        out.append({"mode": mode, "side": side, "appends": args.appends, "errors": args.appends,
                                    "open_error": repr(exc)[:160]})
                        continue
                    sid = store.create(title="bench")

                    def one(i: int) -> None:
                        try:
                            store.append_message(sid, "user", f"[{i}] {TEXT}")
                        except Exception as exc:  # noqa: BLE001 - counted
                            errors.append(repr(exc)[:120])

                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(16) as pool:
                        list(pool.map(one, range(args.appends)))
                    took = time.perf_counter() - t0
                    stored = len(store.messages(sid))
                    store.close()
                    out.append({"mode": mode, "side": side, "appends": args.appends, "errors": len(errors),
                                "stored": stored, "seconds": round(took, 3),
                                "first_error": errors[0] if errors else None})
            finally:
                bouncer.stop()
    finally:
        server.stop()
    return {"bench": "concurrent appends through pgbouncer 1.18 (16 threads)", "rows": out,
            "all_ok": all(r["errors"] == 0 for r in out if r["side"] == "ours")}


def bench_outage(args) -> dict:
    """The longest loop stall while the server is down (checkpoint-like writes on the package loop)."""
    import asyncio

    from oblix_nb import runtime
    from oblix_nb.sessions import open_store

    server = _pg_server()
    try:
        store = open_store(server.url)
        sid = store.create(title="outage")
        store.append_message(sid, "user", "before")
        server.halt()

        async def run() -> dict:
            worst, stop = 0.0, False

            async def probe():
                nonlocal worst
                while not stop:
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    worst = max(worst, time.perf_counter() - t - 0.01)

            task = asyncio.ensure_future(probe())
            await asyncio.sleep(0.05)  # the probe is running before the first write
            calls, failed, longest = 0, 0, 0.0
            end = time.perf_counter() + args.outage_s
            while time.perf_counter() < end:  # one checkpoint-like write every 100 ms
                t = time.perf_counter()
                try:
                    store.upsert_message(sid, "assistant", "draft", id="reply", partial=True)
                except Exception:  # noqa: BLE001 - counted
                    failed += 1
                calls += 1
                longest = max(longest, time.perf_counter() - t)
                await asyncio.sleep(0.1)
            stop = True
            await task
            return {"outage_s": args.outage_s, "writes": calls, "failed": failed,
                    "longest_write_on_loop_s": round(longest, 4), "max_loop_stall_s": round(worst, 4)}

        row = runtime.run(run())
        server.resume()
        t0 = time.perf_counter()
        while True:
            try:
                store.append_message(sid, "user", "after")
                break
            except Exception:  # noqa: BLE001 - waiting for the probe
                time.sleep(0.05)
        row["recovered_after_restart_s"] = round(time.perf_counter() - t0, 3)
        store.close()
    finally:
        server.stop()
    return {"bench": "event-loop stall during a PostgreSQL outage (goal <= 0.5 s)", "rows": [row],
            "all_ok": row["max_loop_stall_s"] <= 0.5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default=None,
                        help="git revision of the baseline package (default: 22abd59, before issue 8's store "
                             "changes; with --postgres/--pgbouncer 6787aad, before issue 20's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--postgres", action="store_true", help="time appends on PostgreSQL instead of SQLite")
    parser.add_argument("--pgbouncer", action="store_true", help="concurrent appends through pgbouncer")
    parser.add_argument("--outage", action="store_true", help="loop stall while PostgreSQL is down")
    parser.add_argument("--outage-s", type=float, default=5.0)
    args = parser.parse_args()
    if args.baseline_rev is None:
        args.baseline_rev = "6787aad" if (args.postgres or args.pgbouncer) else "22abd59"
    if args.outage:
        print(json.dumps(bench_outage(args), indent=2))
        return 0

    from oblix_nb.sessions import SessionStore, open_store

    work = Path(tempfile.mkdtemp(prefix="oblix-bench-append-"))
    server = None
    try:
        if args.pgbouncer:
            print(json.dumps(bench_pgbouncer(args, work), indent=2))
            return 0
        if args.postgres:
            server = _pg_server()
            sides = {"ours": (open_store, [], []),
                     "baseline": (load_baseline(args.baseline_rev, work / "pkg", "open_store"), [], [])}
        else:
            sides = {"ours": (SessionStore, [], []), "baseline": (load_baseline(args.baseline_rev, work / "pkg"), [], [])}
        for r in range(args.rounds):
            order = ["ours", "baseline"] if r % 2 == 0 else ["baseline", "ours"]
            for name in order:
                cls, plain, replies = sides[name]
                target = server.new_schema_url() if server is not None else work / f"{name}.db"
                p, q = run_side(cls, target, args.appends)
                plain += p
                replies += q
    finally:
        if server is not None:
            server.stop()
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
        "bench": f"append path ({'PostgreSQL' if args.postgres else 'SQLite'}): this tree vs {args.baseline_rev}, "
                 f"same process, interleaved rounds",
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
