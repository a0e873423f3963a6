"""Engine-aware probes for the store tests (the ``store`` fixture runs each test on SQLite and PostgreSQL).

``row_counts(store)``          {"sessions", "messages", "session_meta"} row counts (on PostgreSQL, session_meta
                               counts the keys of the JSONB ``meta`` index column: the same information).
``statements_during(store, f)`` the SQL statements ``f()`` runs on the store's connections.
``tables_read_during(store, f)`` the tables those statements read.
``plan(store, sql, params)``    the query plan text (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with
                               sequential scans disabled, so an index that can serve the query shows up).
``sql(store, query, params)``   rows of a raw query, on either engine.
``run_processes(target, args)`` run ``target(*args)`` in one spawned process per args tuple; all must exit 0.
"""
from __future__ import annotations

import multiprocessing
import re
import sqlite3
from contextlib import contextmanager


def sql(store, query: str, params=()) -> list[tuple]:
    if store.engine == "sqlite":
        with store._read() as conn:
            return conn.execute(query, params).fetchall()
    with store._conn() as conn:
        return conn.execute(query.replace("?", "%s"), params).fetchall()


def row_counts(store) -> dict:
    counts = {t: sql(store, f"SELECT count(*) FROM {t}")[0][0] for t in ("sessions", "messages")}
    if store.engine == "sqlite":
        counts["session_meta"] = sql(store, "SELECT count(*) FROM session_meta")[0][0]
    else:
        counts["session_meta"] = sql(store, "SELECT coalesce(sum((SELECT count(*) FROM jsonb_object_keys(meta))), 0)"
                                            " FROM sessions")[0][0]
    return counts


@contextmanager
def _pg_trace(seen: list):
    import psycopg

    real_execute, real_many = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def execute(self, query, params=None, **kwargs):
        seen.append(query if isinstance(query, str) else str(query))
        return real_execute(self, query, params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        seen.append(query if isinstance(query, str) else str(query))
        return real_many(self, query, params_seq, **kwargs)

    psycopg.Cursor.execute, psycopg.Cursor.executemany = execute, executemany
    try:
        yield
    finally:
        psycopg.Cursor.execute, psycopg.Cursor.executemany = real_execute, real_many


def statements_during(store, action) -> list[str]:
    seen: list[str] = []
    if store.engine == "sqlite":
        store._conn.set_trace_callback(seen.append)
        try:
            action()
        finally:
            store._conn.set_trace_callback(None)
        return seen
    with _pg_trace(seen):
        action()
    return [s.strip() for s in seen]


def tables_read_during(store, action) -> set[str]:
    if store.engine == "sqlite":
        read: set[str] = set()

        def authorizer(code, arg1, arg2, db_name, trigger):
            if code == sqlite3.SQLITE_READ:
                read.add(arg1)
            return sqlite3.SQLITE_OK

        store._conn.set_authorizer(authorizer)
        try:
            action()
        finally:
            store._conn.set_authorizer(None)
        return read
    return {name for s in statements_during(store, action)
            for name in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", s, flags=re.IGNORECASE)}


def plan(store, query: str, params=()) -> str:
    if store.engine == "sqlite":
        return " | ".join(row[-1] for row in sql(store, "EXPLAIN QUERY PLAN " + query, params))
    with store._conn() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        return " | ".join(row[0] for row in conn.execute("EXPLAIN " + query.replace("?", "%s"), params))


def run_processes(target, args_list, timeout=240) -> None:
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=target, args=args) for args in args_list]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=timeout)
    for p in processes:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes)
