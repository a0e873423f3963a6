"""client.sessions_df / client.messages_df: columns, dtypes, filters; pandas imported only when called."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from oblix_nb import OblixClient, SessionNotFoundError, runtime
from oblix_nb.sessions.frames import MESSAGE_COLUMNS, SESSION_COLUMNS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tmp_path, store_url):
    """A client on each store engine (conftest's ``store_url``): the same frames from SQLite and PostgreSQL."""
    c = OblixClient(home=tmp_path / "home", database_url=store_url)
    yield c
    c.sessions.close()


def seed(c):
    a = runtime.run(c.create_session("alpha", metadata={"team": "red", "n": 1, "ok": True, "score": 0.5}))
    b = runtime.run(c.create_session("beta", metadata={"team": "blue", "n": 2, "tags": ["x"]}))
    runtime.run(c.create_session("empty"))
    metrics = {"time_to_first_token": 0.25, "tokens_per_second": 80.0, "total_latency": 1.5,
               "input_tokens": 12, "output_tokens": 40}
    c.append_message(a, "user", "hello", timestamp="2026-01-02T03:04:05.678Z", request_id="r1")
    c.append_message(a, "assistant", "hi there", model_id="llamacpp:smollm2-135m", metrics=metrics,
                     routing={"target": "local", "reason": "local: test"}, request_id="r1")
    c.append_message(b, "user", "question")
    c.append_message(b, "assistant", "half an ans", model_id="openai:gpt-x", partial=True,
                     metrics={"time_to_first_token": 0.1, "output_tokens": None},
                     routing={"target": "cloud", "reason": "cloud: test"})
    return a, b


def test_messages_df_columns_and_dtypes(client):
    a, b = seed(client)
    df = client.messages_df()
    assert list(df.columns) == MESSAGE_COLUMNS
    assert len(df) == 4
    assert list(df["session_id"]) == [a, a, b, b]
    assert list(df["session_title"]) == ["alpha", "alpha", "beta", "beta"]
    assert isinstance(df["role"].dtype, pd.CategoricalDtype)
    assert isinstance(df["model_id"].dtype, pd.CategoricalDtype)
    assert isinstance(df["route_target"].dtype, pd.CategoricalDtype)
    assert str(df["timestamp"].dtype).startswith("datetime64") and str(df["timestamp"].dt.tz) == "UTC"
    assert df["timestamp"].iloc[0] == pd.Timestamp("2026-01-02T03:04:05.678Z")
    assert df["input_tokens"].dtype == "Int64" and df["output_tokens"].dtype == "Int64"
    assert df["time_to_first_token"].dtype == "float64" and df["tokens_per_second"].dtype == "float64"
    assert df["partial"].dtype == bool
    reply = df.iloc[1]
    assert reply["role"] == "assistant" and reply["content"] == "hi there"
    assert reply["model_id"] == "llamacpp:smollm2-135m" and reply["route_target"] == "local"
    assert reply["time_to_first_token"] == 0.25 and reply["tokens_per_second"] == 80.0
    assert reply["input_tokens"] == 12 and reply["output_tokens"] == 40 and reply["request_id"] == "r1"
    assert list(df["partial"]) == [False, False, False, True]
    assert pd.isna(df["output_tokens"].iloc[3]) and pd.isna(df["tokens_per_second"].iloc[3])
    assert pd.isna(df["model_id"].iloc[0]) and pd.isna(df["time_to_first_token"].iloc[0])
    # groupby on the categorical works as expected
    per_model = df[df.role == "assistant"].groupby("model_id", observed=True)["time_to_first_token"].mean()
    assert per_model.to_dict() == {"llamacpp:smollm2-135m": 0.25, "openai:gpt-x": 0.1}


def test_messages_df_selects_sessions(client):
    a, b = seed(client)
    assert list(client.messages_df(a)["content"]) == ["hello", "hi there"]
    assert len(client.messages_df([b, a])) == 4
    assert len(client.messages_df([])) == 0
    with pytest.raises(SessionNotFoundError):
        client.messages_df([a, "no-such-session"])


def test_empty_store(client):
    df = client.messages_df()
    assert list(df.columns) == MESSAGE_COLUMNS and len(df) == 0
    assert str(df["timestamp"].dtype).startswith("datetime64")
    s = client.sessions_df()
    assert len(s) == 0 and list(s.columns) == SESSION_COLUMNS


def test_sessions_df_expands_metadata(client):
    a, b = seed(client)
    s = client.sessions_df()
    assert len(s) == 3
    assert list(s.columns[:len(SESSION_COLUMNS)]) == SESSION_COLUMNS
    assert {"team", "n", "ok", "score", "tags"} <= set(s.columns)
    assert str(s["created_at"].dt.tz) == "UTC"
    assert s["message_count"].dtype == "Int64"
    assert s["n"].dtype == "Int64" and s["ok"].dtype == "boolean" and s["score"].dtype == "Float64"
    row = s.set_index("session_id").loc[a]
    assert row["team"] == "red" and row["n"] == 1 and bool(row["ok"]) is True
    assert s.set_index("session_id").loc[b, "tags"] == ["x"]
    assert list(s["session_id"]) == [r["id"] for r in client.list_sessions()]  # same order as list_sessions


def test_sessions_df_filter_and_limit(client):
    a, b = seed(client)
    assert list(client.sessions_df(filter_metadata={"team": "red"})["session_id"]) == [a]
    assert list(client.sessions_df(filter_metadata={"n": 2})["session_id"]) == [b]
    assert len(client.sessions_df(filter_metadata={"n": "2"})) == 0
    assert len(client.sessions_df(limit=2)) == 2


def test_metadata_key_clashing_with_a_base_column(client):
    runtime.run(client.create_session("x", metadata={"title": "meta title"}))
    s = client.sessions_df()
    assert s["title"].iloc[0] == "x" and s["meta_title"].iloc[0] == "meta title"


def test_pandas_is_imported_only_when_called(tmp_path):
    code = ("import sys, oblix_nb\n"
            f"c = oblix_nb.OblixClient(home={str(tmp_path)!r})\n"
            "c.list_sessions()\n"
            "assert 'pandas' not in sys.modules\n"
            "c.messages_df()\n"
            "assert 'pandas' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO))
