"""client.map() and structured output: the logic, on fast in-test backends (real-model runs: test_batch_models.py).

The backends here are stand-ins with a known reply function, so alignment, caching, retries, fallback,
interrupts and concurrency can be checked exactly; they go through the same routing/fallback/store path as a
real backend."""
from __future__ import annotations

import asyncio
import json
import threading

import pandas as pd
import pytest

from oblix_nb import NoModelHookedError, OblixClient
from oblix_nb.batch import META_COLUMNS, MapJob, PromptTemplate, RowError
from oblix_nb.models.base import ModelBackend, ModelType, Usage
from oblix_nb.structured import SchemaError, StructuredOutputError, compile_schema, parse_spec


class FakeBackend(ModelBackend):
    """Replies ``reply(messages)`` after ``delay`` s; counts calls and the most calls in flight at once."""

    model_type = ModelType.OPENAI

    def __init__(self, name="fake", *, target="local", reply=None, delay=0.0, fail=None, in_process=False):
        super().__init__(name, target=target, context_window=4096)
        self.reply = reply or (lambda messages: "echo: " + messages[-1]["content"])
        self.delay, self.fail, self.in_process = delay, fail, in_process
        self.calls = self.inflight = self.max_inflight = 0
        self.seen: list[list[dict]] = []

    async def connect(self):
        pass

    async def stream(self, messages, params):
        self.calls += 1
        self.seen.append(messages)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            text = self.reply(messages)
        finally:
            self.inflight -= 1
        yield text
        yield Usage(7, 3, "server", "server", "stop")


def hook(client: OblixClient, *backends: ModelBackend) -> None:
    for b in backends:
        client._models[b.model_id] = b


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


def user_text(messages) -> str:
    return messages[-1]["content"]


# ------------------------------------------------------------------------------------------- alignment
ODD_INDEXES = {
    "duplicates": pd.Index(["a", "b", "a", "c", "b"]),
    "multiindex": pd.MultiIndex.from_tuples([("x", 2), ("x", 1), ("y", 1), ("x", 2), ("z", 0)], names=["k", "n"]),
    "datetime": pd.date_range("2026-01-01", periods=5, freq="D", tz="UTC"),
    "shuffled_ints": pd.Index([40, 3, 17, 3, -1]),
    "float": pd.Index([0.5, 0.25, 1.5, 2.0, 0.5]),
}


@pytest.mark.parametrize("kind", list(ODD_INDEXES))
async def test_result_sits_on_the_input_index_in_input_order(client, kind):
    hook(client, FakeBackend())
    texts = ["one", "two", "three", "one", "five"]
    df = pd.DataFrame({"text": texts, "n": range(5)}, index=ODD_INDEXES[kind])
    out = await client.map(df, "Q {text} #{n}", progress=False)
    assert out.index.equals(df.index) and out.index is not df.index
    assert list(out.columns) == ["response", "confidence", *META_COLUMNS]
    assert out["response"].tolist() == [f"echo: Q {t} #{i}" for i, t in enumerate(texts)]
    assert out["error"].isna().all() and (out["model_id"] == "openai:fake").all()
    assert out["input_tokens"].dtype == "Int64" and out["latency_s"].dtype == "float64"
    # positional concat with the input never misaligns, whatever the index
    joined = pd.concat([df.reset_index(drop=True), out.reset_index(drop=True)], axis=1)
    assert (joined["response"] == "echo: Q " + joined["text"] + " #" + joined["n"].astype(str)).all()


async def test_series_lists_and_empty_input(client):
    backend = FakeBackend()
    hook(client, backend)
    s = pd.Series(["x", None, "z"], index=[9, 9, 1], name="word")
    out = await client.map(s, "<{word}|{value}>", progress=False)
    assert out.index.equals(s.index) and out["response"].tolist() == ["echo: <x|x>", "echo: <|>", "echo: <z|z>"]
    out = await client.map(["a", "b"], "say {value}", progress=False)
    assert out.index.equals(pd.RangeIndex(2)) and out["response"].tolist() == ["echo: say a", "echo: say b"]
    out = await client.map([{"a": 1}, {"a": 2, "b": "B"}], "{a}/{b}", progress=False)
    assert out["response"].tolist() == ["echo: 1/", "echo: 2/B"]
    empty = await client.map(pd.DataFrame({"t": []}, index=pd.Index([], name="i")), "{t}", progress=False)
    assert len(empty) == 0 and empty.index.name == "i" and "response" in empty
    with pytest.raises(TypeError):
        await client.map(["a", {"b": 1}], "{value}", progress=False)
    with pytest.raises(TypeError):
        await client.map(42, "{value}", progress=False)


def test_template_is_brace_safe():
    t = PromptTemplate('{text} as JSON like {"label": "x"}; {{text}} {unknown} {{ {n}', ["text", "n"])
    assert t.render(("hi", 3)) == 'hi as JSON like {"label": "x"}; {text} {unknown} {{ 3'
    assert PromptTemplate("{review text}!", ["review text"]).render(("ok",)) == "ok!"
    assert PromptTemplate("{a}{b}", ["a", "b"]).render((float("nan"), None)) == ""
    with pytest.raises(ValueError, match="uses no field"):
        PromptTemplate("no fields {here}", ["text"])
    with pytest.raises(ValueError, match="ambiguous"):
        PromptTemplate("{a}", ["a", "a"], {"a"})
    with pytest.raises(ValueError):
        PromptTemplate("   ", ["a"])


async def test_callable_prompt_and_prompt_errors_are_row_errors(client):
    hook(client, FakeBackend())
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})

    def prompt(row):
        if row["a"] == 2:
            raise KeyError("nope")
        return f"{row['b']}={row['a']}" if row["a"] == 1 else ""

    out = await client.map(df, prompt, progress=False)
    assert out["response"].tolist()[0] == "echo: x=1"
    assert out["error"].isna().tolist() == [True, False, False]
    assert "KeyError" in out["error"][1] and "empty" in out["error"][2]
    assert pd.isna(out["response"][1])


# ------------------------------------------------------------------------------------------- schemas
def json_reply(messages) -> str:
    text = user_text(messages)
    return json.dumps({"label": text.split()[-1], "score": len(text) / 10, "reasons": [text[:3]], "n": len(text)})


class Review(__import__("pydantic").BaseModel):
    label: str
    score: float
    reasons: list[str]


SCHEMAS = {
    "spec": "label, score float, reasons list[str], n int",
    "dict": {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"},
                                              "reasons": {"type": "array", "items": {"type": "string"}},
                                              "n": {"type": "integer"}},
             "required": ["label", "score"]},
    "pydantic": Review,
}


@pytest.mark.parametrize("form", list(SCHEMAS))
async def test_each_schema_form_gives_typed_columns(client, form):
    backend = FakeBackend(reply=json_reply)
    hook(client, backend)
    df = pd.DataFrame({"t": ["good movie", "bad plot here"]}, index=["r1", "r1"])
    out = await client.map(df, "review: {t}", schema=SCHEMAS[form], progress=False)
    props = list(compile_schema(SCHEMAS[form]).properties)
    assert list(out.columns) == props + ["confidence"] + list(META_COLUMNS)
    assert out["label"].tolist() == ["movie", "here"] and out["error"].isna().all()
    assert out["score"].dtype == "float64" and out["score"].tolist() == [len("review: good movie") / 10,
                                                                          len("review: bad plot here") / 10]
    assert out["reasons"].tolist() == [["rev"], ["rev"]]
    if "n" in props:
        assert out["n"].dtype == "Int64"
    # the model was told the schema in a system message; the backend got it as a constraint
    system = backend.seen[0][0]
    assert system["role"] == "system" and json.dumps(compile_schema(SCHEMAS[form]).json_schema,
                                                     separators=(",", ":")) in system["content"]


def test_concise_spec_grammar():
    s = parse_spec("sentiment: pos|neg|neutral, stars int?, tags str[], ok bool, nested list[list[float]]")
    assert s["required"] == ["sentiment", "stars", "tags", "ok", "nested"] and s["additionalProperties"] is False
    assert s["properties"]["sentiment"] == {"type": "string", "enum": ["pos", "neg", "neutral"]}
    assert s["properties"]["stars"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert s["properties"]["nested"]["items"]["items"] == {"type": "number"}
    cols = compile_schema("sentiment pos|neg, stars int?, ok bool, tags list[str]").columns()
    assert cols == {"sentiment": "category", "stars": "Int64", "ok": "boolean", "tags": "object"}
    for bad in ["", "a, a", "a strange", "a list[str", "a x||y", "1abc", ", a"]:
        with pytest.raises(SchemaError):
            parse_spec(bad)
    for bad in [{}, {"type": "nope"}, 3.5, object, {"type": "object", "properties": {"x": set()}}]:
        with pytest.raises(SchemaError):
            compile_schema(bad)


def test_parse_accepts_wrapped_json_and_rejects_invalid():
    s = compile_schema("label, score float")
    assert s.parse('Sure!\n```json\n{"label": "a", "score": 1}\n```') == {"label": "a", "score": 1}
    assert s.parse('prefix {"label": "a", "score": 2.5} suffix') == {"label": "a", "score": 2.5}
    for bad in ["", "nothing here", '{"label": "a"}', '{"label": "a", "score": "high"}', '{"label": "a", "sc',
                '{"label": "a", "score": 1, "extra": 1}']:
        with pytest.raises(StructuredOutputError) as info:
            s.parse(bad)
        assert info.value.text == bad


async def test_schema_column_name_clash_is_refused(client):
    hook(client, FakeBackend())
    with pytest.raises(SchemaError, match="clash"):
        await client.map(["x"], "{value}", schema="label, error", progress=False)


async def test_invalid_output_is_retried_once_then_recorded(client):
    replies = {}

    def flaky(messages):
        text = messages[1]["content"] if len(messages) > 2 else user_text(messages)
        n = replies[text] = replies.get(text, 0) + 1
        if "always-bad" in text:
            return "I cannot answer in JSON, sorry"
        return '{"label": "ok", "score": 1}' if n > 1 else '{"label": "ok"'

    backend = FakeBackend(reply=flaky)
    hook(client, backend)
    df = pd.DataFrame({"t": ["fine", "always-bad"]})
    out = await client.map(df, "{t}", schema="label, score float", progress=False)
    assert backend.calls == 4
    assert out["label"].tolist()[0] == "ok" and out["error"].isna().tolist() == [True, False]
    assert out["error"][1].startswith("StructuredOutputError") and pd.isna(out["label"][1])
    assert out["output_tokens"].tolist() == [6, 6]  # both attempts counted
    # the retry saw the invalid reply and was told what was wrong
    retry = backend.seen[1]
    assert retry[-2]["role"] == "assistant" and "not valid" in retry[-1]["content"]
    # everything was stored: two exchanges per row, all carrying the row's key
    msgs = client.messages_df()
    assert (msgs["role"] == "system").sum() == 1  # the schema instruction, stored once (what the model saw)
    msgs = msgs[msgs["role"] != "system"]
    assert len(msgs) == 8 and msgs["request_id"].nunique() == 2
    # re-running takes the finished row from the store and retries the failed one
    out2 = await client.map(df, "{t}", schema="label, score float", progress=False)
    assert out2["cached"].tolist() == [True, False] and backend.calls == 6
    assert out2["label"][0] == "ok" and out2["score"][0] == 1.0


# ------------------------------------------------------------------------------------------- routing, errors
async def test_dead_model_falls_back_per_row_and_total_failure_is_recorded(client):
    dead = FakeBackend("dead", fail=ConnectionError("connection refused"))
    alive = FakeBackend("alive")
    hook(client, dead, alive)
    out = await client.map(["a", "b", "c"], "{value}", progress=False)
    assert out["error"].isna().all() and (out["model_id"] == "openai:alive").all()
    assert (out["route"] == "local").all() and dead.calls == 3
    await client.unhook_model("openai:alive")
    out = await client.map(["d", "e"], "{value}", progress=False)
    assert out["error"].str.contains("no model could answer").all() and out["response"].isna().all()
    with pytest.raises(RowError):
        await client.map(["f", "g"], "{value}", progress=False, on_error="raise")


async def test_forced_model_and_bad_arguments(client):
    a, b = FakeBackend("a"), FakeBackend("b", target="cloud")
    hook(client, a, b)
    out = await client.map(["x"], "{value}", model_id="openai:b", progress=False)
    assert out["model_id"][0] == "openai:b" and out["route"][0] == "cloud"
    for kwargs in [dict(model_id="nope:x"), dict(concurrency=0), dict(on_error="ignore"), dict(max_tokens=-1),
                   dict(temperature=9), dict(bogus=1), dict(system=3)]:
        with pytest.raises((ValueError, TypeError, NoModelHookedError)):
            await client.map(["x"], "{value}", progress=False, **kwargs)
    empty = OblixClient(home=client.home / "other")
    with pytest.raises(NoModelHookedError, match="no model is hooked"):
        await empty.map(["x"], "{value}", progress=False)


# ------------------------------------------------------------------------------------------- cache, resume
async def test_rerun_takes_rows_from_the_store_without_calling_a_model(client):
    backend = FakeBackend()
    hook(client, backend)
    df = pd.DataFrame({"t": [f"row {i}" for i in range(6)]})
    first = await client.map(df, "{t}", temperature=0.1, progress=False)
    assert backend.calls == 6 and not first["cached"].any()
    again = await client.map(df, "{t}", temperature=0.1, progress=False)
    assert backend.calls == 6 and again["cached"].all()
    pd.testing.assert_frame_equal(first.drop(columns="cached"), again.drop(columns="cached"))
    # more rows: only the new ones are called; a reordered frame still hits the cache
    bigger = pd.DataFrame({"t": [f"row {i}" for i in range(8)]}).iloc[::-1]
    out = await client.map(bigger, "{t}", temperature=0.1, progress=False)
    assert backend.calls == 8 and out["cached"].sum() == 6
    assert out["response"].tolist() == [f"echo: row {i}" for i in range(7, -1, -1)]
    # anything in the key changed: called again
    await client.map(df, "{t}!", temperature=0.1, progress=False)
    await client.map(df, "{t}", temperature=0.2, progress=False)
    await client.map(df, "{t}", temperature=0.1, max_tokens=5, progress=False)
    await client.map(df, "{t}", temperature=0.1, system="be brief", progress=False)
    assert backend.calls == 8 + 4 * 6
    await client.map(df, "{t}", temperature=0.1, progress=False, cache=False)
    assert backend.calls == 8 + 5 * 6
    # one batch session per distinct map, its metadata describing it
    batches = client.list_sessions(filter_metadata={"kind": "map"})
    assert len(batches) == 5
    meta = next(s for s in batches if s["metadata"]["template"] == "{t}!")["metadata"]
    assert meta["params"]["temperature"] == 0.1 and meta["schema"] is None and meta["oblix_map"]


async def test_identical_rows_are_called_once(client):
    backend = FakeBackend()
    hook(client, backend)
    out = await client.map(["same", "other", "same", "same"], "{value}", progress=False)
    assert backend.calls == 2 and out["response"].tolist()[::2] == ["echo: same", "echo: same"]


async def test_interrupted_batch_keeps_finished_rows_and_resumes(client):
    backend = FakeBackend(delay=0.05)
    hook(client, backend)
    df = pd.DataFrame({"t": [f"item {i}" for i in range(20)]}, index=pd.Index([i % 7 for i in range(20)]))
    task = asyncio.ensure_future(client.map(df, "{t}", concurrency=2, progress=False))
    while backend.calls < 7:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    stored = client.messages_df()
    finished = stored[stored.role == "assistant"]["request_id"].nunique()
    assert 4 <= finished <= 8 and (stored.role == "user").sum() == finished  # whole exchanges only
    calls_before = backend.calls
    out = await client.map(df, "{t}", concurrency=2, progress=False)
    assert backend.calls - calls_before == 20 - finished
    assert out["cached"].sum() == finished and out["error"].isna().all()
    assert out["response"].tolist() == [f"echo: item {i}" for i in range(20)]


def test_map_sync_from_a_thread_that_runs_an_event_loop(tmp_path):
    """A notebook cell runs inside the kernel's loop: map_sync must not nest or block on it."""
    c = OblixClient(home=tmp_path)
    hook(c, FakeBackend(delay=0.01))

    async def cell():
        assert asyncio.get_running_loop().is_running()
        return c.map_sync(pd.DataFrame({"t": ["a", "b"]}), "{t}", progress=False)

    out = asyncio.run(cell())
    assert out["response"].tolist() == ["echo: a", "echo: b"]
    c.map_sync(["x"], "{value}", progress=False)
    assert threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------------- concurrency, progress
async def test_concurrency_is_bounded_and_defaults_by_backend_kind(client):
    server = FakeBackend("server", delay=0.02)
    hook(client, server)
    await client.map([f"a{i}" for i in range(12)], "{value}", progress=False)
    assert server.max_inflight == 4
    server.max_inflight = 0
    await client.map([f"b{i}" for i in range(12)], "{value}", concurrency=7, progress=False)
    assert server.max_inflight == 7
    await client.unhook_model(server.model_id)
    local = FakeBackend("inproc", delay=0.01, in_process=True)
    hook(client, local)
    await client.map([f"c{i}" for i in range(6)], "{value}", progress=False)
    assert local.max_inflight == 1


async def test_progress_bar_counts_rows_errors_and_cached(client, capsys):
    hook(client, FakeBackend())
    await client.map(["a", "b"], "{value}")
    await client.map(["a", "b", "c"], "{value}")
    err = capsys.readouterr().err
    assert "3/3" in err and "cached=2" in err and "errors=0" in err and "tok/s" in err


# ------------------------------------------------------------------------------------------- execute(schema=)
async def test_execute_with_schema_returns_parsed(client):
    backend = FakeBackend(reply=json_reply)
    hook(client, backend)
    sid = await client.create_and_use_session("s")
    r = await client.execute("rate this: fine", schema=SCHEMAS["spec"], stream=False)
    assert r["parsed"] == json.loads(r["response"]) and r["parsed"]["label"] == "fine"
    r = await client.execute("rate this: fine", schema=Review, stream=False)
    assert isinstance(r["parsed"], Review) and r["parsed"].reasons == ["rat"]
    bad = FakeBackend("bad", reply=lambda m: "no json at all")
    hook(client, bad)
    with pytest.raises(StructuredOutputError) as info:
        await client.execute("x", schema={"type": "object"}, model_id="openai:bad", stream=False)
    assert bad.calls == 2 and info.value.response["model_id"] == "openai:bad"
    messages = client.load_session(sid)["messages"]
    assert sum(m["role"] != "system" for m in messages) == 8  # both attempts stored
    assert sum(m["role"] == "system" for m in messages) == 3  # each schema's instruction, stored once
    with pytest.raises(SchemaError):
        await client.execute("x", schema="a b c d", stream=False)


def test_job_memory_is_only_the_result(client):
    """Finished rows leave no prompt or per-row task state behind."""
    hook(client, FakeBackend())
    job = MapJob(client, [f"r{i}" for i in range(50)], "{value}", progress=False)
    assert len(job.prompts) == 50
    from oblix_nb import runtime

    runtime.run(job.run())
    assert job.prompts == {} and job.pending == {} and len(job.frame()) == 50


def test_kernel_interrupt_during_map_sync_keeps_finished_rows(tmp_path, capsys):
    """A kernel interrupt is a KeyboardInterrupt in the main thread while map_sync() waits."""
    import _thread

    c = OblixClient(home=tmp_path)
    backend = FakeBackend(delay=0.05)
    hook(c, backend)
    data = [f"line {i}" for i in range(30)]
    timer = threading.Timer(0.4, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        c.map_sync(data, "{value}", concurrency=2, progress=False)
    timer.join()
    assert "run the same map again to resume" in capsys.readouterr().err
    stored = c.messages_df()
    finished = int((stored.role == "assistant").sum())
    assert 0 < finished < 30 and (stored.role == "user").sum() == finished
    calls = backend.calls
    out = c.map_sync(data, "{value}", concurrency=2, progress=False)
    assert out["cached"].sum() == finished and backend.calls - calls == 30 - finished
    assert out["response"].tolist() == [f"echo: line {i}" for i in range(30)]


def test_store_last_replies(tmp_path):
    from oblix_nb.sessions import SessionStore

    store = SessionStore(tmp_path / "s.db")
    sid = store.create()
    store.append_messages(sid, [
        {"role": "user", "content": "q1", "request_id": "k1"},
        {"role": "assistant", "content": "a1", "request_id": "k1", "model_id": "m", "metrics": {"x": {"y": 1}},
         "routing": {"target": "local"}},
        {"role": "assistant", "content": "a1 again", "request_id": "k1", "metrics": {"x": {"y": 2}}},
        {"role": "assistant", "content": "cut", "request_id": "k2", "partial": True},
        {"role": "assistant", "content": "no key"},
    ])
    assert store.last_replies(sid, {"y": "$.x.y"}) == {"k1": ("a1 again", None, None, 2)}
    assert store.last_replies(sid) == {"k1": ("a1 again", None, None)}
    store.close()


def test_each_backend_turns_a_schema_into_its_own_constraint():
    from oblix_nb.models.ollama import OllamaBackend
    from oblix_nb.models.openai import OpenAIBackend, _strict_compatible

    schema = compile_schema("label a|b, score float, tags list[str], note str?").json_schema
    assert _strict_compatible(schema)
    assert not _strict_compatible(compile_schema(Review).json_schema)  # pydantic: no additionalProperties
    openai_backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    fmt = openai_backend.structured_output(schema)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema and fmt["json_schema"]["strict"]
    openai_backend._schema_style = "json_object"  # what a llama_cpp.server taught it
    assert openai_backend.structured_output(schema) == {"response_format": {"type": "json_object",
                                                                            "schema": schema}}
    assert OllamaBackend("m", "http://127.0.0.1:9").structured_output(schema) == {"format": schema}
    assert FakeBackend().structured_output(schema) == {} and FakeBackend.schema_enforcement is None
    pytest.importorskip("llama_cpp")
    from oblix_nb.models.llamacpp import LlamaCppBackend

    local = LlamaCppBackend("smollm2-135m")
    grammar = local.structured_output(schema)["grammar"]
    assert "root" in grammar._grammar and local.structured_output(dict(schema))["grammar"] is grammar  # cached


async def test_a_reply_that_cannot_be_stored_stays_in_the_result(client, monkeypatch):
    hook(client, FakeBackend())

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.sessions, "append_messages", full_disk)
    out = await client.map(["a", "b"], "{value}", progress=False)
    assert out["response"].tolist() == ["echo: a", "echo: b"]
    assert out["error"].str.startswith("reply not stored: OSError").all()
    monkeypatch.undo()
    again = await client.map(["a", "b"], "{value}", progress=False)
    assert not again["cached"].any() and again["error"].isna().all()
