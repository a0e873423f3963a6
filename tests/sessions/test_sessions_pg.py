"""The PostgreSQL engine itself: migrations, many processes writing at once, the pool, URLs and secrets.

(The store's semantics are tested on both engines by test_sessions*.py through the parametrised ``store``
fixture; these are what only a shared server has.)
"""
from __future__ import annotations

import os

import pytest
from stores import row_counts, run_processes, sql

from oblix_nb.sessions import open_store
from oblix_nb.sessions.postgres import migrations as pg_migrations


def _append_worker(url: str, shared: str, worker: int, count: int) -> None:
    store = open_store(url, author=f"worker{worker}")
    try:
        own = store.create(title=f"own {worker}")
        for i in range(count):
            store.append_message(shared, "user", f"worker {worker} message {i}")
            store.append_message(own, "assistant", f"reply {i}", model_id=f"m{worker}")
        store.append_messages(shared, [{"role": "user", "content": f"worker {worker} batch {j}"} for j in range(5)])
    finally:
        store.close()


def _open_worker(url: str, worker: int) -> None:
    store = open_store(url)
    try:
        store.create(title=f"from worker {worker}")
    finally:
        store.close()


def _metadata_worker(url: str, session_id: str, worker: int, count: int) -> None:
    store = open_store(url)
    try:
        for i in range(count):
            assert store.update_metadata(session_id, {f"w{worker}": i})
    finally:
        store.close()


@pytest.mark.slow
def test_eight_processes_append_at_once_and_nothing_is_lost(pg_url):
    store = open_store(pg_url)
    shared = store.create(title="shared")
    per_worker = 60

    run_processes(_append_worker, [(pg_url, shared, w, per_worker) for w in range(8)])

    try:
        messages = store.messages(shared)
        assert len(messages) == 8 * (per_worker + 5)
        counts = {s["id"]: s["message_count"] for s in store.summaries(limit=None)}
        assert counts[shared] == len(messages)  # the counter lost no update
        assert sorted(counts.values()) == [per_worker] * 8 + [len(messages)]
        assert len({m["id"] for m in messages}) == len(messages)
        for w in range(8):  # each worker's messages are all there, in its order
            mine = [m["content"] for m in messages if m["content"].startswith(f"worker {w} ")]
            assert mine == [f"worker {w} message {i}" for i in range(per_worker)] + \
                [f"worker {w} batch {j}" for j in range(5)]
        assert row_counts(store)["messages"] == 8 * (2 * per_worker + 5)
        authors = dict(sql(store, "SELECT author, count(*) FROM messages GROUP BY author"))
        assert authors == {f"worker{w}": 2 * per_worker + 5 for w in range(8)}
        assert [r["id"] for r in store.search("worker 3 batch")] == [shared]
    finally:
        store.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_url):
    run_processes(_open_worker, [(pg_url, w) for w in range(4)])

    store = open_store(pg_url)
    try:
        assert sorted(s["title"] for s in store.summaries()) == [f"from worker {w}" for w in range(4)]
        assert sql(store, "SELECT version FROM oblix_schema") == [(pg_migrations.LATEST_VERSION,)]
    finally:
        store.close()


def test_concurrent_metadata_updates_lose_no_key(pg_url):
    store = open_store(pg_url)
    session_id = store.create(metadata={"keep": True})
    run_processes(_metadata_worker, [(pg_url, session_id, w, 25) for w in range(4)])
    try:
        assert store.get_metadata(session_id) == {"keep": True, **{f"w{w}": 24 for w in range(4)}}
        assert [s["id"] for s in store.summaries(filter_metadata={"w3": 24, "keep": True})] == [session_id]
    finally:
        store.close()


def test_migrations_are_numbered_and_a_newer_schema_is_refused(pg_url):
    versions = [v for v, _ in pg_migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    store = open_store(pg_url)
    store.close()
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pg_migrations.migrate(conn) == 0  # up to date: nothing to do
        conn.execute("UPDATE oblix_schema SET version = %s", (pg_migrations.LATEST_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        open_store(pg_url)


def test_failed_migration_leaves_nothing(pg_url, monkeypatch):
    monkeypatch.setattr(pg_migrations, "MIGRATIONS", [*pg_migrations.MIGRATIONS,
                                                      (pg_migrations.LATEST_VERSION + 1, "SELECT no_such_fn()")])
    monkeypatch.setattr(pg_migrations, "LATEST_VERSION", pg_migrations.LATEST_VERSION + 1)
    import psycopg

    with pytest.raises(psycopg.errors.UndefinedFunction):
        open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pg_migrations.schema_version(conn) == 0  # DDL rolled back with the failed step
        assert conn.execute("SELECT to_regclass('sessions')").fetchone()[0] is None


def test_store_keeps_working_in_a_forked_child(pg_url):
    store = open_store(pg_url)
    session_id = store.create(title="before fork")
    pid = os.fork()
    if pid == 0:  # child: the pool must be the child's own
        code = 1
        try:
            store.append_message(session_id, "user", "from the child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        store.append_message(session_id, "user", "from the parent")
        assert [m["content"] for m in store.messages(session_id)] == ["from the child", "from the parent"]
    finally:
        store.close()


def test_urls_and_errors_never_show_the_password(pg_server):
    from oblix_nb.sessions.postgres.codec import redact

    secret = "s3cr3t-pw"
    assert secret not in redact(f"postgresql://u:{secret}@h:5/db")
    assert secret not in redact(f"postgresql://u@h/db?password={secret}&sslmode=disable")
    store = open_store(pg_server.url.replace("oblix@", f"oblix:{secret}@"))  # trust auth: any password
    try:
        assert secret not in repr(store) and secret not in store.url and "***" in store.url
    finally:
        store.close()
    from oblix_nb.errors import StorageError

    with pytest.raises(StorageError) as info:  # no raw psycopg error escapes (issue 20, item 7)
        open_store(f"postgresql://oblix:{secret}@127.0.0.1:1/postgres")
    assert secret not in str(info.value)


def test_client_selects_the_engine_from_the_url(pg_url, tmp_path, monkeypatch):
    from oblix_nb import OblixClient

    client = OblixClient(home=tmp_path, database_url=pg_url)
    assert client.sessions.engine == "postgresql"
    client.sessions.close()
    monkeypatch.setenv("OBLIX_DATABASE_URL", pg_url)
    client = OblixClient(home=tmp_path)
    assert client.sessions.engine == "postgresql"
    client.sessions.close()
    client = OblixClient(home=tmp_path, database_url=f"sqlite:{tmp_path / 'x.db'}")
    assert client.sessions.engine == "sqlite" and (tmp_path / "x.db").exists()
    client.sessions.close()
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        OblixClient(home=tmp_path, database_url="mysql://u:pw@h/db")
