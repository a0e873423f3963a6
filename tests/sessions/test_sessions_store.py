"""Session store semantics: listing and filters, metadata, messages, history, search, copy, merge, id checks.

Each test runs on both engines (the ``store`` fixture in conftest.py: SQLite and PostgreSQL).
"""
from __future__ import annotations

import json
import uuid

import pytest
from stores import plan, row_counts, statements_during, tables_read_during

from oblix_nb.errors import InvalidSessionIdError, SessionNotFoundError


def write_session(path, session_id, updated_at, title="t", messages=(), **extra):
    doc = {"id": session_id, "title": title, "created_at": "2024-01-01T00:00:00.000Z",
           "updated_at": updated_at, "messages": list(messages), "context": {}, "metadata": {}, **extra}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- listing
def test_summaries_newest_update_first(store):
    a, b, c = (store.create(title=name) for name in "abc")
    assert [s["id"] for s in store.summaries()] == [c, b, a]

    store.append_message(a, "user", "hi")  # usually within the same millisecond as c's creation
    assert [s["id"] for s in store.summaries()] == [a, c, b]
    store.update_metadata(b, {"k": 1})
    assert [s["id"] for s in store.summaries()] == [b, a, c]


def test_summaries_ties_broken_by_creation_order(store, tmp_path):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for i, session_id in enumerate(ids):
        store.import_file(write_session(tmp_path / f"{i}.json", session_id, "2024-05-01T10:00:00.000Z"))
    older = store.import_file(write_session(tmp_path / "old.json", str(uuid.uuid4()), "2023-05-01T10:00:00Z"))

    assert [s["id"] for s in store.summaries()] == [ids[2], ids[1], ids[0], older]
    assert [s["id"] for s in store.summaries(limit=2, offset=1)] == [ids[1], ids[0]]


def test_summaries_limit(store):
    ids = [store.create() for _ in range(5)]

    assert len(store.summaries(limit=2)) == 2
    assert store.summaries(limit=0) == []
    assert {s["id"] for s in store.summaries(limit=None)} == set(ids)
    with pytest.raises(ValueError, match="limit"):
        store.summaries(limit=-1)
    with pytest.raises(ValueError, match="offset"):
        store.summaries(offset=-1)
    with pytest.raises(TypeError):
        store.summaries(limit="10")


def test_summaries_counts_messages_without_reading_them(store):
    session_id = store.create()
    store.append_messages(session_id, [{"role": "user", "content": str(i)} for i in range(7)])

    read = tables_read_during(store, lambda: store.summaries())
    assert store.summaries()[0]["message_count"] == 7
    assert "messages" not in read and "sessions" in read


def test_filter_metadata_is_type_aware(store):
    ids = {name: store.create(metadata={"n": value}) for name, value in
           [("int", 1), ("float", 1.0), ("str", "1"), ("true", True), ("null", None), ("two", 2)]}
    missing = store.create(metadata={"other": 1})

    def found(flt):
        return {s["id"] for s in store.summaries(filter_metadata=flt)}

    assert found({"n": 1}) == {ids["int"], ids["float"]}
    assert found({"n": 1.0}) == {ids["int"], ids["float"]}
    assert found({"n": "1"}) == {ids["str"]}
    assert found({"n": True}) == {ids["true"]}
    assert found({"n": None}) == {ids["null"]}
    assert found({"n": 3}) == set()
    assert missing not in found({"n": None})
    assert len(found({})) == 7


def test_filter_metadata_all_keys_and_nested_values(store):
    both = store.create(metadata={"category": "support", "tags": ["a", "b"], "owner": {"name": "x", "id": 7}})
    store.create(metadata={"category": "support", "tags": ["b", "a"]})
    store.create(metadata={"tags": ["a", "b"]})

    assert [s["id"] for s in store.summaries(filter_metadata={"category": "support", "tags": ["a", "b"]})] \
        == [both]
    assert [s["id"] for s in store.summaries(filter_metadata={"owner": {"id": 7.0, "name": "x"}})] == [both]


def test_filter_metadata_rejects_non_dicts(store):
    with pytest.raises(TypeError):
        store.summaries(filter_metadata=[("category", "support")])
    with pytest.raises(TypeError):
        store.summaries(filter_metadata={"k": object()})
    with pytest.raises(TypeError):
        store.summaries(filter_metadata={1: "x"})


def test_filter_metadata_uses_the_index(store):
    store.create(metadata={"project": "p1"})
    if store.engine == "sqlite":
        assert "session_meta_by_value" in plan(store, "SELECT seq FROM sessions WHERE seq IN "
                                                      "(SELECT session_seq FROM session_meta WHERE key = ? AND value = ?)",
                                               ("project", '"p1"'))
        index = "session_meta"
    else:  # the GIN index on the JSONB column serves containment
        assert "sessions_meta" in plan(store, "SELECT seq FROM sessions WHERE meta @> ?::jsonb", ('{"project":"p1"}',))
        index = "meta @>"
    statements = statements_during(store, lambda: store.summaries(filter_metadata={"project": "p1"}))
    assert any(index in s for s in statements)


# ---------------------------------------------------------------------------------------------- metadata
def test_update_metadata_shallow_merges_and_bumps_updated_at(store):
    session_id = store.create(metadata={"a": 1, "nested": {"x": 1, "y": 2}, "keep": True})
    other = store.create()
    before = store.get(session_id)["updated_at"]

    assert store.update_metadata(session_id, {"a": 2, "nested": {"x": 9}, "new": "v"}) is True

    assert store.get_metadata(session_id) == {"a": 2, "nested": {"x": 9}, "keep": True, "new": "v"}
    assert store.get(session_id)["updated_at"] >= before
    assert store.summaries()[0]["id"] == session_id and store.summaries()[1]["id"] == other
    assert store.summaries(filter_metadata={"a": 1}) == []
    assert [s["id"] for s in store.summaries(filter_metadata={"a": 2, "keep": True})] == [session_id]


def test_update_metadata_bad_value_changes_nothing(store):
    session_id = store.create(metadata={"a": 1})
    store.append_message(session_id, "user", "hi")
    before = store.get(session_id)
    order = [s["id"] for s in store.summaries()]

    for bad in ({"ok": 1, "bad": object()}, {"ok": 1, "bad": float("nan")}, {"ok": 1, "bad": {1, 2}}):
        with pytest.raises(TypeError):
            store.update_metadata(session_id, bad)
    with pytest.raises(TypeError):
        store.update_metadata(session_id, ["not", "a", "dict"])
    with pytest.raises(TypeError):
        store.update_metadata(session_id, {1: "non-string key"})

    assert store.get(session_id) == before
    assert [s["id"] for s in store.summaries()] == order
    assert store.summaries(filter_metadata={"ok": 1}) == []


def test_update_metadata_unknown_session_is_false(store):
    assert store.update_metadata(str(uuid.uuid4()), {"a": 1}) is False


def test_create_rejects_bad_arguments(store):
    with pytest.raises(TypeError):
        store.create(metadata={"x": object()})
    with pytest.raises(TypeError):
        store.create(context=["not", "a", "dict"])
    with pytest.raises(TypeError):
        store.create(title=3)
    assert store.summaries() == []


def test_get_metadata_does_not_read_messages(store):
    session_id = store.create(metadata={"status": "resolved"})
    store.append_messages(session_id, [{"role": "user", "content": f"m{i}"} for i in range(20)])

    read = tables_read_during(store, lambda: store.get_metadata(session_id))
    statements = statements_during(store, lambda: store.get_metadata(session_id))

    assert store.get_metadata(session_id) == {"status": "resolved"}
    assert "sessions" in read and "messages" not in read
    assert not any("messages" in s for s in statements)
    assert "messages" in tables_read_during(store, lambda: store.get(session_id))  # the probe does see reads


# ---------------------------------------------------------------------------------------------- not found / ids
def test_unknown_session_errors(store, tmp_path):
    unknown = str(uuid.uuid4())
    for call in (lambda: store.get(unknown), lambda: store.get_metadata(unknown),
                 lambda: store.append_message(unknown, "user", "x"), lambda: store.history(unknown),
                 lambda: store.messages(unknown), lambda: store.copy(unknown),
                 lambda: store.append_messages(unknown, []),
                 lambda: store.export(unknown, tmp_path / "out.json")):
        with pytest.raises(SessionNotFoundError) as info:
            call()
        assert isinstance(info.value, KeyError) and unknown in str(info.value)
    assert store.exists(unknown) is False
    assert store.delete(unknown) is False
    assert store.update_metadata(unknown, {}) is False
    assert not (tmp_path / "out.json").exists()


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("bad_id", ["../x", "../../etc/passwd", "a/b", "", " x", "-x", "x" * 129, None, 42])
def test_invalid_session_ids_are_rejected_before_any_use(store, tmp_path, bad_id):
    sentinel = tmp_path / "x"
    sentinel.write_text("keep me")
    store.create()
    before = _tree(tmp_path)

    calls = [lambda: store.get(bad_id), lambda: store.exists(bad_id), lambda: store.delete(bad_id),
             lambda: store.get_metadata(bad_id), lambda: store.update_metadata(bad_id, {"a": 1}),
             lambda: store.append_message(bad_id, "user", "x"), lambda: store.append_messages(bad_id, []),
             lambda: store.messages(bad_id), lambda: store.history(bad_id, 5),
             lambda: store.export(bad_id, tmp_path / "exports" / "out.json"),
             lambda: store.copy(bad_id), lambda: store.merge([bad_id])]
    if isinstance(bad_id, str):  # (None there means "not set", 42 is a TypeError)
        calls.append(lambda: store.append_message(store.summaries()[0]["id"], "user", "x",
                                                  source_session_id=bad_id))
    for call in calls:
        with pytest.raises(InvalidSessionIdError):
            call()

    assert _tree(tmp_path) == before
    assert sentinel.read_text() == "keep me"
    assert len(store.summaries()) == 1 and store.summaries()[0]["message_count"] == 0


# ---------------------------------------------------------------------------------------------- messages
def test_append_message_returns_what_get_shows(store):
    session_id = store.create()
    plain = store.append_message(session_id, "user", "hello")
    full = store.append_message(
        session_id, "assistant", "hi there", id="reply-1", timestamp="2026-11-24T20:24:14.821512+00:00",
        model_id="ollama:smollm2", metrics={"tokens_per_second": 12.5, "input_tokens": 3},
        routing={"target": "local"}, partial=True, request_id="req-1")
    system = store.append_message(session_id, "system", "be brief", partial=False)

    assert list(plain) == ["id", "role", "content", "timestamp"]
    assert full == {"id": "reply-1", "role": "assistant", "content": "hi there",
                    "timestamp": "2026-11-24T20:24:14.821Z", "model_id": "ollama:smollm2",
                    "metrics": {"tokens_per_second": 12.5, "input_tokens": 3}, "routing": {"target": "local"},
                    "partial": True, "request_id": "req-1"}
    assert "partial" not in system
    assert store.get(session_id)["messages"] == [plain, full, system]
    assert store.messages(session_id) == [plain, full, system]


def test_append_message_validates(store):
    session_id = store.create()
    with pytest.raises(ValueError, match="role"):
        store.append_message(session_id, "bot", "x")
    with pytest.raises(TypeError):
        store.append_message(session_id, "user", b"bytes")
    with pytest.raises(TypeError, match="colour"):
        store.append_message(session_id, "user", "x", colour="red")
    with pytest.raises(TypeError):
        store.append_message(session_id, "user", "x", metrics="fast")
    with pytest.raises(TypeError):
        store.append_message(session_id, "user", "x", partial="yes")
    with pytest.raises(TypeError):
        store.append_message(session_id, "user", "x", metrics={"bad": object()})
    with pytest.raises(ValueError):
        store.append_message(session_id, "user", "x", timestamp="yesterday")
    assert store.get(session_id)["messages"] == []
    assert store.summaries()[0]["message_count"] == 0


def test_append_message_is_one_insert_and_one_session_update(store):
    session_id = store.create()
    store.append_messages(session_id, [{"role": "user", "content": str(i)} for i in range(5)])

    statements = statements_during(store, lambda: store.append_message(session_id, "user", "one more"))

    if store.engine == "sqlite":
        # The stats triggers' steps (migration 3) are traced as repeats of the statement that fired them.
        writes = list(dict.fromkeys(s for s in statements
                                    if s.split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE")))
        assert len(writes) == 2, writes
        assert writes[0].startswith("UPDATE sessions SET updated_at")
        assert writes[1].startswith("INSERT INTO messages")
    else:  # one statement, one round trip: the session row's UPDATE feeds the INSERT (a CTE)
        assert len(statements) == 1, statements
        assert statements[0].startswith("WITH s AS (UPDATE sessions SET updated_at")
        assert "INSERT INTO messages" in statements[0]
    assert store.summaries()[0]["message_count"] == 6


def test_duplicate_message_id_is_refused_and_batches_are_atomic(store):
    session_id = store.create()
    store.append_message(session_id, "user", "first", id="m1")

    with pytest.raises(ValueError, match="unique"):
        store.append_message(session_id, "user", "again", id="m1")
    with pytest.raises(ValueError):
        store.append_messages(session_id, [{"role": "user", "content": "a", "id": "m2"},
                                           {"role": "user", "content": "b", "id": "m2"}])
    with pytest.raises(TypeError):
        store.append_messages(session_id, [{"role": "user", "content": "ok"}, {"role": "user"}])

    assert [m["id"] for m in store.messages(session_id)] == ["m1"]
    assert store.summaries()[0]["message_count"] == 1
    other = store.create()
    assert store.append_message(other, "user", "same id, other session", id="m1")["id"] == "m1"


def test_append_messages_batch(store):
    session_id = store.create()
    other = store.create()

    assert store.append_messages(session_id, []) == []
    assert store.summaries()[0]["id"] == other  # an empty batch changes nothing

    stored = store.append_messages(session_id, [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "timestamp": "2024-02-03T04:05:06.789123Z", "request_id": "r"},
        {"role": "assistant", "content": "hello", "model_id": "m", "partial": True}])

    assert [m["role"] for m in stored] == ["system", "user", "assistant"]
    assert stored[1]["timestamp"] == "2024-02-03T04:05:06.789Z"
    assert store.messages(session_id) == stored
    assert store.summaries()[0] == {**store.summaries()[0], "id": session_id, "message_count": 3}
    with pytest.raises(TypeError):
        store.append_messages(session_id, {"role": "user", "content": "not a list"})
    with pytest.raises(TypeError):
        store.append_messages(session_id, ["not a dict"])


def test_history_returns_newest_in_chronological_order(store):
    session_id = store.create()
    store.append_messages(session_id, [{"role": "user", "content": str(i)} for i in range(10)])

    assert [m["content"] for m in store.history(session_id, limit=3)] == ["7", "8", "9"]
    assert [m["content"] for m in store.history(session_id)] == [str(i) for i in range(10)]
    assert store.history(session_id, limit=0) == []
    assert len(store.history(session_id, limit=50)) == 10
    with pytest.raises(ValueError):
        store.history(session_id, limit=-1)


def test_history_reads_only_the_newest_rows_through_the_index(store):
    text = plan(store, "SELECT id FROM messages WHERE session_seq = ? ORDER BY seq DESC LIMIT ?", (1, 5))
    assert "messages_by_session" in text and "TEMP B-TREE" not in text and "Sort" not in text


def test_delete_removes_messages_and_index_rows(store):
    keep = store.create(metadata={"k": "v"})
    gone = store.create(metadata={"k": "v"})
    for session_id in (keep, gone):
        store.append_messages(session_id, [{"role": "user", "content": f"shared words {i}"} for i in range(3)])

    assert store.delete(gone) is True

    assert store.exists(gone) is False and store.exists(keep) is True
    assert row_counts(store) == {"sessions": 1, "messages": 3, "session_meta": 1}
    assert [s["id"] for s in store.summaries(filter_metadata={"k": "v"})] == [keep]
    assert [hit["id"] for hit in store.search("shared")] == [keep]


# ---------------------------------------------------------------------------------------------- search
def test_search_ranks_best_first_and_returns_matches(store):
    weak = store.create(title="General chat")
    store.append_message(weak, "user", "we talked about many things: weather, trains, a banana, music, films, "
                                       "books, gardens, and the price of coffee in several cities")
    strong = store.create(title="Fruit")
    hit = store.append_message(strong, "user", "banana banana banana")
    store.create(title="Nothing relevant")

    results = store.search("banana")

    assert [r["id"] for r in results] == [strong, weak]
    assert results[0]["matches"][0] == {"message_id": hit["id"], "role": "user",
                                        "snippet": "**banana** **banana** **banana**"}
    assert {"id", "title", "created_at", "updated_at", "message_count", "metadata"} <= set(results[0])


def test_search_titles_stemming_and_all_terms(store):
    titled = store.create(title="Quarterly planning")
    body = store.create(title="Misc")
    store.append_message(body, "assistant", "Installing the software needs admin rights.")

    assert [(r["id"], r["matches"]) for r in store.search("quarterly")] == [(titled, [])]
    assert [r["id"] for r in store.search("install")] == [body]  # porter stemming
    assert [r["id"] for r in store.search("install rights")] == [body]
    assert store.search("install quarterly") == []


@pytest.mark.parametrize("query", ['-', ':', '"', 'AND', 'OR NOT', 'a"b', '(', ')', '*', 'NEAR(', 'col:x',
                                   '^start', 'C++ -flag', "don't", '"unbalanced', '{x}', 'a AND'])
def test_search_treats_query_as_plain_text(store, query):
    session_id = store.create()
    store.append_message(session_id, "user", "error: file-not-found (code 42) AND more")
    store.search(query)  # no FTS syntax error


def test_search_finds_punctuated_terms(store):
    session_id = store.create()
    store.append_message(session_id, "user", "error: file-not-found (code 42) AND more")

    for query in ("file-not-found", "error:", "(code", "AND more", '"42"'):
        assert [r["id"] for r in store.search(query)] == [session_id], query


def test_search_rejects_empty_queries(store):
    for query in ("", "   "):
        with pytest.raises(ValueError):
            store.search(query)
    with pytest.raises(TypeError):
        store.search(None)
    with pytest.raises(ValueError):
        store.search("x", limit=-1)


def test_search_sees_new_writes_and_deletes(store):
    first = store.create(title="alpha")
    store.append_message(first, "user", "zebra")
    assert [r["id"] for r in store.search("zebra")] == [first]

    store.delete(first)  # the newest rows: their seqs must not be reused for unindexed rows
    second = store.create(title="beta")
    store.append_message(second, "user", "zebra again")
    store.append_message(second, "user", "yak")

    assert [r["id"] for r in store.search("zebra")] == [second]
    assert [r["id"] for r in store.search("yak")] == [second]
    assert store.search("alpha") == []
    if store.engine == "sqlite":
        for table in ("messages_fts", "titles_fts"):
            store._conn.execute(f"INSERT INTO {table} ({table}) VALUES ('integrity-check')")


def test_search_limit(store):
    ids = [store.create(title=f"topic {i}") for i in range(5)]
    for session_id in ids:
        store.append_message(session_id, "user", "common word")

    assert len(store.search("common", limit=2)) == 2
    assert store.search("common", limit=0) == []
    assert len(store.search("common", limit=None)) == 5
    assert len(store.search("topic", limit=3)) == 3


# ---------------------------------------------------------------------------------------------- copy / merge
def test_copy(store):
    source = store.create(title="Onboarding", context={"c": 1}, metadata={"team": "a"})
    store.append_message(source, "user", "q", timestamp="2024-01-01T00:00:00Z", request_id="r1")
    store.append_message(source, "assistant", "a", model_id="m", metrics={"x": 1}, partial=True)
    original = store.get(source)

    copy_id = store.copy(source)
    named = store.copy(source, new_title="Template")

    data = store.get(copy_id)
    assert copy_id != source and data["title"] == "Copy of Onboarding"
    assert store.get(named)["title"] == "Template"
    assert data["context"] == {"c": 1}
    assert data["metadata"] == {"team": "a", "copied_from": source}
    strip = [{k: v for k, v in m.items() if k != "id"} for m in data["messages"]]
    assert strip == [{k: v for k, v in m.items() if k != "id"} for m in original["messages"]]
    assert not {m["id"] for m in data["messages"]} & {m["id"] for m in original["messages"]}
    assert store.get(source) == original
    assert [s["id"] for s in store.summaries(filter_metadata={"copied_from": source})] == [named, copy_id]


def _session_with(store, title, stamps, **kwargs):
    session_id = store.create(title=title, **kwargs)
    for i, stamp in enumerate(stamps):
        store.append_message(session_id, "user", f"{title}{i}", timestamp=stamp)
    return session_id


def test_merge_orders_by_timestamp_with_stable_ties(store):
    a = _session_with(store, "A", ["2024-01-01T10:00:00Z", "2024-01-01T10:03:00Z", "2024-01-01T10:05:00Z"],
                      context={"shared": "a", "only_a": 1}, metadata={"owner": "a"})
    b = _session_with(store, "B", ["2024-01-01T11:02:00+01:00", "2024-01-01T10:03:00.000Z",
                                   "2024-01-01T10:04:00Z"], context={"shared": "b"}, metadata={"owner": "b"})

    merged = store.get(store.merge([a, b]))
    reverse = store.get(store.merge([b, a], title="Reversed"))

    assert [m["content"] for m in merged["messages"]] == ["A0", "B0", "A1", "B1", "B2", "A2"]
    assert [m["content"] for m in reverse["messages"]] == ["A0", "B0", "B1", "A1", "B2", "A2"]
    assert [m["source_session_id"] for m in merged["messages"]] == [a, b, a, b, b, a]
    assert merged["title"] == "Merged: A + B" and reverse["title"] == "Reversed"
    assert merged["context"] == {"shared": "b", "only_a": 1}
    assert merged["metadata"] == {"owner": "b", "merged_from": [a, b]}
    sources = store.messages(a) + store.messages(b)
    assert not {m["id"] for m in merged["messages"]} & {m["id"] for m in sources}
    assert len({m["id"] for m in merged["messages"]}) == 6


def test_merge_counts_a_repeated_source_once(store):
    a = _session_with(store, "A", ["2024-01-01T10:00:00Z", "2024-01-01T10:01:00Z"])
    b = _session_with(store, "B", ["2024-01-01T10:02:00Z"])

    merged = store.get(store.merge([a, b, a]))

    assert [m["content"] for m in merged["messages"]] == ["A0", "A1", "B0"]
    assert merged["metadata"]["merged_from"] == [a, b]


def test_merge_keeps_the_original_source_of_merged_messages(store):
    a = _session_with(store, "A", ["2024-01-01T10:00:00Z"])
    b = _session_with(store, "B", ["2024-01-01T10:01:00Z"])
    c = _session_with(store, "C", ["2024-01-01T10:02:00Z"])
    ab = store.merge([a, b])

    merged = store.get(store.merge([ab, c]))

    assert [m["source_session_id"] for m in merged["messages"]] == [a, b, c]


def test_merge_unknown_or_empty_creates_nothing(store):
    a = _session_with(store, "A", ["2024-01-01T10:00:00Z"])
    before = store.summaries(limit=None)
    messages_before = row_counts(store)["messages"]

    with pytest.raises(SessionNotFoundError):
        store.merge([a, str(uuid.uuid4())])
    with pytest.raises(ValueError):
        store.merge([])
    with pytest.raises(TypeError):
        store.merge(a)

    assert store.summaries(limit=None) == before
    assert row_counts(store)["messages"] == messages_before


def test_count_and_model_counts(store):
    a = store.create(metadata={"p": 1})
    b = store.create(metadata={"p": "1"})
    store.append_message(a, "user", "q")
    store.append_message(a, "assistant", "r1", model_id="openai:x")
    store.append_message(a, "assistant", "r2", model_id="openai:x")
    store.append_message(a, "assistant", "r3", model_id="llamacpp:y")
    store.append_message(b, "assistant", "no model")
    assert store.count() == 2 and store.count(filter_metadata={"p": 1}) == 1
    assert store.count(filter_metadata={"p": 2}) == 0
    assert store.model_counts([a, b]) == {a: {"openai:x": 2, "llamacpp:y": 1}, b: {}}
    assert store.model_counts([]) == {}


# ---------------------------------------------------------------------------------------------- authors (teams)
def test_sessions_and_messages_record_their_author(store_url, monkeypatch):
    from oblix_nb.sessions import open_store

    monkeypatch.setenv("OBLIX_USER", "ana")
    ana = open_store(store_url)
    bob = open_store(store_url, author="bob")
    try:
        assert (ana.author, bob.author) == ("ana", "bob")
        mine = ana.create(title="ana's")
        theirs = bob.create(title="bob's")
        ana.append_message(theirs, "user", "ana writes in bob's session")
        bob.append_messages(theirs, [{"role": "assistant", "content": "bob answers"}])

        assert [s["id"] for s in ana.summaries(author="ana")] == [mine]
        assert [s["id"] for s in ana.summaries(author="bob")] == [theirs]
        assert ana.summaries(author="nobody") == [] and ana.count(author="bob") == 1
        assert {s["id"]: s["author"] for s in bob.summaries(with_author=True)} == {mine: "ana", theirs: "bob"}
        assert "author" not in ana.summaries()[0]  # the reference summary keys are unchanged
        assert "author" not in ana.get(theirs)["messages"][0]  # and so is the session JSON
        rows = ana.message_rows([theirs])
        assert [(r[4], r[-1]) for r in rows] == [("ana writes in bob's session", "ana"), ("bob answers", "bob")]
        assert [r[4] for r in ana.message_rows(author="bob")] == ["bob answers"]
        copy_id = bob.copy(theirs)  # a copy is bob's session; its messages keep who wrote them
        assert ana.summaries(author="bob", limit=1)[0]["id"] == copy_id
        assert [r[-1] for r in ana.message_rows([copy_id])] == ["ana", "bob"]
        with pytest.raises(TypeError):
            ana.summaries(author=3)
    finally:
        ana.close()
        bob.close()


def test_author_defaults_to_the_os_user(store_url, monkeypatch):
    import getpass

    from oblix_nb.sessions import open_store

    monkeypatch.delenv("OBLIX_USER", raising=False)
    s = open_store(store_url)
    try:
        assert s.author == getpass.getuser()
        sid = s.create()
        assert s.summaries(author=getpass.getuser())[0]["id"] == sid
    finally:
        s.close()


def test_client_filters_by_author_in_lists_and_dataframes(store_url, tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    from oblix_nb import OblixClient

    monkeypatch.setenv("OBLIX_DATABASE_URL", store_url)
    ana = OblixClient(home=tmp_path / "ana", author="ana")
    bob = OblixClient(home=tmp_path / "bob", author="bob")
    try:
        assert ana.sessions.url == bob.sessions.url  # one shared store, selected by the environment
        a = ana.sessions.create(title="a")
        b = bob.sessions.create(title="b")
        ana.append_message(b, "user", "hello bob")
        assert [s["id"] for s in bob.list_sessions(author="ana")] == [a]
        frame = bob.sessions_df(author="bob")
        assert frame["session_id"].tolist() == [b] and frame["author"].tolist() == ["bob"]
        assert set(bob.sessions_df()["author"]) == {"ana", "bob"}
        messages = bob.messages_df(author="ana")
        assert messages["content"].tolist() == ["hello bob"] and messages["author"].tolist() == ["ana"]
    finally:
        ana.sessions.close()
        bob.sessions.close()


def test_upsert_message_updates_a_checkpoint_in_place(store):
    session_id = store.create()
    store.append_message(session_id, "user", "question")
    store.upsert_message(session_id, "assistant", "par", id="r1", partial=True)
    store.upsert_message(session_id, "assistant", "partial\x00 reply", id="r1", partial=True)
    store.append_message(session_id, "user", "next")
    final = store.upsert_message(session_id, "assistant", "partial reply, finished", id="r1", model_id="m")

    messages = store.messages(session_id)
    assert [m["content"] for m in messages] == ["question", "partial reply, finished", "next"]
    assert messages[1] == final and "partial" not in final
    assert store.summaries()[0]["message_count"] == 3
    assert [r["id"] for r in store.search("finished")] == [session_id]
    with pytest.raises(TypeError):
        store.upsert_message(session_id, "assistant", "x")
    with pytest.raises(SessionNotFoundError):
        store.upsert_message(str(uuid.uuid4()), "assistant", "x", id="r2")


# ---------------------------------------------------------------- for the widgets: sort, title filter, one summary
def test_summaries_sort_orders_and_title_filter(store):
    ids = {}
    for title, n in (("beta", 2), ("Alpha", 0), ("gamma_1", 5), ("100% alpha", 1)):
        ids[title] = store.create(title=title)
        for i in range(n):
            store.append_message(ids[title], "assistant", f"r{i}", model_id=f"m:{title}")
    titles = lambda rows: [r["title"] for r in rows]  # noqa: E731
    assert titles(store.summaries(order="title", descending=False)) == ["100% alpha", "Alpha", "beta", "gamma_1"]
    assert titles(store.summaries(order="messages"))[:2] == ["gamma_1", "beta"]
    assert titles(store.summaries(order="models", descending=False))[0] == "Alpha"  # no model: first
    assert titles(store.summaries(order="updated"))[0] == "100% alpha"
    assert titles(store.summaries(order="created", descending=False))[0] == "beta"
    assert set(titles(store.summaries(title_contains="ALPHA"))) == {"Alpha", "100% alpha"}
    assert titles(store.summaries(title_contains="%")) == ["100% alpha"]   # LIKE wildcards are literal
    assert titles(store.summaries(title_contains="a_1")) == ["gamma_1"]
    assert store.summaries(title_contains="_x") == []
    assert store.count(title_contains="alpha") == 2 and store.count() == 4
    assert titles(store.summaries(limit=1, offset=1, order="title", descending=False)) == ["Alpha"]
    with pytest.raises(ValueError):
        store.summaries(order="nope")
    one = store.summary(ids["beta"])
    assert one == next(s for s in store.summaries() if s["id"] == ids["beta"])
    with pytest.raises(SessionNotFoundError):
        store.summary(str(uuid.uuid4()))


def test_change_token(store, tmp_path):
    from oblix_nb.sessions import open_store

    token = store.change_token()
    assert store.change_token() == token
    sid = store.create(title="x")
    assert store.change_token() != token
    token = store.change_token()
    other = open_store(store.url)
    try:
        assert store.change_token() == token      # opening another connection writes nothing
        other.append_message(sid, "user", "hi")
    finally:
        other.close()
    assert store.change_token() != token          # another connection's commit
    token = store.change_token()
    with pytest.raises(Exception):
        store.append_message(str(uuid.uuid4()), "user", "no such session")
    assert store.change_token() == token          # a failed write commits nothing


# ---------------------------------------------------------------------------------------------- settings
def test_settings_round_trip(store):
    assert store.get_setting("alias:fast", "none") == "none"
    store.set_setting("alias:fast", "openai:smollm2")
    store.set_setting("alias:deep", {"model": "x", "n": [1, 2.5, None]})
    store.set_setting("budget:\"q\\\x00", 3)
    assert store.get_setting("alias:fast") == "openai:smollm2"
    assert store.settings("alias:") == {"alias:deep": {"model": "x", "n": [1, 2.5, None]},
                                        "alias:fast": "openai:smollm2"}
    assert store.get_setting("budget:\"q\\\x00") == 3 and "budget:\"q\\\x00" in store.settings()
    assert store.delete_setting("alias:fast") is True and store.delete_setting("alias:fast") is False
    with pytest.raises(TypeError):
        store.set_setting("k", object())


def test_settings_are_per_user_in_a_shared_postgres_store(pg_url):
    from oblix_nb.sessions import open_store

    ana, bob = open_store(pg_url, author="ana"), open_store(pg_url, author="bob")
    try:
        ana.set_setting("price:openai:gpt", {"in": 1.0})
        assert bob.get_setting("price:openai:gpt") is None and bob.settings() == {}
        bob.set_setting("price:openai:gpt", {"in": 9.0})
        assert ana.get_setting("price:openai:gpt") == {"in": 1.0}
    finally:
        ana.close()
        bob.close()


def test_default_listing_reads_the_newest_rows_through_the_index(store):
    if store.engine == "sqlite":
        text = plan(store, "SELECT id FROM sessions ORDER BY updated_at DESC, seq DESC LIMIT 50")
        assert "sessions_by_updated" in text and "TEMP B-TREE" not in text
        return
    seen = statements_during(store, lambda: store.summaries(limit=50))
    listing = next(s for s in seen if "ORDER BY" in s)
    text = plan(store, listing.replace("%s", "?"), (50, 0))
    assert "sessions_by_updated" in text and "Sort" not in text, text
    seen = statements_during(store, lambda: store.summaries(limit=50, author="ana"))
    text = plan(store, next(s for s in seen if "ORDER BY" in s).replace("%s", "?"), ("ana", 50, 0))
    assert "sessions_by_author" in text and "Sort" not in text, text


# ---------------------------------------------------------------------------------------------- usage log
def test_usage_log_records_and_sums_spend(store_url):
    pytest.importorskip("pandas")
    from oblix_nb.sessions import open_store, usage

    ana, bob = open_store(store_url, author="ana"), open_store(store_url, author="bob")
    try:
        reply = {"model_id": "claude:x", "session_id": None, "request_id": "r1",
                 "metrics": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.25}}
        usage.record(ana, reply, "cloud")
        usage.record(ana, {**reply, "metrics": {"input_tokens": 1, "cost_estimate_usd": 0.5}}, "cloud", True)
        usage.record(bob, {**reply, "metrics": {"cost_usd": 2.0}}, "cloud")
        assert usage.spent(ana) == pytest.approx(0.75 if ana.engine == "postgresql" else 2.75)
        frame = usage.usage_df(ana, by="model")
        assert frame["replies"].tolist() == ([2] if ana.engine == "postgresql" else [3])
        assert frame["input_tokens"].tolist() == [11] and len(usage.usage_df(ana, by="day")) == 1
    finally:
        ana.close()
        bob.close()
