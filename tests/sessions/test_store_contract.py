"""Issue 17: the store contract (sessions/base.py), engine-neutral code that never asks which engine it has,
and the SQLite engine's background maintainer of the stats tables."""
from __future__ import annotations

import ast
import inspect
import re
import time
from pathlib import Path

import pytest
from stores import sql

from oblix_nb.sessions import SessionStore, SessionStoreBase, open_store
from oblix_nb.sessions.sqlite import stats as sqlite_stats

PACKAGE = Path(__file__).resolve().parents[2] / "oblix_nb"
ENGINE_FOLDERS = (PACKAGE / "sessions" / "sqlite", PACKAGE / "sessions" / "postgres")


def _public(cls) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


def test_both_engines_implement_exactly_the_documented_contract():
    from oblix_nb.sessions.postgres.store import PostgresSessionStore

    assert SessionStore.__name__ == "SqliteSessionStore"
    for cls in (SessionStore, PostgresSessionStore):
        assert issubclass(cls, SessionStoreBase)
        assert not getattr(cls, "__abstractmethods__", None), cls.__abstractmethods__
        # no public method exists on one engine only: the base declares the whole interface
        assert _public(cls) - _public(SessionStoreBase) <= {"engine"}, _public(cls) - _public(SessionStoreBase)
    assert _public(SessionStore) == _public(PostgresSessionStore)
    undocumented = [name for name in _public(SessionStoreBase)
                    if callable(getattr(SessionStoreBase, name)) and not getattr(SessionStoreBase, name).__doc__]
    assert not undocumented
    assert len([n for n in _public(SessionStoreBase) if callable(getattr(SessionStoreBase, n))]) >= 34
    with pytest.raises(TypeError):
        SessionStoreBase()  # abstract


def _names_a_store(node: ast.AST) -> bool:
    """``store``, ``sessions``, ``x.store``, ``self.sessions``, ``client().sessions``...: an expression that names a
    session store by the names the package gives it."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name is not None and name.lstrip("_") in ("store", "sessions", "target", "source")


def test_no_code_outside_the_engine_folders_knows_the_engine():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if any(folder in path.parents for folder in ENGINE_FOLDERS):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool") for n in names):
                    offenders.append(f"{path}: imports {names}")
            if isinstance(node, ast.Attribute) and node.attr == "engine" and isinstance(node.ctx, ast.Load) \
                    and _names_a_store(node.value):  # (client.engine is the execution engine, not the store's)
                offenders.append(f"{path}:{node.lineno}: reads a store's .engine")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("store", "sessions", "source", "target") and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                offenders.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
        if re.search(r"sessions\._\w+", text.replace("sessions._sums", "")):
            offenders.append(f"{path}: calls a private store member")
    assert not offenders, offenders


def test_public_url_and_worker_spec_never_carry_a_password(store_url):
    secret = "s3cr3t-pw"
    if store_url.startswith("postgresql"):
        url = store_url.replace("postgresql://", f"postgresql://oblix_user_x:{secret}@", 1) \
            if "@" not in store_url else re.sub(r"//([^:@/]+)@", rf"//\1:{secret}@", store_url)
        url += ("&" if "?" in url else "?") + f"password={secret}"
        from oblix_nb.sessions.postgres.codec import without_password

        # what a worker opens: the same database, user, host and options, the password removed
        assert secret not in without_password(url)
        assert without_password(url).split("?")[0] == re.sub(f":{secret}@", "@", url).split("?")[0]
        store = open_store(store_url)
    else:
        url = store_url
        store = open_store(url)
    try:
        for text in (store.public_url(), store.url, repr(store), repr(store.worker_spec())):
            assert secret not in text
        assert store.worker_spec() == {"database_url": store.public_url(), "author": store.author}
        reopened = open_store(store.public_url())
        try:
            sid = store.create("shared")
            assert reopened.exists(sid)
        finally:
            reopened.close()
    finally:
        store.close()


def test_usage_by_session_shows_titles_as_stored(store):
    pytest.importorskip("pandas")
    from oblix_nb.sessions import usage

    titles = ["plain", "with\x00nul", "quote \" and \\ back", "ünïcode ✓"]
    ids = [store.create(title) for title in titles]
    for sid in ids:
        usage.record(store, {"model_id": "m", "session_id": sid, "request_id": sid,
                             "metrics": {"input_tokens": 1, "cost_usd": 0.5}}, "local")
    frame = usage.usage_df(store, by="session")
    assert dict(zip(frame["session_id"], frame["title"])) == dict(zip(ids, titles))
    assert store.session_titles(ids) == dict(zip(ids, titles))
    assert store.session_titles([ids[0], "00000000-0000-4000-8000-000000000000"]) == {ids[0]: titles[0]}
    assert usage.spent(store) == pytest.approx(2.0)


def test_settings_round_trip_on_both_engines(store):
    store.set_setting("alias.a\x00b", {"x": [1, 2]})
    store.set_setting("alias.c", 3)
    store.set_setting("other", True)
    assert store.get_setting("alias.a\x00b") == {"x": [1, 2]}
    assert store.settings("alias.") == {"alias.a\x00b": {"x": [1, 2]}, "alias.c": 3}
    assert list(store.settings()) == sorted(store.settings())
    assert store.delete_setting("alias.c") and not store.delete_setting("alias.c")
    assert store.get_setting("alias.c", "gone") == "gone"
    with pytest.raises(TypeError):
        store.set_setting("bad", object())


def _stats_pending(store) -> bool:
    from oblix_nb.sessions.sqlite.migrations import STATS_PENDING

    return bool(sql(store, STATS_PENDING)[0][0])


def _bulk(store, sessions: int, per_session: int) -> None:
    for s in range(sessions):
        sid = store.create(f"bulk {s}")
        batch = []
        for i in range(per_session // 2):
            batch.append({"role": "user", "content": f"q {i}", "request_id": f"r{s}-{i}"})
            batch.append({"role": "assistant", "content": f"a {i}", "request_id": f"r{s}-{i}", "model_id": f"m{i % 3}",
                          "metrics": {"time_to_first_token": 0.1 + i / 1000, "tokens_per_second": 20 + i,
                                      "input_tokens": 5, "output_tokens": 7}})
        store.append_messages(sid, batch)


def test_background_maintainer_fills_the_stats_tables_after_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_stats, "STATS_BACKGROUND_CHUNK_ROWS", 97)
    chunks = []
    real_chunk = SessionStore._stats_chunk

    def spy(self, rows):
        worked = real_chunk(self, rows)
        if worked:
            chunks.append(rows)  # the size of each chunk that indexed something
        return worked

    monkeypatch.setattr(SessionStore, "_stats_chunk", spy)
    store = SessionStore(tmp_path / "s.db")
    try:
        _bulk(store, 12, 100)
        deadline = time.monotonic() + 30
        while _stats_pending(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        # filled without any stats call, in the background's small chunks only
        assert not _stats_pending(store)
        assert chunks and set(chunks) == {97}
        assert sql(store, "SELECT count(*) FROM reply_stats")[0][0] == 600
        stats = {g["key"]: g for g in store.stats("model")}
        assert set(chunks) == {97}  # the stats call found nothing left to do
        assert sum(g["requests"] for g in stats.values()) == 600 and set(stats) == {"m0", "m1", "m2"}
        assert all(g["ttft_p50"] is not None for g in stats.values())
    finally:
        store.close()


def test_stats_are_complete_even_when_the_background_is_behind_or_off(tmp_path):
    store = SessionStore(tmp_path / "s.db")
    store.background_index = False  # nothing in the background: the stats call indexes everything itself
    try:
        _bulk(store, 5, 40)
        assert _stats_pending(store)
        stats = store.stats("model")
        assert sum(g["requests"] for g in stats) == 100 and not _stats_pending(store)
    finally:
        store.close()
    # a database left behind (closed before the background caught up) is brought up to date on open
    writer = SessionStore(tmp_path / "t.db")
    writer.background_index = False
    _bulk(writer, 5, 40)
    writer.close()
    reader = SessionStore(tmp_path / "t.db")
    try:
        deadline = time.monotonic() + 30
        while _stats_pending(reader) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _stats_pending(reader)
    finally:
        reader.close()


def test_storage_failures_in_the_usage_log_are_storage_errors(tmp_path):
    from oblix_nb.errors import StorageError
    from oblix_nb.sessions import usage

    store = SessionStore(tmp_path / "s.db")
    store.close()
    reopened = SessionStore(tmp_path / "s.db")
    reopened.read_only = "test: opened read-only"
    try:
        with pytest.raises(StorageError):
            usage.record(reopened, {"model_id": "m", "metrics": {}}, "local")
        with pytest.raises(StorageError):
            reopened.set_setting("k", 1)
    finally:
        reopened.close()
