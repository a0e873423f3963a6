"""The PostgreSQL store through Debian's pgbouncer 1.18 (issue 20, item 4), in pool_mode transaction (which cannot
carry prepared statements: psycopg's automatic ones collided, ``prepared statement "_pg3_0" already exists``, and
the wrong statement could run) and in session mode: the pooler is detected at open (no automatic prepared
statements behind it); plus the ``?prepare_threshold=`` URL option."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oblix_nb.sessions import open_store

ROOT = Path(__file__).resolve().parents[2]


def test_concurrent_appends_and_every_kind_of_call_through_pgbouncer(pgbouncer):
    url = pgbouncer.new_database_url()
    store = open_store(url)  # migrates through the pooler
    errors: list[str] = []
    try:
        assert store.behind_proxy is True  # detected: no automatic prepared statements
        with store._conn() as conn:
            assert conn.prepare_threshold is None
        sids = [store.create(title=f"pooled {i}", metadata={"i": i}) for i in range(4)]

        def append(i: int) -> None:
            try:
                store.append_message(sids[i % 4], "user" if i % 2 else "assistant", f"message {i} apples",
                                     request_id=f"r{i}")
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(append, range(400)))
        assert errors == []
        assert sum(store.summary(sid)["message_count"] for sid in sids) == 400
        assert sum(len(store.messages(sid)) for sid in sids) == 400
        # every statement kind, each more often than psycopg's default prepare threshold (5)
        for i in range(8):
            assert store.update_metadata(sids[0], {"round": i})
            assert store.count(filter_metadata={"i": 1}) == 1
            assert len(store.summaries(limit=10)) == 4
            assert store.search("apples", limit=2)
            assert len(store.history(sids[1], limit=3)) == 3
            store.upsert_message(sids[2], "assistant", f"draft {i}", id="same-row", partial=True)
            store.log_usage((f"2026-01-01T00:00:0{i}Z", sids[0], f"q{i}", "m", "local", 1, 2, None, None, 0.5,
                             None, 0))
        assert store.usage_spend()[1] == pytest.approx(4.0)
        assert isinstance(store.stats(), list)
    finally:
        store.close()
    again = open_store(url)  # a second open (schema up to date) through the pooler
    try:
        assert again.count() == 4
    finally:
        again.close()


def test_migrate_command_through_pgbouncer(pgbouncer, tmp_path):
    source = open_store(f"sqlite:{tmp_path / 'a.db'}")
    for i in range(12):
        sid = source.create(title=f"s{i}")
        source.append_message(sid, "user", f"hello {i}")
    source.close()
    url = pgbouncer.new_database_url()
    for run in range(2):  # the second run re-verifies every session through the pooler
        done = subprocess.run([sys.executable, "-m", "oblix_nb", "migrate", "--from", f"sqlite:{tmp_path / 'a.db'}",
                               "--to", url, "--batch", "5", "--quiet"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["copied"], report["skipped"]) == ((12, 0) if run == 0 else (0, 12))


def test_prepare_threshold_url_option(pg_url):
    plain = open_store(pg_url)
    opted = open_store(pg_url + "&prepare_threshold=2")
    off = open_store(pg_url + "&Prepare_Threshold=none")
    try:
        assert plain.behind_proxy is False  # a direct connection keeps psycopg's default
        with plain._conn() as conn:
            assert conn.prepare_threshold == 5
        with opted._conn() as conn:
            assert conn.prepare_threshold == 2
        with off._conn() as conn:
            assert conn.prepare_threshold is None
        assert off.behind_proxy is None  # not probed: the URL decided
        sid = opted.create(title="opted in")
        for i in range(6):
            opted.append_message(sid, "user", f"m{i}")
        assert len(plain.messages(sid)) == 6
        assert "prepare_threshold=2" in opted.public_url()  # workers open the store the same way
    finally:
        plain.close()
        opted.close()
        off.close()
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(ValueError, match="prepare_threshold"):
            open_store(pg_url + f"&prepare_threshold={bad}")


class _Info:
    def __init__(self, hostaddr, port):
        self.hostaddr, self.port = hostaddr, port


class _Conn:
    """What behind_proxy reads: the server's own address and port, and the client's (libpq's conn.info)."""

    def __init__(self, server, client, fail=False):
        self.server, self.info, self.fail = server, _Info(*client), fail

    def execute(self, sql):
        if self.fail:
            raise RuntimeError("function inet_server_addr() does not exist")
        server = self.server

        class Result:
            def fetchone(self):
                return server
        return Result()


@pytest.mark.parametrize("server, client, expected", [
    (("127.0.0.1", 5432), ("127.0.0.1", "5432"), False),   # direct TCP
    ((None, None), ("", "5432"), False),                     # direct unix socket
    (("127.0.0.1", 5432), ("127.0.0.1", "6432"), True),     # pgbouncer on another port
    (("10.0.0.5", 5432), ("10.0.0.9", "5432"), True),       # a proxy host on the same port
    (("127.0.0.1", 5432), ("", "6432"), True),              # pgbouncer's unix socket
    ((None, None), ("127.0.0.1", "5432"), True),             # server sees a socket, we used TCP: something between
])
def test_behind_proxy_compares_both_ends(server, client, expected):
    from oblix_nb.sessions.postgres.connect import behind_proxy

    assert behind_proxy(_Conn(server, client)) is expected
    assert behind_proxy(_Conn(server, client, fail=True)) is True  # unsure: the safe side
