"""Import paths and size caps give the documented exception types (issue 20, item 17): a symlink loop, a name
too long, a file used as a folder and ``~nouser`` are SessionFileError (a ValueError) naming the path; a huge
``OBLIX_MAX_IMPORT_BYTES`` or ``max_bytes`` is a ValueError, and any cap up to the limit imports normally."""
from __future__ import annotations

import json
import os

import pytest

from oblix_nb.errors import SessionFileError
from oblix_nb.sessions import open_store
from oblix_nb.sessions.io import MAX_IMPORT_CAP, parse_session_file, write_json_atomic

DOC = {"id": "s1", "title": "t", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
       "messages": [{"id": "m1", "role": "user", "content": "hi", "timestamp": "2026-01-01T00:00:00Z"}]}


@pytest.fixture
def sqlite_store(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 's.db'}")
    yield store
    store.close()


def bad_paths(tmp_path):
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    os.symlink(b, a)
    os.symlink(a, b)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    return {"self_loop": loop, "mutual_loop": a, "loop_as_folder": loop / "x.json",
            "name_too_long": tmp_path / ("n" * 300 + ".json"), "file_as_folder": plain / "x.json",
            "unknown_user": f"~nouser{os.getpid()}/x.json"}


@pytest.mark.parametrize("kind", ["self_loop", "mutual_loop", "loop_as_folder", "name_too_long", "file_as_folder",
                                  "unknown_user"])
def test_bad_paths_are_session_file_errors(tmp_path, sqlite_store, kind):
    path = bad_paths(tmp_path)[kind]
    for call in (lambda: parse_session_file(path), lambda: sqlite_store.import_file(path),
                 lambda: sqlite_store.import_file(path, new_id=True)):
        with pytest.raises(SessionFileError) as info:
            call()
        assert str(path)[:40] in str(info.value)
    assert sqlite_store.count() == 0


def test_export_and_store_paths_with_an_unknown_user_are_value_errors(tmp_path, sqlite_store):
    sid = sqlite_store.create(title="x")
    with pytest.raises(ValueError, match="nouser"):
        sqlite_store.export(sid, f"~nouser{os.getpid()}/out.json")
    with pytest.raises(ValueError, match="nouser"):
        write_json_atomic(f"~nouser{os.getpid()}/out.json", {})
    with pytest.raises(ValueError, match="nouser"):
        open_store(f"sqlite:~nouser{os.getpid()}/sessions.db")


@pytest.mark.parametrize("value", [str(10 ** 30), str(2 ** 63), str(MAX_IMPORT_CAP + 1), "9" * 5000])
def test_a_huge_import_cap_is_a_value_error(tmp_path, sqlite_store, monkeypatch, value):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(DOC))
    monkeypatch.setenv("OBLIX_MAX_IMPORT_BYTES", value)
    with pytest.raises(ValueError, match="OBLIX_MAX_IMPORT_BYTES") as info:
        sqlite_store.import_file(path)
    assert len(str(info.value)) < 300
    monkeypatch.delenv("OBLIX_MAX_IMPORT_BYTES")
    with pytest.raises(ValueError, match="max_bytes"):
        sqlite_store.import_file(path, max_bytes=int(value) if len(value) < 4000 else 10 ** 40)


@pytest.mark.parametrize("cap", [MAX_IMPORT_CAP, 2 ** 62, 10 ** 15, 1 << 40])
def test_any_cap_up_to_the_limit_imports(tmp_path, sqlite_store, monkeypatch, cap):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(DOC))
    monkeypatch.setenv("OBLIX_MAX_IMPORT_BYTES", str(cap))
    assert sqlite_store.import_file(path, new_id=True)
    assert sqlite_store.import_file(path, new_id=True, max_bytes=cap)
    with pytest.raises(SessionFileError, match="cap"):  # a small cap still refuses a larger file
        sqlite_store.import_file(path, max_bytes=10)
