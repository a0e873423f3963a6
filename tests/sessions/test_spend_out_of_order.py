"""The spend cache (sessions/usage.spent) under writers that commit out of seq order (issue 20, item 9): on
PostgreSQL a usage row takes its seq before it commits, so a row with a lower seq can become visible after a
higher one was summed; it must still be counted (it was missed for good)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oblix_nb.sessions import open_store, usage

ROOT = Path(__file__).resolve().parents[2]


def row(cost: float, i: int = 0) -> tuple:
    return (f"2026-01-01T00:00:{i % 60:02d}Z", None, f"q{i}", "m", "local", 1, 1, None, None, cost, None, 0)


def insert_sql(store) -> str:
    columns = ("author", *usage.USAGE_COLUMNS)
    return f"INSERT INTO usage_log ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


def test_a_row_committed_after_a_higher_one_is_counted(pg_url):
    import psycopg

    store = open_store(pg_url, author="ana")
    late = psycopg.connect(pg_url)  # another kernel, mid-transaction
    try:
        store.log_usage(row(1.0))
        assert usage.spent(store) == pytest.approx(1.0)
        late.execute(insert_sql(store), ("ana", *row(10.0)))  # takes the next seq, not committed yet
        store.log_usage(row(100.0))  # a higher seq, committed first
        assert usage.spent(store) == pytest.approx(101.0)
        late.commit()
        assert usage.spent(store) == pytest.approx(111.0)
        assert usage.spent(store, session_id=None) == pytest.approx(111.0)
    finally:
        late.close()
        store.close()


def test_the_settled_mark_advances_and_sums_stay_exact(pg_url, monkeypatch):
    monkeypatch.setattr(usage, "SETTLE_S", 0.05)
    monkeypatch.setattr(usage, "_OBSERVE_EVERY_S", 0.0)
    store = open_store(pg_url, author="bob")
    try:
        total = 0.0
        for i in range(30):
            store.log_usage(row(0.25 * (i + 1), i))
            total += 0.25 * (i + 1)
            assert usage.spent(store) == pytest.approx(total)
            time.sleep(0.01)
        time.sleep(0.1)
        assert usage.spent(store) == pytest.approx(total)
        mark, settled_total, _ = usage._sums[(store.url, store.author, None, None)]
        assert mark > 0 and settled_total > 0  # the tail summed on each call stays short
    finally:
        store.close()


WRITER = """
import sys
from oblix_nb.sessions import open_store
store = open_store(sys.argv[1], author="carol")
for i in range(int(sys.argv[2])):
    store.log_usage(("2026-01-01T00:00:00Z", None, f"w{i}", "m", "local", 1, 1, None, None, 0.01, None, 0))
store.close()
"""


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_concurrent_writer_processes_lose_nothing(engine, tmp_path, request):
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else f"sqlite:{tmp_path / 's.db'}"
    store = open_store(url, author="carol")
    writers, per = 4, 150
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(per)], env=env) for _ in range(writers)]
    try:
        while any(p.poll() is None for p in procs):  # the cache is read while the rows arrive
            usage.spent(store)
        assert all(p.returncode == 0 for p in procs)
        assert usage.spent(store) == pytest.approx(writers * per * 0.01)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        store.close()
