"""The database itself: WAL and pragmas, numbered migrations, several processes and threads at once."""
from __future__ import annotations

import sqlite3
import threading

import pytest
from stores import run_processes

from oblix_nb.sessions import SessionStore
from oblix_nb.sessions.sqlite import migrations


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "home" / "sessions.db"


def _append_worker(path: str, session_id: str, worker: int, count: int) -> None:
    store = SessionStore(path)
    try:
        for i in range(count):
            store.append_message(session_id, "user", f"worker {worker} message {i}")
    finally:
        store.close()


def _open_worker(path: str, worker: int) -> None:
    store = SessionStore(path)
    try:
        store.create(title=f"from worker {worker}")
    finally:
        store.close()




# ---------------------------------------------------------------------------------------------- pragmas
def test_database_is_wal_with_the_documented_pragmas(db_path):
    store = SessionStore(db_path)
    try:
        assert db_path.exists()
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30000
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000
    finally:
        store.close()
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, seen by anyone
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------- migrations
def test_migrations_are_numbered_in_order():
    versions = [version for version, _ in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert migrations.LATEST_VERSION == versions[-1]
    for _, sql in migrations.MIGRATIONS:
        assert migrations.statements(sql)


def test_new_database_gets_the_latest_schema(db_path):
    SessionStore(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST_VERSION
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"sessions", "messages", "session_meta", "messages_fts", "titles_fts", "fts_progress",
                "sessions_by_updated", "messages_by_session", "session_meta_by_value"} <= names
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_reopening_an_existing_database_is_a_no_op(db_path):
    store = SessionStore(db_path)
    session_id = store.create(title="kept", metadata={"k": 1})
    store.append_message(session_id, "user", "hello")
    store.close()
    schema = sqlite3.connect(db_path).execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()

    statements: list[str] = []
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.set_trace_callback(statements.append)
    try:
        assert migrations.migrate(conn) == 0
    finally:
        conn.close()
    reopened = SessionStore(db_path)
    try:
        assert reopened.get(session_id)["messages"][0]["content"] == "hello"
        assert reopened.summaries(filter_metadata={"k": 1})[0]["id"] == session_id
    finally:
        reopened.close()

    assert statements == ["PRAGMA user_version"]  # no transaction, no DDL
    after = sqlite3.connect(db_path).execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert after == schema


def test_a_newer_schema_is_refused(db_path):
    SessionStore(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST_VERSION + 1}")
    conn.close()

    with pytest.raises(RuntimeError, match="newer"):
        SessionStore(db_path)


def test_a_failed_migration_leaves_the_database_unmigrated(db_path, monkeypatch):
    db_path.parent.mkdir(parents=True)
    broken = migrations.MIGRATIONS + [(migrations.LATEST_VERSION + 1, "CREATE TABLE extra (x);\nNOT SQL;\n")]
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    monkeypatch.setattr(migrations, "LATEST_VERSION", migrations.LATEST_VERSION + 1)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrations.migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(db_path):
    run_processes(_open_worker, [(str(db_path), w) for w in range(4)])

    store = SessionStore(db_path)
    try:
        assert sorted(s["title"] for s in store.summaries()) == [f"from worker {w}" for w in range(4)]
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST_VERSION
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- concurrency
@pytest.mark.slow
def test_four_processes_append_to_one_session(db_path):
    store = SessionStore(db_path)
    session_id = store.create(title="shared")
    store.close()

    run_processes(_append_worker, [(str(db_path), session_id, w, 250) for w in range(4)])

    store = SessionStore(db_path)
    try:
        messages = store.messages(session_id)
        assert len(messages) == 1000
        assert store.summaries()[0]["message_count"] == 1000
        assert len({m["id"] for m in messages}) == 1000
        for w in range(4):  # each worker's messages are all there, in its order
            mine = [m["content"] for m in messages if m["content"].startswith(f"worker {w} ")]
            assert mine == [f"worker {w} message {i}" for i in range(250)]
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert [r["id"] for r in store.search("worker 3 message")] == [session_id]
    finally:
        store.close()


def test_threads_share_one_store(db_path):
    store = SessionStore(db_path)
    session_id = store.create()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(100):
                store.append_message(session_id, "assistant", f"t{worker}-{i}")
                store.summaries(limit=5)
                store.history(session_id, limit=3)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(store.messages(session_id)) == 400
        assert store.summaries()[0]["message_count"] == 400
    finally:
        store.close()


def test_close_is_idempotent(db_path):
    store = SessionStore(db_path)
    store.close()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.summaries()


def test_a_database_from_a_newer_oblix_nb_is_refused_not_downgraded(tmp_path):
    import sqlite3

    from oblix_nb.sessions.sqlite.migrations import LATEST_VERSION, migrate, refuse_newer

    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this oblix_nb"):
        migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION + 1  # left as it was
    conn.close()
    refuse_newer(3, 3)  # the same version is fine
    with pytest.raises(RuntimeError, match=r"version 4 is newer .*\(knows up to 3\)"):
        refuse_newer(4, 3)
