"""Both store engines side by side: the sessions workload on SQLite and on PostgreSQL, and many processes
appending at once.

    python bench/stores.py [--sessions 100000] [--writers 8] [--appends 500] [--skip-big]

Starts its own PostgreSQL server (Debian's packages, tests/pg.py; default durability settings: fsync on,
synchronous_commit on) on a free loopback port, and a fresh SQLite database (WAL, synchronous=NORMAL), in
a temp folder removed afterwards. Prints one JSON document:

- ``rows``: ``{"metric", "sqlite_ms", "postgresql_ms", "ratio"}`` with ``ratio`` = postgresql_ms / sqlite_ms,
  medians of repeated calls on ``--sessions`` sessions of 10 messages each (bulk-loaded through the stores'
  own ``insert_records``, 1,000 sessions per transaction), 1% of them matching a metadata filter;
- ``concurrent``: ``--writers`` processes each appending ``--appends`` messages one call at a time, to one
  shared session (interleaved with the others) and to a session of their own, on each engine: wall time,
  messages per second, ``lost`` (messages acknowledged but not stored, or a wrong ``message_count``: must
  be 0), and the PostgreSQL/SQLite throughput ratio.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from sessions import median_ms  # noqa: E402  (bench/sessions.py)

from oblix_nb._util import iso  # noqa: E402
from oblix_nb.sessions import open_store  # noqa: E402
from oblix_nb.sessions.base import _update_stamp  # noqa: E402

TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.")
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
PER_SESSION = 10


def records(start: int, stop: int) -> list[dict]:
    out = []
    for i in range(start, stop):
        t = EPOCH + timedelta(seconds=i)
        out.append({"id": str(uuid.uuid4()), "title": f"Session {i}", "created_at": iso(t),
                    "updated_at": _update_stamp(t + timedelta(milliseconds=PER_SESSION)), "context": {},
                    "metadata": {"project": f"p{i % 100}", "user": f"user{i % 1000}", "idx": i},
                    "author": f"user{i % 7}",
                    "rows": [(str(uuid.uuid4()), "user" if j % 2 == 0 else "assistant", f"[{i}:{j}] {TEXT}",
                              iso(t + timedelta(milliseconds=j)), None, None, None, None, None, None,
                              f"user{i % 7}") for j in range(PER_SESSION)]})
    return out


def workload(store, n: int) -> dict:
    """The sessions workload on one store; returns ``{metric: ms}`` and load times."""
    out: dict = {}
    t0 = time.perf_counter()
    ids = []
    for start in range(0, n, 1000):
        batch = records(start, min(n, start + 1000))
        store.insert_records(batch)
        ids += [r["id"] for r in batch]
    out["bulk_load_s"] = round(time.perf_counter() - t0, 1)
    long = store.create(title="1k messages")
    for start in range(0, 1000, 250):
        store.append_messages(long, [{"role": "user", "content": f"{start + j} {TEXT}"} for j in range(250)])
    store.search("warmup")  # SQLite indexes its backlog on the first search; PostgreSQL indexes on write
    assert store.count(filter_metadata={"project": "p7"}) == n // 100
    out["ms"] = {
        "list_sessions(limit=50)": median_ms(lambda k: store.summaries(limit=50), 100),
        "list_sessions(filter_metadata 1%, limit=50)":
            median_ms(lambda k: store.summaries(filter_metadata={"project": f"p{k % 100}"}), 100),
        "list_sessions(author=..., limit=50)": median_ms(lambda k: store.summaries(author=f"user{k % 7}"), 100),
        "count(filter_metadata 1%)": median_ms(lambda k: store.count(filter_metadata={"project": f"p{k % 100}"}),
                                               50),
        "get_session_metadata": median_ms(lambda k: store.get_metadata(ids[(k * 7919) % n]), 500),
        "load_session (10 messages)": median_ms(lambda k: store.get(ids[(k * 7919) % n]), 300),
        "append_message": median_ms(lambda k: store.append_message(long, "user", "appended"), 500),
        "history(limit=50) of a 1,000-message session": median_ms(lambda k: store.history(long, limit=50), 200),
        "search (one session's message)": median_ms(lambda k: store.search(f"[{k * 977 % n}:3]"), 30),
        "search (common word, limit=20)": median_ms(lambda k: store.search("consectetur"), 10, warmup=1),
    }
    return out


def _writer(url: str, shared: str, worker: int, count: int, start_at: float, out) -> None:
    store = open_store(url, author=f"writer{worker}")
    own = store.create(title=f"writer {worker}")
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    for i in range(count):
        store.append_message(shared, "user", f"writer {worker} shared {i}")
        store.append_message(own, "user", f"writer {worker} own {i}")
    out.put((worker, own, time.perf_counter() - t0))
    store.close()


def concurrent(url: str, writers: int, count: int) -> dict:
    store = open_store(url)
    shared = store.create(title="shared")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # every process connected and waiting
    procs = [ctx.Process(target=_writer, args=(url, shared, w, count, start_at, queue)) for w in range(writers)]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=1))
        except Exception:  # queue.Empty: make sure nobody died
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a writer process failed (exit codes {dead})") from None
    for p in procs:
        p.join()
    wall = max(r[2] for r in results)
    expected = writers * count
    summaries = {s["id"]: s["message_count"] for s in store.summaries(limit=None)}
    stored_shared = len(store.messages(shared))
    lost = (expected - stored_shared) + sum(count - len(store.messages(own)) for _, own, _ in results)
    lost += abs(summaries[shared] - stored_shared)
    store.close()
    return {"writers": writers, "appends": 2 * expected, "wall_s": round(wall, 2),
            "messages_per_s": round(2 * expected / wall), "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--appends", type=int, default=500, help="per writer, to each of its two sessions")
    parser.add_argument("--skip-big", action="store_true", help="only the concurrent appends")
    args = parser.parse_args()

    from pg import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="oblix-bench-stores-"))
    server = PostgresServer.start(fsync=True)
    started = time.perf_counter()
    result: dict = {"ratio": "postgresql_ms / sqlite_ms"}
    try:
        urls = {"sqlite": lambda name: f"sqlite:{work / name}.db",
                "postgresql": lambda name: server.new_schema_url(name)}
        if not args.skip_big:
            found = {}
            for engine, url in urls.items():
                store = open_store(url("big"))
                found[engine] = workload(store, args.sessions)
                store.close()
            result["load_s"] = {e: found[e]["bulk_load_s"] for e in found}
            print(json.dumps({"partial": found}), file=sys.stderr, flush=True)  # kept even if a later step fails
            result["rows"] = [{"metric": m, "sqlite_ms": round(found["sqlite"]["ms"][m], 3),
                               "postgresql_ms": round(found["postgresql"]["ms"][m], 3),
                               "ratio": round(found["postgresql"]["ms"][m] / found["sqlite"]["ms"][m], 2)}
                              for m in found["sqlite"]["ms"]]
        conc = {engine: concurrent(url("conc"), args.writers, args.appends) for engine, url in urls.items()}
        conc["throughput_ratio"] = round(conc["postgresql"]["messages_per_s"] / conc["sqlite"]["messages_per_s"], 2)
        result["concurrent"] = conc
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["data"] = {"sessions": args.sessions, "messages_per_session": PER_SESSION}
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "load_avg_1m": round(os.getloadavg()[0], 2)}
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
