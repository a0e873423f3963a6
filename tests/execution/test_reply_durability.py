"""A reply is never lost (issue 8, item 1): checkpointed streaming and the retry-then-raise final store.

Fast tests drive execute() with a scripted backend (a fake model: these test the storing logic, not a model);
``test_kill_9_mid_stream_leaves_a_partial_checkpoint`` kills a real subprocess streaming from the embedded
SmolLM2 model and reads what it left behind.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from oblix_nb import OblixClient, ReplyNotStoredError, StorageError
from oblix_nb.client import Checkpoint
from oblix_nb.models.base import ModelBackend, ModelType, Usage
from oblix_nb.sessions import SessionStore

ROOT = Path(__file__).resolve().parents[2]


class Scripted(ModelBackend):
    """Yields ``n`` tokens ``w0 w1 ...``, one every ``delay`` s; ``pause_at``: sleep ``pause`` s before that
    token; ``fail_after``: raise after that many tokens."""

    model_type = ModelType.LLAMACPP

    def __init__(self, n=20, delay=0.0, pause_at=None, pause=0.0, fail_after=None):
        super().__init__("scripted")
        self.n, self.delay, self.pause_at, self.pause, self.fail_after = n, delay, pause_at, pause, fail_after

    async def connect(self):
        pass

    async def stream(self, messages, params):
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the scripted model broke")
            if i == self.pause_at:
                await asyncio.sleep(self.pause)
            yield f"w{i} "
            await asyncio.sleep(self.delay)
        yield Usage(3, self.n, "tokenizer", "tokenizer", "stop")


def text_of(n: int) -> str:
    return "".join(f"w{i} " for i in range(n))


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()
    c.sessions.close()


def hook(client, backend):
    client._models = {backend.model_id: backend}
    return backend


def rows(path) -> list[dict]:
    """The session's messages as another process sees them (a separate connection)."""
    other = SessionStore(path)
    try:
        sid = other.summaries(limit=1)[0]["id"]
        return other.messages(sid)
    finally:
        other.close()


class Watcher:
    """A sink that, at chosen token counts, records what a separate connection sees in the database."""

    def __init__(self, path, at):
        self.path, self.at, self.count, self.seen = path, set(at), 0, {}

    def __call__(self, text):
        self.count += 1
        if self.count in self.at:
            self.seen[self.count] = rows(self.path)


async def test_streaming_reply_is_checkpointed_in_one_row_then_replaced(client, tmp_path):
    hook(client, Scripted(n=40, delay=0.01))
    client.checkpoint_interval = 0.1
    sid = await client.create_and_use_session("ckpt")
    watch = Watcher(client.sessions.path, at=[2, 30])
    r = await client.execute("go", max_tokens=64, sink=watch)
    early, late = watch.seen[2], watch.seen[30]
    assert [m["role"] for m in early] == ["user"]  # first checkpoint comes one interval after the first token
    assert [m["role"] for m in late] == ["user", "assistant"]
    checkpoint = late[1]
    assert checkpoint["partial"] is True and checkpoint["metrics"]["finish_reason"] == "interrupted"
    assert text_of(40).startswith(checkpoint["content"]) and len(checkpoint["content"]) >= len(text_of(15))
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    final = messages[1]
    assert final["id"] == checkpoint["id"] and final["content"] == r["response"] == text_of(40)
    assert "partial" not in final and final["metrics"]["finish_reason"] == "stop"
    assert client.list_sessions()[0]["message_count"] == 2
    assert client.sessions.search("w39")[0]["matches"][0]["message_id"] == final["id"]


async def test_pause_in_the_stream_is_still_checkpointed_within_the_interval(client):
    hook(client, Scripted(n=6, pause_at=3, pause=0.8))
    client.checkpoint_interval = 0.2
    sid = await client.create_and_use_session("pause")
    task = asyncio.ensure_future(client.execute("go", sink=lambda t: None))
    await asyncio.sleep(0.5)  # inside the pause: the three tokens before it must be on disk already
    during = rows(client.sessions.path)
    await task
    assert during[-1]["role"] == "assistant" and during[-1]["content"] == text_of(3) and during[-1]["partial"]
    assert [m["role"] for m in client.load_session(sid)["messages"]] == ["user", "assistant"]


async def test_short_reply_writes_no_checkpoint(client, monkeypatch):
    hook(client, Scripted(n=5))
    calls = []
    real = client.sessions.upsert_message
    monkeypatch.setattr(client.sessions, "upsert_message", lambda *a, **k: calls.append(a) or real(*a, **k))
    sid = await client.create_and_use_session("short")
    await client.execute("go", sink=lambda t: None)
    assert calls == []
    assert [m.get("partial") for m in client.load_session(sid)["messages"]] == [None, None]


async def test_failure_after_a_checkpoint_leaves_one_partial_row(client):
    hook(client, Scripted(n=30, delay=0.01, fail_after=25))
    client.checkpoint_interval = 0.05
    sid = await client.create_and_use_session("fail")
    from oblix_nb import ModelCallError
    with pytest.raises(ModelCallError, match="kept, flagged partial") as info:
        await client.execute("go", sink=lambda t: None)
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["partial"] and messages[1]["content"] == text_of(25) == info.value.partial


async def test_cancelled_stream_after_a_checkpoint_leaves_one_partial_row(client):
    hook(client, Scripted(n=1000, delay=0.01))
    client.checkpoint_interval = 0.05
    sid = await client.create_and_use_session("cancel")
    got = []
    async with client.stream("go") as stream:
        async for piece in stream:
            got.append(piece)
            if len(got) == 20:
                break
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["partial"] and messages[1]["content"].startswith("".join(got))


async def test_final_store_failure_is_retried_once(client, monkeypatch):
    hook(client, Scripted(n=5))
    sid = await client.create_and_use_session("retry")
    real, attempts = client.sessions.append_message, []

    def flaky(session_id, role, *a, **k):
        if role == "assistant":
            attempts.append(1)
            if len(attempts) == 1:
                raise StorageError("cannot write: database or disk is full", path=str(client.sessions.path))
        return real(session_id, role, *a, **k)
    monkeypatch.setattr(client.sessions, "append_message", flaky)
    r = await client.execute("go", sink=lambda t: None)
    assert len(attempts) == 1  # the retry replaces by id (upsert), so it can never add a second row
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == r["response"]


@pytest.mark.parametrize("checkpointed", [False, True])
async def test_reply_that_cannot_be_stored_is_raised_with_the_full_response(client, monkeypatch, checkpointed):
    hook(client, Scripted(n=30, delay=0.01 if checkpointed else 0))
    client.checkpoint_interval = 0.05
    sid = await client.create_and_use_session("full")
    ended = []

    class Sink:
        def start(self, info): pass
        def write(self, text): pass
        def end(self, response, error=None): ended.append(response)

    def broken(*a, **k):
        raise StorageError(f"cannot write {client.sessions.path}: database or disk is full",
                           path=str(client.sessions.path))

    def fail_final(session_id, role, content, **fields):
        if fields.get("partial") or role == "user":
            return real[role == "user"](session_id, role, content, **fields)
        return broken()
    real = (client.sessions.upsert_message, client.sessions.append_message)
    monkeypatch.setattr(client.sessions, "append_message", fail_final)
    monkeypatch.setattr(client.sessions, "upsert_message", fail_final)
    with pytest.raises(ReplyNotStoredError) as info:
        await client.execute("go", sink=Sink())
    exc = info.value
    assert exc.response["response"] == text_of(30) and exc.response["model_id"] == "llamacpp:scripted"
    assert exc.session_id == sid and exc.path == str(client.sessions.path)
    assert str(client.sessions.path) in str(exc) and sid in str(exc) and "disk is full" in str(exc)
    assert isinstance(exc.__cause__, StorageError)
    assert ended and ended[0]["response"] == text_of(30)  # the display still got the whole reply
    messages = client.load_session(sid)["messages"]
    if checkpointed:  # what the checkpoints saved stays, flagged partial
        assert messages[-1]["partial"] and text_of(30).startswith(messages[-1]["content"])
    else:
        assert [m["role"] for m in messages] == ["user"]


async def test_session_deleted_by_another_kernel_mid_stream(client):
    hook(client, Scripted(n=40, delay=0.01))
    client.checkpoint_interval = 0.05
    sid = await client.create_and_use_session("doomed")
    other = SessionStore(client.sessions.path)  # another kernel on the same database

    def sink(text):
        if text == "w20 ":
            assert other.delete(sid)
    with pytest.raises(ReplyNotStoredError, match=f"session {sid}") as info:
        await client.execute("go", sink=sink)
    other.close()
    assert info.value.response["response"] == text_of(40)
    assert isinstance(info.value.__cause__, KeyError)  # SessionNotFoundError
    assert not client.sessions.exists(sid)


def test_default_checkpoint_interval_is_one_second(tmp_path):
    c = OblixClient(home=tmp_path)
    assert c.checkpoint_interval == 1.0
    c.sessions.close()
    assert Checkpoint.__doc__ and "partial" in Checkpoint.__doc__


# ------------------------------------------------------------------------------------------------ real kill -9
CHILD = textwrap.dedent("""
    import asyncio, json, sys, time
    from oblix_nb import ModelType, OblixClient

    async def main():
        client = OblixClient(home=sys.argv[1])
        client.checkpoint_interval = float(sys.argv[2])
        await client.hook_model(ModelType.LLAMACPP, "smollm2-135m", n_threads=1)
        await client.create_and_use_session("killed")

        def sink(text):
            sys.stdout.write(json.dumps({"t": time.time(), "text": text}) + "\\n")
            sys.stdout.flush()
        await client.execute("Write a long story about a lighthouse keeper and the sea, chapter by chapter.",
                             max_tokens=2000, temperature=0.8, sink=sink)
        print(json.dumps({"done": True}), flush=True)
    asyncio.run(main())
""")


@pytest.mark.slow
def test_kill_9_mid_stream_leaves_a_partial_checkpoint(tmp_path, gguf_path):
    interval = 1.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(interval)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in child.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        # wait for a checkpoint on disk, then for more text to arrive after it, then kill -9
        while time.time() < deadline and child.poll() is None:
            if (tmp_path / "sessions.db").exists():
                found = [m for m in _rows_if_any(tmp_path) if m["role"] == "assistant"]
                if found and found[0].get("partial") and len(events) > 5:
                    break
            time.sleep(0.05)
        assert child.poll() is None, f"the child ended before a checkpoint: {child.stderr.read()[-2000:]}"
        time.sleep(interval * 1.5)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    reader.join(5)
    assert not any(e.get("done") for e in events)
    streamed = [e for e in events if "text" in e]

    client = OblixClient(home=tmp_path)  # a new process's view: a new client on the same database
    try:
        session = client.list_sessions()[0]
        messages = client.load_session(session["id"])["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] and session["message_count"] == 2
        reply = messages[1]
        assert reply["partial"] is True and reply["content"]
        assert reply["metrics"]["finish_reason"] == "interrupted"
        full = "".join(e["text"] for e in streamed)
        assert full.startswith(reply["content"])
        # at most the last interval was lost (plus 1 s of slack for a loaded machine's scheduling)
        older = "".join(e["text"] for e in streamed if e["t"] < killed_at - interval - 1.0)
        assert reply["content"].startswith(older) and len(reply["content"]) >= len(older)
        history = client.sessions.history(session["id"])
        assert history[-1]["partial"] is True
        frame = client.messages_df(session["id"])
        assert frame["partial"].tolist() == [False, True]
        assert client.search_sessions(reply["content"].split()[0])  # searchable like any message
    finally:
        client.sessions.close()


def _rows_if_any(home) -> list[dict]:
    try:
        return rows(home / "sessions.db")
    except (IndexError, Exception):  # noqa: BLE001 - not created yet
        return []
