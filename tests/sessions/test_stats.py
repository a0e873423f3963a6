"""client.stats(): every column against a frame computed by hand (pandas over the generated messages, not over
the store), on stores of several shapes; windows, metadata filters, updates, deletes, migration, bad input."""
from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from oblix_nb import OblixClient
from oblix_nb.sessions import stats as stats_module
from oblix_nb.sessions.sqlite.migrations import MIGRATIONS, STATS_PENDING, statements

COLUMNS = stats_module.STATS_COLUMNS
DAY0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def stamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def generate(seed: int, models: list[str], days: list[int], sessions: int, per_session: int):
    """Sessions of prompts and replies; returns ``(sessions, requests)``: ``sessions`` as
    ``[(title, metadata, messages)]`` and one dict per request with what the store should count."""
    rng = random.Random(seed)
    out, requests = [], []
    for s in range(sessions):
        messages = []
        metadata = {"team": f"t{s % 3}", "n": s}
        for i in range(per_session):
            ts = DAY0 + timedelta(days=rng.choice(days), seconds=rng.uniform(0, 86399))
            request_id = f"r{s}-{i}" if rng.random() > 0.1 else None  # some prompts appended by hand
            messages.append({"role": "user", "content": "q", "timestamp": stamp(ts), "request_id": request_id})
            if request_id and rng.random() < 0.08:  # no reply: failed on every candidate
                requests.append({"session": s, "timestamp": stamp(ts), "model_id": None, "route": None,
                                 "reply": False, "team": metadata["team"]})
                continue
            model = rng.choice(models)
            ttft = rng.choice([None, rng.uniform(0.01, 3.0), rng.uniform(0.01, 0.2)])
            tps = rng.choice([None, rng.uniform(1, 200)])
            inp, out_tokens = rng.choice([None, rng.randint(1, 10 ** 5)]), rng.choice([None, rng.randint(0, 900)])
            cost = rng.choice([None, "absent", rng.uniform(0, 0.05), 0])
            metrics = {"time_to_first_token": ttft, "tokens_per_second": tps, "input_tokens": inp,
                       "output_tokens": out_tokens}
            if cost != "absent":
                metrics["cost_usd"] = cost
            error = rng.random() < 0.1
            if error:
                metrics["error"] = "ConnectionError: reset"
            if rng.random() < 0.05:
                metrics["time_to_first_token"] = "fast"  # wrong type: not a number, not counted
                ttft = None
            route = rng.choice(["local", "cloud", None])
            fallback = rng.random() < 0.15
            routing = None if route is None else {"target": route, "model_id": model,
                                                  "fallback_from": "x:y" if fallback else None}
            partial = error or rng.random() < 0.1
            reply_ts = ts + timedelta(milliseconds=rng.randint(1, 500))
            messages.append({"role": "assistant", "content": "a", "timestamp": stamp(reply_ts), "model_id": model,
                             "metrics": metrics, "routing": routing, "partial": partial,
                             "request_id": request_id})
            requests.append({"session": s, "timestamp": stamp(reply_ts), "model_id": model,
                             "route": route, "reply": True, "error": error, "partial": partial,
                             "fallback": fallback and routing is not None, "ttft": ttft, "tps": tps,
                             "input_tokens": inp, "output_tokens": out_tokens,
                             "cost_usd": None if cost == "absent" else cost, "team": metadata["team"]})
        out.append((f"session {s}", metadata, messages))
    return out, requests


def load(client: OblixClient, sessions) -> list[str]:
    ids = []
    for title, metadata, messages in sessions:
        sid = client.sessions.create(title=title, metadata=metadata)
        client.sessions.append_messages(sid, [{k: v for k, v in m.items() if v is not None} for m in messages])
        ids.append(sid)
    return ids


def expected(requests: list[dict], by: str, ids: list[str], titles: list[str]) -> pd.DataFrame:
    """The stats frame computed by hand with pandas from the generated requests."""
    df = pd.DataFrame(requests)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    for column in ("error", "partial", "fallback"):
        df[column] = df[column].fillna(False).astype(bool)
    df["key"] = {"model": df["model_id"], "route": df["route"],
                 "session": df["session"].map(lambda s: ids[s]), "day": df["timestamp"].str[:10]}[by]
    rows = {}
    for key, g in df.groupby(df["key"].fillna("\0none"), sort=False):
        replies = g[g["reply"]]
        costs = replies["cost_usd"].dropna().astype(float)
        ttft = replies["ttft"].dropna().astype(float)
        tps = replies["tps"].dropna().astype(float)
        rows[None if key == "\0none" else key] = {
            "requests": len(g), "errors": int((~g["reply"]).sum() + replies["error"].sum()),
            "partial": int(replies["partial"].sum()), "fallbacks": int(replies["fallback"].sum()),
            "ttft_p50": ttft.quantile(0.5) if len(ttft) else np.nan,
            "ttft_p95": ttft.quantile(0.95) if len(ttft) else np.nan,
            "tokens_per_second_p50": tps.quantile(0.5) if len(tps) else np.nan,
            "input_tokens": int(replies["input_tokens"].dropna().sum()),
            "output_tokens": int(replies["output_tokens"].dropna().sum()),
            "cost_usd": costs.sum() if len(costs) else np.nan,
            "cost_unknown": int(replies["cost_usd"].isna().sum()),
        }
    frame = pd.DataFrame(list(rows.values()), index=pd.Index(list(rows), dtype=object), columns=COLUMNS)
    if by == "session":
        frame.insert(0, "title", [titles[ids.index(k)] for k in frame.index])
    return frame


def compare(actual: pd.DataFrame, want: pd.DataFrame, by: str) -> None:
    if by == "day":
        actual = actual[actual["requests"] > 0].copy()
        actual.index = actual.index.strftime("%Y-%m-%d")
    assert list(actual.columns) == list(want.columns)
    assert sorted(actual.index, key=str) == sorted(want.index, key=str)
    want = want.reindex(actual.index)
    for column in want.columns:
        a, w = actual[column], want[column]
        if column == "title":
            assert list(a) == list(w)
        elif column in stats_module.COUNT_COLUMNS:
            assert a.dtype == np.int64, column
            assert list(a) == [int(x) for x in w], column
        else:
            assert a.dtype == np.float64, column
            np.testing.assert_allclose(a.to_numpy(), w.to_numpy(dtype=float), rtol=1e-12, atol=1e-15,
                                       err_msg=column)


SHAPES = {
    "few models": dict(models=["llamacpp:smollm2-135m", "openai:smollm2:135m"], days=[0, 1, 2], sessions=6,
                       per_session=30),
    "many models, long ids, empty days": dict(
        models=[f"openai:org-{i}/a-rather-long-fine-tuned-model-identifier-v{i}.{i * 7}-instruct-2026-03-{i:02d}"
                for i in range(25)] + ["ollama:x"],
        days=[0, 3, 4, 11, 30], sessions=12, per_session=40),
    "one reply": dict(models=["m"], days=[5], sessions=1, per_session=1),
}


@pytest.fixture
def client(tmp_home, store_url):
    """A client on each store engine (conftest's ``store_url``): the same frames from SQLite and PostgreSQL."""
    c = OblixClient(home=tmp_home, database_url=store_url)
    yield c
    c.sessions.close()


def sqlite_only(client, why: str) -> None:
    if client.sessions.engine != "sqlite":
        pytest.skip(f"SQLite-specific: {why} (PostgreSQL computes stats from the messages in one query)")


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("by", ["model", "route", "session", "day"])
def test_stats_equal_a_hand_computed_frame(client, shape, by):
    sessions, requests = generate(14, **SHAPES[shape])
    ids = load(client, sessions)
    actual = client.stats(by=by)
    assert actual.index.name == {"model": "model_id", "route": "route", "session": "session_id", "day": "day"}[by]
    compare(actual, expected(requests, by, ids, [t for t, _, _ in sessions]), by)


def test_by_day_has_a_row_for_every_day_between(client):
    sessions, requests = generate(3, **SHAPES["many models, long ids, empty days"])
    load(client, sessions)
    frame = client.stats(by="day")
    assert str(frame.index.tz) == "UTC"
    assert list(frame.index) == list(pd.date_range(DAY0, DAY0 + timedelta(days=30), freq="D"))
    empty = frame.loc[frame.index.difference([DAY0 + timedelta(days=d) for d in (0, 3, 4, 11, 30)])]
    assert len(empty) == 26
    assert (empty[list(stats_module.COUNT_COLUMNS)] == 0).all().all()
    assert empty[["ttft_p50", "cost_usd"]].isna().all().all()
    # a window fills from `since` to the day before `until`, even where there is no data
    window = client.stats(by="day", since=DAY0 - timedelta(days=2), until=DAY0 + timedelta(days=2))
    assert list(window.index) == list(pd.date_range(DAY0 - timedelta(days=2), periods=4, freq="D"))
    assert list(window["requests"][:2]) == [0, 0]


@pytest.mark.parametrize("by", ["model", "day", "session"])
def test_since_until_and_filter_metadata(client, by):
    sessions, requests = generate(7, **SHAPES["many models, long ids, empty days"])
    ids = load(client, sessions)
    since, until = DAY0 + timedelta(days=3, hours=12), DAY0 + timedelta(days=11, hours=6)
    lo, hi = stamp(since), stamp(until)
    chosen = [r for r in requests if lo <= r["timestamp"] < hi and r["team"] == "t1"]
    actual = client.stats(by=by, since=since, until=until.isoformat(), filter_metadata={"team": "t1"})
    want = expected(chosen, by, ids, [t for t, _, _ in sessions])
    if by == "day":
        assert actual.index[0] == pd.Timestamp("2026-03-04", tz="UTC")
        assert actual.index[-1] == pd.Timestamp("2026-03-12", tz="UTC")
    compare(actual, want, by)
    assert client.stats(by=by, filter_metadata={"team": "nobody"}).pipe(
        lambda f: f[f["requests"] > 0]).empty


def test_relative_since_and_dates(client):
    sid = client.sessions.create()
    now = datetime.now(timezone.utc)
    for age_days in (0, 2, 10):
        ts = stamp(now - timedelta(days=age_days, minutes=1))
        client.sessions.append_message(sid, "assistant", "a", model_id="m", timestamp=ts,
                                       metrics={"time_to_first_token": 0.1 * (age_days + 1)})
    assert client.stats(since="7d").loc["m", "requests"] == 2
    assert client.stats(since="36h").loc["m", "requests"] == 1
    assert client.stats(since=timedelta(days=30)).loc["m", "requests"] == 3
    assert client.stats(until=(now - timedelta(days=5)).date()).loc["m", "requests"] == 1
    week = client.stats(by="day", since="7d")
    assert len(week) == 8 and week.index[-1] == pd.Timestamp(now.date(), tz="UTC")
    assert week["requests"].sum() == 2


def test_percentiles_match_pandas_quantile_exactly(client):
    sid = client.sessions.create()
    rng = random.Random(5)
    values = [rng.lognormvariate(0, 1) for _ in range(1001)]
    client.sessions.append_messages(sid, [
        {"role": "assistant", "content": "a", "model_id": "m",
         "metrics": {"time_to_first_token": v, "tokens_per_second": v * 10}} for v in values])
    row = client.stats().loc["m"]
    s = pd.Series(values)
    assert row["ttft_p50"] == s.quantile(0.5)
    assert row["ttft_p95"] == s.quantile(0.95)
    assert row["tokens_per_second_p50"] == (s * 10).quantile(0.5)


def test_stats_follow_appends_updates_and_deletes(client):
    store = client.sessions
    a, b = store.create(), store.create()
    store.append_message(a, "user", "q", request_id="r1")
    assert client.stats().loc[None, "errors"] == 1          # asked, no reply yet
    # a streamed reply: checkpointed partial, then replaced by the finished reply under the same id
    store.upsert_message(a, "assistant", "par", id="m1", model_id="x", partial=True, request_id="r1",
                         metrics={"output_tokens": 1})
    frame = client.stats()
    assert list(frame.index) == ["x"] and frame.loc["x", "partial"] == 1 and frame.loc["x", "errors"] == 0
    store.upsert_message(a, "assistant", "partial reply, finished", id="m1", model_id="x", request_id="r1",
                         metrics={"output_tokens": 7, "cost_usd": 0.5})
    frame = client.stats()
    assert frame.loc["x", ["requests", "partial", "output_tokens", "cost_usd", "cost_unknown"]].tolist() == \
        [1, 0, 7, 0.5, 0]
    store.append_message(b, "assistant", "b", model_id="y", metrics={"output_tokens": 3})
    assert client.stats()["requests"].to_dict() == {"x": 1, "y": 1}
    assert store.delete(b)
    assert list(client.stats().index) == ["x"]
    # the deleted reply had the highest seq: a new message reusing it is still counted
    c = store.create()
    store.append_message(c, "assistant", "c", model_id="z", metrics={"output_tokens": 2})
    assert client.stats()["output_tokens"].to_dict() == {"x": 7, "z": 2}
    assert store.delete(a)
    assert client.stats()["requests"].to_dict() == {"z": 1}


def test_a_version_1_database_is_migrated_with_its_history(tmp_home):
    path = tmp_home / "sessions.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements(MIGRATIONS[0][1]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO sessions (seq, id, title, created_at, updated_at) "
                 "VALUES (1, 's1', 't', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000000Z')")
    rows = [(1, "u1", "user", "q", "2026-01-01T00:00:00.000Z", None, None, None, None, "r1"),
            (1, "a1", "assistant", "a", "2026-01-01T00:00:01.000Z", "m", '{"time_to_first_token": 0.5, '
             '"input_tokens": 4, "cost_usd": 0.25}', '{"target": "cloud", "fallback_from": "n"}', None, "r1"),
            (1, "u2", "user", "q", "2026-01-02T00:00:00.000Z", None, None, None, None, "r2")]
    conn.executemany("INSERT INTO messages (session_seq, id, role, content, timestamp, model_id, metrics, routing,"
                     " partial, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    client = OblixClient(home=tmp_home)
    try:
        frame = client.stats(by="route")
        assert frame["requests"].to_dict() == {"cloud": 1, None: 1}
        assert frame.loc["cloud", ["fallbacks", "ttft_p50", "input_tokens", "cost_usd"]].tolist() == [1, 0.5, 4, 0.25]
        assert frame.loc[None, "errors"] == 1
    finally:
        client.sessions.close()


def test_empty_store_and_bad_arguments(client):
    for by in ("model", "route", "session", "day"):
        frame = client.stats(by=by)
        assert frame.empty and list(frame.columns) == (["title"] if by == "session" else []) + COLUMNS
    with pytest.raises(ValueError, match="by must be one of"):
        client.stats(by="week")
    with pytest.raises(ValueError, match="since"):
        client.stats(since="last tuesday")
    with pytest.raises(ValueError, match="after until"):
        client.stats(since="2026-02-01", until="2026-01-01")
    with pytest.raises(TypeError, match="since"):
        client.stats(since=3.5)
    with pytest.raises(TypeError, match="filter_metadata"):
        client.stats(filter_metadata=["team"])


def test_stats_never_load_messages_into_python(client):
    """The frame comes from grouped SQL: the rows fetched are per group, not per message."""
    sqlite_only(client, "the stats tables' catch-up")
    sessions, _ = generate(1, **SHAPES["few models"])
    load(client, sessions)
    client.stats()  # index the new messages first
    fetched = []
    client.sessions._conn.set_trace_callback(fetched.append)
    try:
        client.stats(by="model")
    finally:
        client.sessions._conn.set_trace_callback(None)
    # only the check for new messages to index reads `messages` (its max seq)
    assert [sql for sql in fetched if "FROM messages" in sql] == [STATS_PENDING]
    assert any("GROUP BY" in sql for sql in fetched)


def test_indexing_in_small_chunks_gives_the_same_frame(client, monkeypatch):
    """The stats tables are filled chunk by chunk; a prompt and its reply in different chunks still pair."""
    sqlite_only(client, "the stats tables are filled in chunks")
    import oblix_nb.sessions.sqlite.stats as store_module

    monkeypatch.setattr(store_module, "STATS_CHUNK_ROWS", 7)
    sessions, requests = generate(11, **SHAPES["few models"])
    ids = load(client, sessions[:3])
    client.stats()  # index part of the history, then add the rest
    ids += load(client, sessions[3:])
    for by in ("model", "session"):
        compare(client.stats(by=by), expected(requests, by, ids, [t for t, _, _ in sessions]), by)


@pytest.mark.parametrize("by", ["model", "route", "session", "day"])
def test_percentiles_by_window_pass_equal_the_hand_computed_frame(client, monkeypatch, by):
    """Many groups take the one-pass window read instead of per-group OFFSET reads: same frame (None keys,
    windows and metadata filters included)."""
    sqlite_only(client, "the percentile read strategies")
    import oblix_nb.sessions.sqlite.stats as store_module

    monkeypatch.setattr(store_module, "_STATS_WINDOW_GROUPS", 0)
    sessions, requests = generate(5, **SHAPES["many models, long ids, empty days"])
    ids = load(client, sessions)
    titles = [t for t, _, _ in sessions]
    compare(client.stats(by=by), expected(requests, by, ids, titles), by)
    since = DAY0 + timedelta(days=3, hours=12)
    chosen = [r for r in requests if r["timestamp"] >= stamp(since) and r["team"] == "t2"]
    compare(client.stats(by=by, since=since, filter_metadata={"team": "t2"}), expected(chosen, by, ids, titles), by)
