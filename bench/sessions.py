"""Session store benchmark: the SQLite SessionStore against the original SDK's one-JSON-file-per-session store.

    python bench/sessions.py [--sessions 100000] [--baseline-sessions 10000] [--dir DIR] [--keep]

Prints one JSON document: ``rows`` of ``{"metric", "ours_ms", "baseline_ms", "ratio", "target_ms", "ok"}``
where ``ratio`` = baseline_ms / ours_ms (how many times faster the SQLite store is) and ``ok`` says whether
``ours_ms`` meets ``target_ms``. Latencies are medians of repeated calls; "create" rows are wall-clock totals,
the best of ``--runs`` runs on fresh databases (their CPU time is reported under ``data.create_cpu_ms``).

Data: ``--sessions`` sessions of 10 messages (~190 characters each, like the Oblix 0.1.3 fixture) with
metadata ``{"project": f"p{i % 100}", "user": ...}``, so a project filter matches 1%. That database is
bulk-loaded through the store's own insert path (``_insert_session``, one transaction per 1,000 sessions);
the "create 10,000 x 10" figures use only the public API (``create`` + ``append_message`` per message, or
``create`` + ``append_messages``) on fresh databases. The baseline is a faithful model of the original SDK's
store (``BaselineStore``): listing reads and parses every file, then sorts; appending reads the whole file,
adds the message and rewrites it (``json.dump(indent=2)``). It is measured at ``--baseline-sessions``
sessions (and at 1,000- and 100,000-message sessions for appends); its "create" figures are measured on
the first ``--baseline-create`` sessions (one ``save_message`` per message) and on the rest (each file
written once with its messages), scaled linearly to ``--create-sessions``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oblix_nb._util import iso  # noqa: E402
from oblix_nb.sessions import SessionStore  # noqa: E402
from oblix_nb.sessions.store import _update_stamp  # noqa: E402

TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.")
MESSAGES_PER_SESSION = 10
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def metadata_for(i: int) -> dict:
    return {"project": f"p{i % 100}", "user": f"user{i % 1000}", "idx": i}


def content(i: int, j: int) -> str:
    return f"[{i}:{j}] {TEXT}"


def role(j: int) -> str:
    return "user" if j % 2 == 0 else "assistant"


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    """Median wall time of ``fn(k)`` (k = call number) in milliseconds."""
    for k in range(warmup):
        fn(k)
    times = []
    for k in range(repeat):
        t0 = time.perf_counter_ns()
        fn(k)
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def total_ms(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def best_create_ms(create, path: Path, n: int, runs: int) -> tuple[float, float]:
    """Best wall time (ms) of ``runs`` runs of ``create(store, n)``, each on a fresh database at ``path``,
    and that run's CPU time (ms): the machine is shared, so the best run is the least disturbed one."""
    best = (float("inf"), 0.0)
    for _ in range(runs):
        store = SessionStore(path)
        cpu = time.process_time()
        wall = total_ms(lambda: create(store, n))
        best = min(best, (wall, (time.process_time() - cpu) * 1000))
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return best


# ---------------------------------------------------------------------------------------------- the baseline
class BaselineStore:
    """The original Oblix SDK's session storage: ``<dir>/<session_id>.json`` per session, rewritten whole."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.json"

    def _load(self, session_id: str) -> dict:
        with open(self._path(session_id), encoding="utf-8") as f:
            return json.load(f)

    def _save(self, session: dict) -> None:
        with open(self._path(session["id"]), "w", encoding="utf-8") as f:
            json.dump(session, f, indent=2)

    def create_session(self, title=None, initial_context=None, metadata=None, messages=None) -> str:
        session_id = str(uuid.uuid4())
        now = datetime.now(timezone.utc).isoformat()
        self._save({"id": session_id, "created_at": now, "updated_at": now,
                    "title": title or f"Session {session_id[:8]}", "messages": messages or [],
                    "context": initial_context or {}, "metadata": metadata or {}})
        return session_id

    def save_message(self, session_id: str, message: str, role: str) -> dict:
        session = self._load(session_id)
        now = datetime.now(timezone.utc).isoformat()
        entry = {"id": str(uuid.uuid4()), "role": role, "content": message, "timestamp": now}
        session["messages"].append(entry)
        session["updated_at"] = now
        self._save(session)
        return entry

    def list_sessions(self, limit: int = 50, filter_metadata: dict = None) -> list:
        sessions = []
        for name in os.listdir(self.dir):
            if not name.endswith(".json"):
                continue
            with open(self.dir / name, encoding="utf-8") as f:
                session = json.load(f)
            metadata = session.get("metadata", {})
            if filter_metadata and any(metadata.get(k) != v for k, v in filter_metadata.items()):
                continue
            sessions.append({"id": session["id"], "title": session.get("title"),
                             "created_at": session["created_at"], "updated_at": session["updated_at"],
                             "message_count": len(session.get("messages", [])), "metadata": metadata})
        sessions.sort(key=lambda s: s["updated_at"], reverse=True)
        return sessions[:limit] if limit is not None else sessions

    def get_session_metadata(self, session_id: str) -> dict:
        return self._load(session_id).get("metadata", {})


# ---------------------------------------------------------------------------------------------- building data
def create_per_message(store: SessionStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        session_id = store.create(title=f"Session {i}", metadata=metadata_for(i))
        for j in range(MESSAGES_PER_SESSION):
            store.append_message(session_id, role(j), content(i, j))
        ids.append(session_id)
    return ids


def create_batched(store: SessionStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        session_id = store.create(title=f"Session {i}", metadata=metadata_for(i))
        store.append_messages(session_id, [{"role": role(j), "content": content(i, j)}
                                           for j in range(MESSAGES_PER_SESSION)])
        ids.append(session_id)
    return ids


def bulk_load(store: SessionStore, n: int, chunk: int = 1000) -> list[str]:
    """``n`` sessions of 10 messages through the store's insert path, 1,000 sessions per transaction."""
    ids = []
    for start in range(0, n, chunk):
        with store._write() as conn:
            for i in range(start, min(n, start + chunk)):
                t = EPOCH + timedelta(seconds=i)
                session_id = str(uuid.uuid4())
                rows = [(str(uuid.uuid4()), role(j), content(i, j), iso(t + timedelta(milliseconds=j)),
                         None, None, None, None, None, None) for j in range(MESSAGES_PER_SESSION)]
                store._insert_session(conn, session_id, f"Session {i}", iso(t),
                                      _update_stamp(t + timedelta(milliseconds=MESSAGES_PER_SESSION)),
                                      {}, metadata_for(i), rows)
                ids.append(session_id)
    return ids


def grow(store: SessionStore, session_id: str, count: int, batch: int = 1000) -> None:
    for start in range(0, count, batch):
        store.append_messages(session_id, [{"role": role(j), "content": content(-1, j)}
                                           for j in range(start, min(count, start + batch))])


# ---------------------------------------------------------------------------------------------- main
def row(metric: str, ours_ms: float, baseline_ms, target_ms) -> dict:
    return {"metric": metric, "ours_ms": round(ours_ms, 4),
            "baseline_ms": None if baseline_ms is None else round(baseline_ms, 3),
            "ratio": None if baseline_ms is None else round(baseline_ms / ours_ms, 1),
            "target_ms": target_ms, "ok": None if target_ms is None else ours_ms <= target_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--baseline-sessions", type=int, default=10_000)
    parser.add_argument("--create-sessions", type=int, default=10_000)
    parser.add_argument("--baseline-create", type=int, default=2_000,
                        help="baseline sessions built one message at a time (the rest are written whole)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each 'create' figure (best is kept)")
    parser.add_argument("--dir", help="work folder (default: a new temp folder, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="oblix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, info = [], {}
    n_create, n_base, n_big = args.create_sessions, args.baseline_sessions, args.sessions
    try:
        # -- creating sessions through the public API, on fresh databases (best of --runs)
        ours_create, ours_create_cpu = best_create_ms(create_per_message, work / "create.db", n_create,
                                                      args.runs)
        ours_batched, ours_batched_cpu = best_create_ms(create_batched, work / "create.db", n_create,
                                                        args.runs)
        info["create_cpu_ms"] = {"append_message": round(ours_create_cpu),
                                 "append_messages": round(ours_batched_cpu)}

        # -- the baseline, built with its own API: the first --baseline-create sessions one message at a time
        # (its per-message "create" figure), the rest written whole (its best case, the "batched" figure);
        # both scaled linearly to --create-sessions
        base = BaselineStore(work / "baseline")
        base_ids: list[str] = []
        now = datetime.now(timezone.utc).isoformat()

        def base_create(first: int, last: int) -> None:
            for i in range(first, last):
                session_id = base.create_session(title=f"Session {i}", metadata=metadata_for(i))
                for j in range(MESSAGES_PER_SESSION):
                    base.save_message(session_id, content(i, j), role(j))
                base_ids.append(session_id)

        def base_create_whole(first: int, last: int) -> None:
            for i in range(first, last):
                base_ids.append(base.create_session(
                    title=f"Session {i}", metadata=metadata_for(i),
                    messages=[{"id": str(uuid.uuid4()), "role": role(j), "content": content(i, j),
                               "timestamp": now} for j in range(MESSAGES_PER_SESSION)]))

        n_slow = min(args.baseline_create, n_base)
        base_create_ms = total_ms(lambda: base_create(0, n_slow)) * n_create / n_slow
        base_batched_ms = total_ms(lambda: base_create_whole(n_slow, n_base)) * n_create / (n_base - n_slow)

        base_list = median_ms(lambda k: base.list_sessions(limit=50), repeat=5, warmup=1)
        base_filter = median_ms(lambda k: base.list_sessions(filter_metadata={"project": f"p{k % 100}"}),
                                repeat=5, warmup=1)
        base_filter_all = median_ms(lambda k: base.list_sessions(limit=None,
                                                                 filter_metadata={"project": f"p{k % 100}"}),
                                    repeat=5, warmup=1)
        base_meta = median_ms(lambda k: base.get_session_metadata(base_ids[(k * 7919) % len(base_ids)]),
                              repeat=500)
        long_1k = base.create_session(title="long", messages=[
            {"id": str(uuid.uuid4()), "role": role(j), "content": content(-1, j), "timestamp": now}
            for j in range(1000)])
        base_append_1k = median_ms(lambda k: base.save_message(long_1k, "appended", "user"), repeat=50)
        long_100k = base.create_session(title="longer", messages=[
            {"id": str(uuid.uuid4()), "role": role(j), "content": content(-1, j), "timestamp": now}
            for j in range(100_000)])
        base_append_100k = median_ms(lambda k: base.save_message(long_100k, "appended", "user"), repeat=3,
                                     warmup=0)
        shutil.rmtree(work / "baseline")

        # -- the big database
        store = SessionStore(work / "sessions.db")
        t0 = time.perf_counter()
        ids = bulk_load(store, n_big)
        info["bulk_load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        s1k = store.create(title="1k messages")
        grow(store, s1k, 1000)
        s100k = store.create(title="100k messages")
        grow(store, s100k, 100_000)
        info["grow_long_sessions_s"] = round(time.perf_counter() - t0, 1)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        info["db_mb"] = round((work / "sessions.db").stat().st_size / 2**20)

        ours_list = median_ms(lambda k: store.summaries(limit=50), repeat=200)
        ours_filter = median_ms(lambda k: store.summaries(filter_metadata={"project": f"p{k % 100}"}),
                                repeat=200)
        ours_filter_all = median_ms(lambda k: store.summaries(limit=None,
                                                              filter_metadata={"project": f"p{k % 100}"}),
                                    repeat=100)
        assert len(store.summaries(limit=None, filter_metadata={"project": "p7"})) == n_big // 100
        ours_meta = median_ms(lambda k: store.get_metadata(ids[(k * 7919) % len(ids)]), repeat=2000)
        ours_append_1k = median_ms(lambda k: store.append_message(s1k, "user", "appended"), repeat=500)
        ours_append_100k = median_ms(lambda k: store.append_message(s100k, "user", "appended"), repeat=500)
        ours_history = median_ms(lambda k: store.history(s100k, limit=1000), repeat=50)
        t0 = time.perf_counter()
        store.search("warmup")  # the first search indexes every message written so far
        info["search_first_call_indexing_s"] = round(time.perf_counter() - t0, 1)
        ours_search = median_ms(lambda k: store.search(f"[{k * 977 % n_big}:3]"), repeat=50)
        store.close()

        big, small = f"{n_big // 1000}k", f"{n_base // 1000}k"
        scale = f"[ours {big} sessions, baseline {small}]"
        rows = [
            row(f"list_sessions(limit=50) {scale}", ours_list, base_list, 5),
            row(f"list_sessions(filter_metadata=1% match, limit=50) {scale}", ours_filter, base_filter, 10),
            row(f"list_sessions(filter_metadata=1% match, limit=None) {scale}", ours_filter_all,
                base_filter_all, None),
            row(f"get_session_metadata {scale}", ours_meta, base_meta, 0.5),
            row("append_message to a 1,000-message session", ours_append_1k, base_append_1k, 0.5),
            row("append_message to a 100,000-message session", ours_append_100k, base_append_100k, 0.5),
            row("history(limit=1000) of a 100,000-message session", ours_history, None, None),
            row(f"search (one session's message among {n_big * MESSAGES_PER_SESSION // 1000}k)", ours_search,
                None, None),
            row(f"create {n_create // 1000}k sessions x 10 messages (append_message per message, total)",
                ours_create, base_create_ms, 3000),
            row(f"create {n_create // 1000}k sessions x 10 messages (append_messages per session, total)",
                ours_batched, base_batched_ms, 3000),
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps({
        "ratio": "baseline_ms / ours_ms",
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "data": {"sessions": n_big, "messages_per_session": MESSAGES_PER_SESSION,
                 "baseline_sessions": n_base, "create_sessions": n_create,
                 "baseline_create_scaled_from": {"append_message": n_slow, "append_messages": n_base - n_slow},
                 **info},
        "rows": rows,
        "all_ok": all(r["ok"] is not False for r in rows),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
