"""Storage failures speak (issue 8, item 3): disk full, a read-only home and an unwritable path each give one
StorageError (an OSError) naming the database and the cause; acknowledged data stays intact; a read-only home
can still be read. Disk full and read-only use a real small tmpfs (root mounts it; skipped, with the reason,
where mounting is not permitted)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import contextmanager

import pytest

from oblix_nb import OblixClient, StorageError
from oblix_nb.errors import OblixError
from oblix_nb.sessions import SessionStore


@contextmanager
def tmpfs(path, size="2m"):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with mount permission): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def integrity(path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_storage_error_is_one_documented_oserror():
    assert issubclass(StorageError, OSError) and issubclass(StorageError, OblixError)
    assert "read-only" in StorageError.__doc__ and "path" in StorageError.__doc__


def test_disk_full_on_a_real_tmpfs(tmp_path):
    with tmpfs(tmp_path / "small", size="2m") as home:
        store = SessionStore(home / "sessions.db")
        acknowledged: dict[str, list[str]] = {}
        error = None
        blob = os.urandom(3000).hex()  # 6 KB that does not compress away
        try:
            for i in range(2000):
                if i % 20 == 0:
                    sid = store.create(title=f"s{i}", metadata={"i": i})
                    acknowledged[sid] = []
                content = f"{i} {blob}"
                store.append_message(sid, "user", content)
                acknowledged[sid].append(content)
            pytest.fail("a 2 MB file system never filled up")
        except StorageError as exc:
            error = exc
        assert isinstance(error, OSError)
        assert str(home / "sessions.db") in str(error) and "disk is full" in str(error)
        assert error.path == str(home / "sessions.db") and error.cause is not None
        stored = sum(map(len, acknowledged.values()))
        assert stored > 50
        # the failed write changed nothing; later writes fail the same way; reads still work
        with pytest.raises(StorageError, match="disk is full"):
            store.append_messages(sid, [{"role": "user", "content": blob * 20}])
        with pytest.raises(StorageError):
            store.create(title="one more", metadata={"x": blob * 100})
        assert sum(s["message_count"] for s in store.summaries(limit=None)) == stored
        store.close()
        # a new process's view: everything acknowledged is there, byte for byte, and the file is sound
        again = SessionStore(home / "sessions.db")
        try:
            for sid, contents in acknowledged.items():
                assert [m["content"] for m in again.messages(sid)] == contents
            assert again.count() == len(acknowledged)
        finally:
            again.close()
        assert integrity(home / "sessions.db") == "ok"


async def test_client_on_a_disk_filled_by_someone_else(tmp_path):
    with tmpfs(tmp_path / "small", size="1m") as home:
        client = OblixClient(home=home)
        sid = await client.create_and_use_session("full")
        client.append_message(sid, "user", "before")
        with open(home / "filler", "wb", buffering=0) as f:  # another program fills the disk
            try:
                while True:
                    f.write(b"x" * 65536)
            except OSError:
                pass
        with pytest.raises(StorageError, match="sessions.db") as info:
            client.append_message(sid, "user", "x" * 200_000)
        assert "disk is full" in str(info.value)
        with pytest.raises(StorageError, match="disk is full"):
            await client.create_session("another", metadata={"pad": "y" * 300_000})
        assert [m["content"] for m in client.load_session(sid)["messages"]] == ["before"]
        client.sessions.close()


def _populate(home) -> tuple[str, dict]:
    store = SessionStore(home / "sessions.db")
    sid = store.create(title="kept", metadata={"k": 1}, context={"c": 2})
    store.append_message(sid, "user", "readable even when read-only")
    store.append_message(sid, "assistant", "yes", model_id="m", metrics={"output_tokens": 1})
    store.search("readable")  # index it while the disk is writable
    data = store.get(sid)
    store.close()
    return sid, data


@pytest.mark.parametrize("leftover_wal", [False, True])
def test_read_only_home_can_be_read_but_not_written(tmp_path, leftover_wal):
    with tmpfs(tmp_path / "home", size="4m") as home:
        sid, data = _populate(home)
        if leftover_wal:  # as after a crash: a process wrote and died, its -wal and -shm files are left
            crash = ("import sqlite3, os, sys; c = sqlite3.connect(sys.argv[1]); "
                     "c.execute('UPDATE sessions SET title = title'); c.commit(); os._exit(0)")
            subprocess.run([os.sys.executable, "-c", crash, str(home / "sessions.db")], check=True)
            assert (home / "sessions.db-wal").exists()
        remount_read_only(home)
        client = OblixClient(home=home)
        try:
            assert client.sessions.read_only
            assert [s["id"] for s in client.list_sessions()] == [sid]
            assert client.load_session(sid) == data
            assert client.get_session_metadata(sid) == {"k": 1}
            assert client.search_sessions("readable")[0]["id"] == sid
            out = tmp_path / "exported" / "s.json"
            client.sessions.export(sid, out)
            assert json.loads(out.read_text())["messages"] == data["messages"]
            pytest.importorskip("pandas")
            assert len(client.messages_df(sid)) == 2
            for write in (lambda: client.sessions.create(title="new"),
                          lambda: client.append_message(sid, "user", "no"),
                          lambda: client.update_session_metadata(sid, {"k": 2}),
                          lambda: client.delete_session(sid)):
                with pytest.raises(StorageError, match="read-only") as info:
                    write()
                assert str(home / "sessions.db") in str(info.value)
            with pytest.raises(StorageError, match="s.json"):  # exporting into the read-only home
                client.sessions.export(sid, home / "s.json")
            assert client.load_session(sid) == data
        finally:
            client.sessions.close()


def test_empty_read_only_home_names_the_database_and_the_cause(tmp_path):
    with tmpfs(tmp_path / "home", size="1m") as home:
        remount_read_only(home)
        with pytest.raises(StorageError) as info:
            OblixClient(home=home)
        assert str(home / "sessions.db") in str(info.value) and "read-only file system" in str(info.value)
        with pytest.raises(StorageError, match="(?i)read-only file system"):
            OblixClient(home=home / "sub")  # a folder that cannot be created there


def test_unwritable_path_names_the_database_and_the_cause(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as info:
        OblixClient(home=blocker / "home")
    assert str(blocker / "home" / "sessions.db") in str(info.value) and "Not a directory" in str(info.value)
    with pytest.raises(StorageError) as info:
        SessionStore("/proc/oblix-cannot-exist/sessions.db")
    assert "/proc/oblix-cannot-exist/sessions.db" in str(info.value)


def test_not_a_database_is_a_storage_error(tmp_path):
    (tmp_path / "sessions.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="not a session database") as info:
        SessionStore(tmp_path / "sessions.db")
    assert str(tmp_path / "sessions.db") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (the tmpfs tests cover root)")
def test_read_only_file_permissions(tmp_path):
    sid, data = _populate(tmp_path)
    os.chmod(tmp_path / "sessions.db", 0o444)
    os.chmod(tmp_path, 0o555)
    try:
        store = SessionStore(tmp_path / "sessions.db")
        assert store.get(sid) == data
        with pytest.raises(StorageError, match="read-only"):
            store.append_message(sid, "user", "no")
        store.close()
    finally:
        os.chmod(tmp_path, 0o755)


async def test_reply_on_a_disk_that_fills_mid_stream_is_raised_with_the_full_response(tmp_path):
    """Real disk full during execute(): the finished reply cannot be stored (after one retry), so
    ReplyNotStoredError carries all of it and names the session and the database."""
    import asyncio

    from oblix_nb import ReplyNotStoredError
    from oblix_nb.models.base import ModelBackend, ModelType, Usage

    class Big(ModelBackend):
        model_type = ModelType.LLAMACPP

        async def connect(self):
            pass

        async def stream(self, messages, params):
            for i in range(40):
                yield f"<{i}>" + os.urandom(2500).hex()  # 5 KB per delta, 200 KB in all
                await asyncio.sleep(0)
            yield Usage(1, 40, "tokenizer", "tokenizer", "stop")

    with tmpfs(tmp_path / "small", size="1m") as home:
        client = OblixClient(home=home)
        client._models = {"llamacpp:big": Big("big")}
        sid = await client.create_and_use_session("filling")

        def fill_once(text):
            if text.startswith("<20>"):  # another program fills the disk while the reply streams
                with open(home / "filler", "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(b"x" * 65536)
                    except OSError:
                        pass
        with pytest.raises(ReplyNotStoredError) as info:
            await client.execute("go", sink=fill_once)
        exc = info.value
        assert len(exc.response["response"]) == 40 * 5000 + sum(len(f"<{i}>") for i in range(40))
        assert exc.session_id == sid and exc.path == str(home / "sessions.db")
        assert str(home / "sessions.db") in str(exc) and "disk is full" in str(exc)
        assert isinstance(exc.__cause__, StorageError)
        (home / "filler").unlink()  # space again: the store is intact and writable
        assert [m["role"] for m in client.load_session(sid)["messages"]] == ["user"]
        client.append_message(sid, "assistant", exc.response["response"])
        assert client.load_session(sid)["messages"][1]["content"] == exc.response["response"]
        client.sessions.close()
        assert integrity(home / "sessions.db") == "ok"
