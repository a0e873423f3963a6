"""Export (atomic, parents created) and import (validation, no overwrite, new ids, Oblix 0.1.3 files)."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from stores import row_counts

from oblix_nb.errors import InvalidSessionIdError, SessionExistsError
from oblix_nb.sessions import SessionStore
from oblix_nb.sessions import io as session_io

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "oblix-0.1.3-session.json"
SHARED_FIXTURE = Path("/work/shared/fixtures/oblix-0.1.3-session.json")


@pytest.fixture
def oblix_file(tmp_path):
    """The original Oblix SDK 0.1.3 session file, copied as is."""
    source = FIXTURE if FIXTURE.exists() else SHARED_FIXTURE
    if not source.exists():
        pytest.skip("oblix-0.1.3-session.json fixture not found")
    return Path(shutil.copy(source, tmp_path / "oblix-session.json"))


def valid_doc(**changes):
    doc = {"id": str(uuid.uuid4()), "title": "Doc", "created_at": "2024-01-01T00:00:00.000Z",
           "updated_at": "2024-01-01T00:01:00.000Z",
           "messages": [{"id": "m1", "role": "user", "content": "hi", "timestamp": "2024-01-01T00:00:00.000Z"},
                        {"id": "m2", "role": "assistant", "content": "hello",
                         "timestamp": "2024-01-01T00:00:01.000Z"}],
           "context": {}, "metadata": {}}
    doc.update(changes)
    return doc


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2), encoding="utf-8")
    return path


def count_rows(store):
    return row_counts(store)


# ---------------------------------------------------------------------------------------------- export
def test_export_creates_parents_and_writes_reference_json(store, tmp_path):
    session_id = store.create(title="Café ☕", metadata={"k": "é"})
    store.append_message(session_id, "user", "naïve question", model_id="m", metrics={"x": 1.5})
    target = tmp_path / "deep" / "er" / "session.json"

    assert store.export(session_id, target) == target

    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == store.get(session_id)
    assert "Café ☕" in text and "naïve" in text  # ensure_ascii=False
    assert text.startswith('{\n  "id": ')       # indent=2
    assert [p.name for p in target.parent.iterdir()] == ["session.json"]  # no temp file left


def test_export_replaces_an_existing_file(store, tmp_path):
    target = write(tmp_path / "s.json", "old contents")
    os.chmod(target, 0o600)
    session_id = store.create(title="new")

    store.export(session_id, str(target))

    assert json.loads(target.read_text())["title"] == "new"
    assert target.stat().st_mode & 0o777 == 0o600


def test_failed_export_leaves_the_existing_file_intact(store, tmp_path, monkeypatch):
    target = write(tmp_path / "s.json", "old contents")
    session_id = store.create()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(session_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.export(session_id, target)

    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["s.json"]


def test_export_to_a_directory_fails_cleanly(store, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    session_id = store.create()

    with pytest.raises(OSError):
        store.export(session_id, folder)

    assert folder.is_dir() and list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["folder"]


def test_export_import_round_trip_keeps_every_field(store, tmp_path):
    session_id = store.create(title="RT", context={"c": [1, 2]}, metadata={"m": {"n": None}})
    store.append_message(session_id, "system", "sys")
    store.append_message(session_id, "user", "q", request_id="r1")
    store.append_message(session_id, "assistant", "a", model_id="openai:gpt", metrics={"ttft": 0.1},
                         routing={"target": "cloud"}, partial=True, request_id="r1")
    path = store.export(session_id, tmp_path / "rt.json")
    original = store.get(session_id)

    other = SessionStore(tmp_path / "other" / "sessions.db")
    try:
        assert other.import_file(path) == session_id
        assert other.get(session_id) == original
    finally:
        other.close()


# ------------------------------------------------------------------------------------------ import: Oblix 0.1.3
def test_original_oblix_file_imports_as_is(store, oblix_file):
    raw = json.loads(oblix_file.read_text())

    session_id = store.import_file(oblix_file)

    data = store.get(session_id)
    assert session_id == raw["id"] == "00055bef-11ef-4d80-9fe9-6b973ba5f4a7"
    assert data["title"] == "Session 6869"
    assert data["created_at"] == "2026-11-24T20:24:14.820Z"
    assert data["updated_at"] == "2026-11-24T20:24:14.823Z"
    assert data["metadata"] == {"user": "user69", "project": "beta", "idx": 6869}
    assert data["context"] == {}
    assert [m["id"] for m in data["messages"]] == [m["id"] for m in raw["messages"]]
    assert [m["content"] for m in data["messages"]] == [m["content"] for m in raw["messages"]]
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 5
    assert data["messages"][0]["timestamp"] == "2026-11-24T20:24:14.821Z"
    assert data["messages"][-1]["timestamp"] == "2026-11-24T20:24:14.823Z"
    summary = store.summaries(filter_metadata={"project": "beta", "idx": 6869})
    assert [(s["id"], s["message_count"]) for s in summary] == [(session_id, 10)]
    assert oblix_file.read_text() == json.dumps(raw, indent=2)  # the file itself is untouched


def test_original_oblix_file_with_new_id(store, oblix_file):
    first = store.import_file(oblix_file)
    imported = store.import_file(str(oblix_file), new_id=True)

    data = store.get(imported)
    assert imported != first and str(uuid.UUID(imported)) == imported
    assert not {m["id"] for m in data["messages"]} & {m["id"] for m in store.messages(first)}
    provenance = data["metadata"]["imported_from"]
    assert provenance["session_id"] == first
    assert provenance["file"] == str(oblix_file.resolve())
    assert provenance["imported_at"].endswith("Z")
    assert {k: v for k, v in data["metadata"].items() if k != "imported_from"} == store.get_metadata(first)


# ---------------------------------------------------------------------------------------------- import: validation
def test_import_missing_file(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.import_file(tmp_path / "nope.json")


def test_import_bad_json_names_file_and_position(store, tmp_path):
    path = write(tmp_path / "bad.json", '{\n  "id": "abc",\n  "title": oops\n}')

    with pytest.raises(ValueError) as info:
        store.import_file(path)

    message = str(info.value)
    assert str(path) in message and "line 3" in message and "column 12" in message


def test_import_rejects_non_utf8_files(store, tmp_path):
    path = tmp_path / "latin1.json"
    text = json.dumps(valid_doc(title="café"), ensure_ascii=False)
    path.write_bytes(text.encode("utf-8").replace("é".encode(), b"\xe9"))  # Latin-1 é

    with pytest.raises(ValueError, match="not UTF-8") as info:
        store.import_file(path)

    assert str(path) in str(info.value)


def test_import_rejects_non_json_constants(store, tmp_path):
    path = write(tmp_path / "nan.json", json.dumps(valid_doc(metadata={"score": float("nan")})))

    with pytest.raises(ValueError, match="NaN is not a JSON value"):
        store.import_file(path)


@pytest.mark.parametrize("doc, expected", [
    ([1, 2], "expected a JSON object"),
    ({k: v for k, v in valid_doc().items() if k != "messages"}, "missing required field(s) ['messages']"),
    ({k: v for k, v in valid_doc().items() if k not in ("id", "created_at")},
     "missing required field(s) ['id', 'created_at']"),
    (valid_doc(title=5), "'title' must be a string"),
    (valid_doc(created_at=20240101), "'created_at' must be an ISO 8601 string"),
    (valid_doc(updated_at="last tuesday"), "'updated_at' is not an ISO 8601 timestamp"),
    (valid_doc(messages={"id": "m1"}), "'messages' must be a list"),
    (valid_doc(context=["a"]), "'context' must be an object"),
    (valid_doc(metadata="x"), "'metadata' must be an object"),
    (valid_doc(messages=["hi"]), "messages[0] must be an object"),
    (valid_doc(messages=[{"id": "m1", "role": "user", "timestamp": "2024-01-01T00:00:00Z"}]),
     "messages[0] is missing required field(s) ['content']"),
    (valid_doc(messages=[{"id": "m1", "role": "bot", "content": "x", "timestamp": "2024-01-01T00:00:00Z"}]),
     "messages[0]: unknown role 'bot'"),
    (valid_doc(messages=[{"id": "m1", "role": "user", "content": 7, "timestamp": "2024-01-01T00:00:00Z"}]),
     "messages[0]: message content must be a string"),
    (valid_doc(messages=[{"id": "m1", "role": "user", "content": "x", "timestamp": None}]),
     "messages[0].timestamp must be an ISO 8601 string"),
    (valid_doc(messages=[{"id": "m1", "role": "user", "content": "x", "timestamp": "soon"}]),
     "messages[0]: "),
    (valid_doc(messages=[{"id": "m1", "role": "user", "content": "x", "timestamp": "2024-01-01T00:00:00Z",
                          "metrics": [1]}]), "messages[0]: message field 'metrics' must be dict"),
    (valid_doc(messages=[{"id": "m", "role": "user", "content": "x", "timestamp": "2024-01-01T00:00:00Z"},
                         {"id": "m", "role": "user", "content": "y", "timestamp": "2024-01-01T00:00:00Z"}]),
     "messages[1]: duplicate message id 'm'"),
])
def test_import_validation_errors_name_the_problem(store, tmp_path, doc, expected):
    path = write(tmp_path / "doc.json", doc)

    with pytest.raises(ValueError) as info:
        store.import_file(path)

    assert expected in str(info.value) and str(path) in str(info.value)
    assert count_rows(store) == {"sessions": 0, "messages": 0, "session_meta": 0}


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", 17])
def test_import_invalid_session_id(store, tmp_path, bad_id):
    path = write(tmp_path / "doc.json", valid_doc(id=bad_id))

    with pytest.raises(InvalidSessionIdError) as info:
        store.import_file(path)

    assert isinstance(info.value, ValueError) and "'id'" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["doc.json"]  # nothing written
    assert count_rows(store)["sessions"] == 0


def test_import_existing_id_never_overwrites(store, tmp_path):
    doc = valid_doc(title="original", metadata={"v": 1})
    path = write(tmp_path / "doc.json", doc)
    session_id = store.import_file(path)
    store.append_message(session_id, "user", "added after import")
    before = store.get(session_id)
    write(path, {**doc, "title": "changed", "messages": []})

    with pytest.raises(SessionExistsError, match="already exists") as info:
        store.import_file(path)

    assert "new_id=True" in str(info.value)
    assert store.get(session_id) == before
    assert count_rows(store)["sessions"] == 1
    assert store.get(store.import_file(path, new_id=True))["title"] == "changed"


def test_import_new_id_gives_fresh_ids_and_provenance(store, tmp_path):
    doc = valid_doc(metadata={"team": "x"})
    path = write(tmp_path / "doc.json", doc)

    first = store.import_file(path, new_id=True)
    second = store.import_file(path, new_id=True)

    assert len({first, second, doc["id"]}) == 3 and not store.exists(doc["id"])
    ids = [m["id"] for s in (first, second) for m in store.messages(s)]
    assert len(set(ids)) == 4 and not set(ids) & {"m1", "m2"}
    meta = store.get_metadata(first)
    assert meta["team"] == "x"
    assert meta["imported_from"]["session_id"] == doc["id"]
    assert meta["imported_from"]["file"] == str(path.resolve())
    assert [s["id"] for s in store.summaries(filter_metadata={"team": "x"})] == [second, first]


def test_import_keeps_known_fields_and_ignores_unknown_ones(store, tmp_path):
    message = {"id": "m1", "role": "assistant", "content": "x", "timestamp": "2024-01-01T00:00:00.5+02:00",
               "model_id": "ollama:llama2", "metrics": {"tokens_per_second": 3.5}, "routing": {"target": "local"},
               "partial": False, "request_id": "r", "unknown_field": 1}
    path = write(tmp_path / "doc.json", valid_doc(messages=[message], title=None, surplus="ignored"))

    session_id = store.import_file(path)

    data = store.get(session_id)
    assert data["messages"] == [{"id": "m1", "role": "assistant", "content": "x",
                                 "timestamp": "2023-12-31T22:00:00.500Z", "model_id": "ollama:llama2",
                                 "metrics": {"tokens_per_second": 3.5}, "routing": {"target": "local"},
                                 "request_id": "r"}]
    assert data["title"] == "Session 2024-01-01 00:00 UTC"  # a null title gets the default


def test_import_is_atomic(store, tmp_path, monkeypatch):
    path = write(tmp_path / "doc.json", valid_doc(metadata={"k": "v"}))

    def fail(*args):
        raise RuntimeError("crash after the session row was inserted")

    if store.engine == "sqlite":
        monkeypatch.setattr(SessionStore, "_set_meta", staticmethod(fail))
    else:  # the messages' INSERT, after the session row's
        import psycopg

        monkeypatch.setattr(psycopg.Cursor, "executemany", fail)
    with pytest.raises(RuntimeError):
        store.import_file(path)
    monkeypatch.undo()

    assert count_rows(store) == {"sessions": 0, "messages": 0, "session_meta": 0}
    assert store.import_file(path)  # and the store still works
