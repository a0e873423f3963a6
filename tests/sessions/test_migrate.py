"""``python -m oblix_nb migrate``: SQLite <-> PostgreSQL in batches (exact, resumable, verified), and a folder of
original Oblix SDK session files into either store."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from oblix_nb.sessions import open_store
from oblix_nb.sessions.transfer import MigrationError, copy_store, import_folder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "oblix-0.1.3-session.json"
ROOT = Path(__file__).resolve().parents[2]


def fill(store, n: int = 7) -> list[str]:
    """n sessions of every shape: empty, NUL and emoji text, metadata types, every message field."""
    ids = []
    for i in range(n):
        sid = store.create(title=f"session {i}" + ("\x00nul" if i == 3 else ""), context={"i": i},
                           metadata={"n": i, "even": i % 2 == 0, "tags": ["a", str(i)], "nested": {"x": 1.0}})
        for j in range(i):
            store.append_message(sid, "user", f"question {i}.{j} 😀", request_id=f"r{j}")
            store.append_message(sid, "assistant", f"answer {i}.{j}" + ("\x00" if j == 1 else ""),
                                 model_id="llamacpp:smol", metrics={"input_tokens": j, "total_latency": 0.25},
                                 routing={"target": "local"}, partial=j == 2)
        ids.append(sid)
    return ids


def everything(store) -> list:
    summaries = store.summaries(limit=None, with_author=True)
    return [summaries, [store.get(s["id"]) for s in summaries], store.message_rows()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "oblix_nb", "migrate", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_sqlite_to_postgresql_and_back_is_exact(tmp_path, pg_url):
    source = open_store(f"sqlite:{tmp_path / 'a.db'}", author="ana")
    fill(source)
    other = open_store(f"sqlite:{tmp_path / 'a.db'}", author="bob")
    other.append_message(source.summaries(limit=None)[-1]["id"], "user", "bob was here")
    other.close()
    want = everything(source)
    source.close()

    done = run_cli("--from", f"sqlite:{tmp_path / 'a.db'}", "--to", pg_url, "--batch", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["sessions"], report["copied"], report["skipped"]) == (7, 7, 0)
    assert report["messages"] == 2 * sum(range(7)) + 1 and report["conflicts"] == []
    assert "7/7" in done.stderr  # the progress bar
    pg = open_store(pg_url)
    try:
        assert everything(pg) == want  # ids, timestamps, order, JSON, NUL text, authors: all exact
        assert [r["id"] for r in pg.search("answer")][:1] and pg.count(author="ana") == 7
    finally:
        pg.close()

    back = run_cli("--from", pg_url, "--to", f"sqlite:{tmp_path / 'b.db'}", "--quiet")
    assert back.returncode == 0, back.stderr
    again = open_store(f"sqlite:{tmp_path / 'b.db'}")
    try:
        assert everything(again) == want
    finally:
        again.close()


def test_an_interrupted_migration_resumes_and_verifies(tmp_path, pg_url):
    source = open_store(f"sqlite:{tmp_path / 'a.db'}")
    fill(source, 9)
    target = open_store(pg_url)

    def stop_after_first_batch(done: int) -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            copy_store(source, target, batch=4, progress=False, on_batch=stop_after_first_batch)
        assert target.count() == 4  # whole batches only

        report = copy_store(source, target, batch=4, progress=False)
        assert (report.sessions, report.copied, report.skipped) == (9, 5, 4)
        assert everything(target)[1] == everything(source)[1]

        again = copy_store(source, target, batch=100, progress=False)
        assert (again.copied, again.skipped) == (0, 9)
    finally:
        source.close()
        target.close()


def test_a_different_session_with_the_same_id_is_a_conflict_never_overwritten(tmp_path, store_url):
    source = open_store(f"sqlite:{tmp_path / 'src.db'}")
    target = open_store(store_url)
    try:
        sid = fill(source, 3)[2]
        doc = source.get(sid)
        doc["messages"] = doc["messages"][:1]
        (tmp_path / "one.json").write_text(json.dumps(doc))
        target.import_file(tmp_path / "one.json")
        with pytest.raises(MigrationError, match="differ") as info:
            copy_store(source, target, progress=False)
        assert info.value.report.copied == 2 and len(info.value.report.conflicts) == 1
        assert len(target.messages(sid)) == 1  # left as it was
    finally:
        source.close()
        target.close()


def test_import_a_folder_of_oblix_session_files(tmp_path, store_url):
    folder = tmp_path / "sessions"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "a.json")
    raw = json.loads(FIXTURE.read_text())
    second = {**raw, "id": str(uuid.uuid4()), "title": "second"}
    (folder / "b.json").write_text(json.dumps(second))
    (folder / "notes.txt").write_text("not a session")

    target = open_store(store_url)
    try:
        report = import_folder(folder, target, progress=False)
        assert (report.sessions, report.copied, report.messages) == (2, 2, 2 * len(raw["messages"]))
        assert target.get(raw["id"])["messages"][0]["content"] == raw["messages"][0]["content"]
        assert {s["title"] for s in target.summaries()} == {raw["title"], "second"}

        (folder / "c.json").write_text("{broken")
        with pytest.raises(MigrationError) as info:
            import_folder(folder, target, progress=False)
        assert (info.value.report.skipped, info.value.report.copied) == (2, 0)
        assert len(info.value.report.invalid) == 1 and "c.json" in info.value.report.invalid[0]
        assert target.count() == 2
    finally:
        target.close()


def test_cli_folder_import_and_errors(tmp_path):
    folder = tmp_path / "sessions"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "a.json")
    done = run_cli("--from", str(folder), "--to", f"sqlite:{tmp_path / 'x.db'}", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == 1

    missing = run_cli("--from", f"sqlite:{tmp_path / 'nope.db'}", "--to", f"sqlite:{tmp_path / 'y.db'}")
    assert missing.returncode == 2 and "no session database" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    bad = run_cli("--from", "mysql://u:pw@h/db", "--to", f"sqlite:{tmp_path / 'y.db'}")
    assert bad.returncode == 2 and "unsupported database URL scheme" in bad.stderr and "pw" not in bad.stderr
