"""The reference page's session examples, run as written through OblixClient, and the session structure.

The examples are copied from the reference (docs "Sessions"); only "/path/to/..." became tmp paths and the
`client = OblixClient()` became `OblixClient(home=tmp_path)`.
"""
from __future__ import annotations

import copy
import json
import re
import uuid

import pytest

from oblix_nb import OblixClient, SessionNotFoundError
from oblix_nb.errors import InvalidSessionIdError

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# The reference's "Example session structure", verbatim.
REFERENCE_SESSION = {
    "id": "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a",
    "title": "Technical Support Chat",
    "created_at": "2023-07-15T14:30:22.123Z",
    "updated_at": "2023-07-15T14:35:46.789Z",
    "messages": [
        {
            "id": "msg_1",
            "role": "user",
            "content": "I'm having trouble installing the software.",
            "timestamp": "2023-07-15T14:30:22.123Z"
        },
        {
            "id": "msg_2",
            "role": "assistant",
            "content": "I'm sorry to hear that. What operating system are you using?",
            "timestamp": "2023-07-15T14:30:25.456Z"
        },
        {
            "id": "msg_3",
            "role": "user",
            "content": "I'm using Windows 11.",
            "timestamp": "2023-07-15T14:35:46.789Z"
        }
    ],
    "context": {
        "user_id": "user_789",
        "product": "Oblix SDK"
    },
    "metadata": {
        "category": "technical_support",
        "priority": "medium",
        "status": "active"
    }
}
SESSION_KEYS = ["id", "title", "created_at", "updated_at", "messages", "context", "metadata"]
SUMMARY_KEYS = ["id", "title", "created_at", "updated_at", "message_count", "metadata"]


@pytest.fixture
def client(tmp_path, store_url):
    """A client on each store engine (conftest's ``store_url``: SQLite, then PostgreSQL)."""
    c = OblixClient(home=tmp_path / "home", database_url=store_url)
    yield c
    c.sessions.close()


@pytest.fixture
def reference_file(tmp_path):
    path = tmp_path / "reference_session.json"
    path.write_text(json.dumps(REFERENCE_SESSION, indent=2), encoding="utf-8")
    return path


def assert_session_shape(data: dict) -> None:
    assert list(data) == SESSION_KEYS
    assert isinstance(data["id"], str) and isinstance(data["title"], str)
    assert TIMESTAMP.match(data["created_at"]) and TIMESTAMP.match(data["updated_at"])
    assert isinstance(data["messages"], list)
    assert isinstance(data["context"], dict) and isinstance(data["metadata"], dict)
    for message in data["messages"]:
        assert list(message)[:4] == ["id", "role", "content", "timestamp"]
        assert message["role"] in ("user", "assistant", "system")
        assert isinstance(message["content"], str)
        assert TIMESTAMP.match(message["timestamp"])


# ---------------------------------------------------------------------------------------------- the examples
async def test_create_session_examples(client):
    # Create a simple session
    session_id = await client.create_session()

    assert str(uuid.UUID(session_id)) == session_id
    data = client.load_session(session_id)
    assert re.fullmatch(r"Session \d{4}-\d\d-\d\d \d\d:\d\d UTC", data["title"])
    assert data["messages"] == [] and data["context"] == {} and data["metadata"] == {}
    assert data["created_at"] == data["updated_at"]

    # Create a session with title and metadata
    session_id = await client.create_session(
        title="Customer Support Chat",
        initial_context={"customer_id": "cust_123"},
        metadata={"category": "support", "priority": "high"}
    )

    data = client.load_session(session_id)
    assert data["title"] == "Customer Support Chat"
    assert data["context"] == {"customer_id": "cust_123"}
    assert data["metadata"] == {"category": "support", "priority": "high"}
    assert_session_shape(data)


async def test_create_and_use_session_example(client):
    # Create and set as active session in one call
    session_id = await client.create_and_use_session(
        title="Customer Support Chat",
        metadata={"category": "support"}
    )

    assert client.current_session_id == session_id
    assert client.get_session_metadata(session_id) == {"category": "support"}


async def test_use_session_example(client):
    session_id = await client.create_session()

    # Set the active session
    success = client.use_session(session_id)

    assert success is True and client.current_session_id == session_id
    assert client.use_session(str(uuid.uuid4())) is False
    assert client.current_session_id == session_id
    with pytest.raises(InvalidSessionIdError):
        client.use_session("../x")


async def test_load_session_example(client, reference_file, capsys):
    session_id = await client.import_session(str(reference_file))

    # Load an existing session
    session_data = client.load_session(session_id)
    print(f"Session title: {session_data['title']}")
    print(f"Message count: {len(session_data['messages'])}")

    assert capsys.readouterr().out == "Session title: Technical Support Chat\nMessage count: 3\n"


async def test_list_sessions_example(client, capsys):
    ids = [await client.create_session(title=f"chat {i}") for i in range(12)]

    # List recent sessions
    sessions = client.list_sessions(limit=10)
    for session in sessions:
        print(f"ID: {session['id']} | Title: {session['title']}")

    expected = [f"ID: {ids[i]} | Title: chat {i}" for i in range(11, 1, -1)]  # newest first
    assert capsys.readouterr().out.splitlines() == expected
    assert all(list(s) == SUMMARY_KEYS for s in sessions)
    assert [s["message_count"] for s in sessions] == [0] * 10


async def test_filter_metadata_example(client):
    wanted = await client.create_session(metadata={"category": "support", "priority": "high"})
    await client.create_session(metadata={"category": "support", "priority": "low"})
    await client.create_session(metadata={"category": "sales", "priority": "high"})
    await client.create_session()

    # Filter sessions by metadata
    support_sessions = client.list_sessions(
        filter_metadata={"category": "support", "priority": "high"}
    )

    assert [s["id"] for s in support_sessions] == [wanted]
    assert support_sessions[0]["metadata"] == {"category": "support", "priority": "high"}


async def test_delete_session_example(client, capsys):
    session_id = await client.create_and_use_session()

    # Delete a session
    success = client.delete_session(session_id)
    if success:
        print(f"Session {session_id} deleted")

    assert capsys.readouterr().out == f"Session {session_id} deleted\n"
    assert client.current_session_id is None
    assert client.delete_session(session_id) is False
    with pytest.raises(SessionNotFoundError):
        client.load_session(session_id)


async def test_update_session_metadata_example(client):
    session_id = await client.create_session(metadata={"category": "support", "status": "open"})

    # Update session metadata
    client.update_session_metadata(
        session_id,
        {"status": "resolved", "resolution_time": "2023-07-15T15:30:00Z"}
    )

    assert client.get_session_metadata(session_id) == {
        "category": "support", "status": "resolved", "resolution_time": "2023-07-15T15:30:00Z"}
    assert [s["id"] for s in client.list_sessions(filter_metadata={"status": "resolved"})] == [session_id]
    assert client.list_sessions(filter_metadata={"status": "open"}) == []


async def test_get_session_metadata_example(client, capsys):
    session_id = await client.create_session(
        metadata={"status": "resolved", "resolution_time": "2023-07-15T15:30:00Z"})

    # Get just the metadata
    metadata = client.get_session_metadata(session_id)
    if metadata.get("status") == "resolved":
        print(f"Resolution time: {metadata.get('resolution_time')}")

    assert capsys.readouterr().out == "Resolution time: 2023-07-15T15:30:00Z\n"


async def test_export_session_example(client, reference_file, tmp_path):
    session_id = await client.import_session(str(reference_file))
    target = tmp_path / "path" / "to" / "export" / "session.json"

    # Export session to a file
    await client.export_session(session_id, str(target))

    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == REFERENCE_SESSION
    assert text.startswith('{\n  "id": ')  # indent=2


async def test_import_session_example(client, reference_file):
    original = await client.import_session(str(reference_file))

    # Import a session from a file
    imported_id = await client.import_session(
        str(reference_file),
        new_id=True,
        use_immediately=True
    )

    assert imported_id != original and client.current_session_id == imported_id
    data = client.load_session(imported_id)
    assert [m["content"] for m in data["messages"]] == [m["content"] for m in REFERENCE_SESSION["messages"]]
    assert not {m["id"] for m in data["messages"]} & {"msg_1", "msg_2", "msg_3"}
    assert data["metadata"]["imported_from"]["session_id"] == REFERENCE_SESSION["id"]
    assert data["metadata"]["imported_from"]["file"] == str(reference_file.resolve())


async def test_copy_session_example(client, reference_file):
    session_id = await client.import_session(str(reference_file))

    # Create a copy of a session
    copy_id = await client.copy_session(
        session_id,
        new_title="Copy - Customer Onboarding Template",
        use_immediately=True
    )

    assert copy_id != session_id and client.current_session_id == copy_id
    data = client.load_session(copy_id)
    assert data["title"] == "Copy - Customer Onboarding Template"
    assert [m["content"] for m in data["messages"]] == [m["content"] for m in REFERENCE_SESSION["messages"]]
    assert data["metadata"]["copied_from"] == session_id


async def test_merge_sessions_example(client):
    session_id_1 = await client.create_session(title="Install issue")
    session_id_2 = await client.create_session(title="Billing")
    session_id_3 = await client.create_session(title="Follow-up")
    client.append_message(session_id_1, "user", "one", timestamp="2024-01-01T10:00:00Z")
    client.append_message(session_id_2, "user", "two", timestamp="2024-01-01T11:00:00Z")
    client.append_message(session_id_3, "user", "three", timestamp="2024-01-01T09:00:00Z")

    # Merge multiple sessions
    merged_id = await client.merge_sessions(
        [session_id_1, session_id_2, session_id_3],
        title="Combined Support Case",
        use_immediately=True
    )

    assert client.current_session_id == merged_id
    data = client.load_session(merged_id)
    assert data["title"] == "Combined Support Case"
    assert [m["content"] for m in data["messages"]] == ["three", "one", "two"]
    assert data["metadata"]["merged_from"] == [session_id_1, session_id_2, session_id_3]


# ---------------------------------------------------------------------------------------------- structure
async def test_reference_structure_round_trips_exactly(client, reference_file, tmp_path):
    session_id = await client.import_session(str(reference_file))
    data = client.load_session(session_id)

    assert data == REFERENCE_SESSION
    assert list(data) == SESSION_KEYS
    assert [list(m) for m in data["messages"]] == [["id", "role", "content", "timestamp"]] * 3
    assert_session_shape(data)
    exported = tmp_path / "out.json"
    await client.export_session(session_id, str(exported))
    assert list(json.loads(exported.read_text(encoding="utf-8"))) == SESSION_KEYS


async def test_new_session_structure_and_types(client):
    session_id = await client.create_session(title="Technical Support Chat",
                                             initial_context={"user_id": "user_789"},
                                             metadata={"priority": "medium"})
    client.append_message(session_id, "user", "I'm having trouble installing the software.")
    client.append_message(session_id, "assistant", "What operating system are you using?")

    data = client.load_session(session_id)

    assert_session_shape(data)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["updated_at"] >= data["created_at"]
    assert data["updated_at"] >= data["messages"][-1]["timestamp"]
    summary = client.list_sessions()[0]
    assert list(summary) == SUMMARY_KEYS
    assert summary["message_count"] == 2 and summary["updated_at"] == data["updated_at"]
    assert TIMESTAMP.match(summary["created_at"]) and TIMESTAMP.match(summary["updated_at"])


async def test_load_session_returns_an_independent_copy(client, reference_file):
    session_id = await client.import_session(str(reference_file))
    data = client.load_session(session_id)
    snapshot = copy.deepcopy(data)

    data["messages"].clear()
    data["metadata"]["status"] = "changed"

    assert client.load_session(session_id) == snapshot
