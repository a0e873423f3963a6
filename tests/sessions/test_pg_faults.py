"""The PostgreSQL store under faults (issue 20, items 5-9): a server that is down, restarted, read-only; roles
without privileges; bad URLs; row locks held elsewhere; passwords in URLs. Each fault gives a StorageError naming
the database (never a password) and what to grant or set; nothing waits long on the package's event loop."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import pytest

from oblix_nb import OblixClient, runtime
from oblix_nb.errors import StorageError
from oblix_nb.sessions import open_store

ROOT = Path(__file__).resolve().parents[2]


def full_text(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` shows, chained causes and contexts included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# ---------------------------------------------------------------------------------------------- outage (item 5)
def test_an_outage_never_stalls_the_package_loop_and_the_store_recovers(own_pg_server):
    store = open_store(own_pg_server.url)
    sid = store.create(title="outage")
    try:
        store.append_message(sid, "user", "before")
        own_pg_server.halt()

        async def checkpoints_while_down() -> tuple[float, list]:
            """Writes as the streaming checkpoints do (synchronously, on the loop) while a probe task measures
            how late the loop wakes it."""
            worst = 0.0
            stop = False

            async def probe():
                nonlocal worst
                while not stop:
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    worst = max(worst, time.perf_counter() - t - 0.01)

            task = asyncio.ensure_future(probe())
            await asyncio.sleep(0.05)  # the probe is running before the first write
            outcomes = []
            for i in range(8):
                t = time.perf_counter()
                try:
                    store.upsert_message(sid, "assistant", f"draft {i}", id="reply", partial=True)
                    outcomes.append(("stored", time.perf_counter() - t))
                except StorageError as exc:
                    outcomes.append((str(exc), time.perf_counter() - t))
                await asyncio.sleep(0.05)
            stop = True
            await task
            return worst, outcomes

        worst, outcomes = runtime.run(checkpoints_while_down())
        assert all(msg != "stored" for msg, _ in outcomes)
        assert all("127.0.0.1" in msg for msg, _ in outcomes)  # names the database
        # before: each write waited for the pool's 30 s timeout on the loop (generous bound for a loaded CI)
        assert max(took for _, took in outcomes) < 1.5, outcomes
        assert worst < 1.5

        t = time.perf_counter()  # off the loop too, a call fails at once while the server is known down
        with pytest.raises(StorageError, match="unreachable"):
            store.append_message(sid, "user", "while down")
        assert time.perf_counter() - t < 1.0

        own_pg_server.resume()
        deadline = time.monotonic() + 30
        while True:  # the background probe notices the server is back
            try:
                store.append_message(sid, "user", "after")
                break
            except StorageError:
                assert time.monotonic() < deadline, "the store did not recover within 30 s"
                time.sleep(0.2)
        for i in range(3):
            store.append_message(sid, "user", f"after {i}")
        assert [m["content"] for m in store.messages(sid)] == ["before", "after", "after 0", "after 1", "after 2"]
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- restart (item 6)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_appends_right_after_a_restart_succeed(own_pg_server, mode):
    store = open_store(own_pg_server.url.replace("/postgres", "/postgres?application_name=t") )
    sid = store.create(title="restart")
    try:
        # fill the pool: several connections in use at once, all of which the restart closes
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: store.append_message(sid, "user", f"before {i}"), range(40)))
        own_pg_server.halt(mode)
        own_pg_server.resume()
        for i in range(6):
            store.append_message(sid, "user", f"after {i}")  # none may fail: the server is up
        assert store.summary(sid)["message_count"] == 46
    finally:
        store.close()


def test_terminated_backends_are_replaced_without_failing_calls(pg_server):
    import psycopg

    name = f"oblix_t_{uuid.uuid4().hex[:6]}"
    store = open_store(f"{pg_server.new_schema_url()}&application_name={name}")
    sid = store.create(title="terminated")
    try:
        store.append_message(sid, "user", "before")
        with psycopg.connect(pg_server.url, autocommit=True) as admin:  # as an admin or idle timeout would
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = %s", (name,)).fetchone()[0]
        assert killed >= 1
        time.sleep(0.2)
        for i in range(5):
            store.append_message(sid, "user", f"after {i}")
        assert store.summary(sid)["message_count"] == 6
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- lock (item 9)
def test_a_row_lock_held_elsewhere_times_out_with_a_storage_error(pg_url):
    import psycopg

    from oblix_nb.sessions.postgres.store import LOCK_TIMEOUT_MS

    store = open_store(pg_url)
    sid = store.create(title="locked")
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT 1 FROM sessions WHERE id = %s FOR UPDATE", (sid,))  # held, not committed
        for write in (lambda: store.append_message(sid, "user", "waits"),
                      lambda: store.upsert_message(sid, "assistant", "waits", id="x"),
                      lambda: store.update_metadata(sid, {"k": 1}),
                      lambda: store.append_messages(sid, [{"role": "user", "content": "a"}])):
            t = time.perf_counter()
            with pytest.raises(StorageError, match="lock") as info:
                write()
            took = time.perf_counter() - t
            assert LOCK_TIMEOUT_MS / 1000 * 0.8 < took < LOCK_TIMEOUT_MS / 1000 + 5
            assert "127.0.0.1" in str(info.value)
        holder.rollback()
        store.append_message(sid, "user", "now")
        assert [m["content"] for m in store.messages(sid)] == ["now"]
    finally:
        holder.close()
        store.close()


# ---------------------------------------------------------------------------------------------- errors (item 7)
def _role(pg_server, *grants: str) -> str:
    import psycopg

    role = f"r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        for grant in grants:
            conn.execute(grant.format(role=role))
    return role


def _as(url: str, role: str) -> str:
    return url.replace("oblix@", f"{role}@", 1)


def _schema(url: str) -> str:
    from urllib.parse import unquote

    return unquote(url.split("search_path%3D", 1)[1]) if "search_path%3D" in url else "public"


def test_read_only_database_is_a_storage_error(pg_server, pg_url):
    import psycopg

    open_store(pg_url).close()  # schema made by its owner
    schema = _schema(pg_url)
    role = _role(pg_server, f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {{role}}',
                 f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {{role}}',
                 f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO {{role}}',
                 "ALTER ROLE {role} SET default_transaction_read_only = on")
    store = open_store(_as(pg_url, role))  # reading works
    try:
        assert store.count() == 0
        for write in (lambda: store.create(title="x"), lambda: store.log_usage(
                ("2026-01-01T00:00:00Z", None, None, "m", "local", 1, 1, None, None, 0.1, None, 0))):
            with pytest.raises(StorageError, match="read-only") as info:
                write()
            assert "default_transaction_read_only" in str(info.value) and "127.0.0.1" in str(info.value)
            assert not isinstance(info.value, psycopg.Error)
    finally:
        store.close()
    with pytest.raises(StorageError, match="read-only"):  # a fresh schema cannot be created read-only
        open_store(_as(pg_server.new_schema_url(), role))


def test_missing_privileges_say_what_to_grant(pg_server, pg_url):
    open_store(pg_url).close()
    schema = _schema(pg_url)
    # only CONNECT and USAGE: the tables exist but cannot be read
    role = _role(pg_server, f'GRANT USAGE ON SCHEMA "{schema}" TO {{role}}')
    with pytest.raises(StorageError, match="GRANT") as info:
        open_store(_as(pg_url, role))
    assert role in str(info.value) and "127.0.0.1" in str(info.value)
    # a fresh schema without CREATE: the store cannot make its tables
    fresh = pg_server.new_schema_url()
    role2 = _role(pg_server, f'GRANT USAGE ON SCHEMA "{_schema(fresh)}" TO {{role}}')
    with pytest.raises(StorageError, match="GRANT CREATE") as info:
        open_store(_as(fresh, role2))
    # a role that may read but not write
    role3 = _role(pg_server, f'GRANT USAGE ON SCHEMA "{schema}" TO {{role}}',
                  f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {{role}}')
    store = open_store(_as(pg_url, role3))
    try:
        with pytest.raises(StorageError, match="GRANT SELECT, INSERT"):
            store.create(title="no")
    finally:
        store.close()


@pytest.mark.parametrize("fault, hint", [
    ("port1", "host and port"), ("port_out_of_range", "host and port"), ("no_such_db", "createdb"),
    ("no_such_role", "user name"), ("unknown_option", "malformed"), ("bad_ipv6", "malformed"),
])
def test_bad_urls_are_storage_errors(pg_server, fault, hint):
    port = pg_server.port
    url = {"port1": "postgresql://oblix@127.0.0.1:1/postgres",
           "port_out_of_range": "postgresql://oblix@127.0.0.1:99999/postgres",
           "no_such_db": f"postgresql://oblix@127.0.0.1:{port}/no_such_db_{uuid.uuid4().hex[:6]}",
           "no_such_role": f"postgresql://nobody_{uuid.uuid4().hex[:6]}@127.0.0.1:{port}/postgres",
           "unknown_option": f"postgresql://oblix@127.0.0.1:{port}/postgres?bogus_option=1",
           "bad_ipv6": "postgresql://oblix@[::1/postgres"}[fault]
    with pytest.raises(StorageError, match=hint) as info:
        open_store(url)
    assert "session database postgresql://" in str(info.value)


def test_a_worker_without_the_password_says_so(own_pg_server, monkeypatch):
    from oblix_nb.cluster import ClientSpec

    own_pg_server.require_password("ana", "Secret-pw1")
    url = f"postgresql://ana:Secret-pw1@127.0.0.1:{own_pg_server.port}/postgres"
    store = open_store(url)  # the driver has the password in its URL
    store.close()
    spec = ClientSpec(database_url=store.public_url(), author="ana")
    assert "Secret-pw1" not in repr(spec)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    with pytest.raises(StorageError, match="PGPASSWORD") as info:
        spec.build(OblixClient)
    assert "worker" in str(info.value) and "Secret-pw1" not in full_text(info.value)
    monkeypatch.setenv("PGPASSWORD", "Secret-pw1")
    client = spec.build(OblixClient)  # with the worker's own credentials it works
    client.sessions.close()


# ---------------------------------------------------------------------------------------------- passwords (item 8)
@pytest.mark.parametrize("password", ["PW%zz", "Pq7 W9x", "pw9%", "ab7 c%d9", "Zx9%GG", "Ke7%2"])
def test_a_malformed_password_never_shows(pg_server, password):
    url = f"postgresql://ana:{password}@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(StorageError) as info:
        open_store(url)
    text = full_text(info.value)
    assert all(part not in text for part in (password, *password.split(), *password.split("%")) if len(part) >= 3)
    done = subprocess.run([sys.executable, "-m", "oblix_nb", "migrate", "--from", "sqlite:/nonexistent/x.db",
                           "--to", url], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert done.returncode != 0 and password not in done.stderr + done.stdout


@pytest.mark.parametrize("option", ["password", "%70assword", "PASSWORD", "Pass%77ord", "sslpassword"])
def test_password_options_never_show(pg_server, option):
    from oblix_nb.cluster import ClientSpec

    secret = f"Sec{uuid.uuid4().hex[:8]}"
    url = f"{pg_server.url}?{option}={secret}&application_name=t"
    try:
        store = open_store(url)  # trust auth: any password is accepted
    except StorageError as exc:  # libpq may refuse an option spelling: still no secret
        assert secret not in full_text(exc)
        return
    try:
        assert secret not in repr(store) and secret not in store.url and secret not in store.public_url()
        assert "application_name=t" in store.public_url()
        assert secret not in repr(ClientSpec(store.public_url(), store.author))
    finally:
        store.close()


def test_a_dask_worker_without_the_password_names_itself(own_pg_server, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from oblix_nb.cluster import ClientSpec

    own_pg_server.require_password("bo", "Other-pw2")
    url = f"postgresql://bo:Other-pw2@127.0.0.1:{own_pg_server.port}/postgres"
    store = open_store(url)
    spec = ClientSpec(database_url=store.public_url(), author="bo")
    store.close()
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    with distributed.LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, \
            distributed.Client(cluster) as dask_client:
        future = dask_client.submit(ClientSpec.build, spec, OblixClient, pure=False)
        with pytest.raises(StorageError) as info:
            future.result(timeout=120)
        worker = next(iter(cluster.scheduler_info["workers"]))
    text = str(info.value)
    assert f"on Dask worker {worker}" in text and "PGPASSWORD" in text and "Other-pw2" not in full_text(info.value)


def test_the_first_call_off_the_loop_during_an_outage_fails_fast(own_pg_server):
    store = open_store(own_pg_server.url)
    sid = store.create(title="off the loop")
    try:
        own_pg_server.halt()
        t = time.perf_counter()
        with pytest.raises(StorageError):
            store.append_message(sid, "user", "while down")  # from this thread, not the package loop
        assert time.perf_counter() - t < 5.0  # before: the pool timeout, 30 s
    finally:
        store.close()
