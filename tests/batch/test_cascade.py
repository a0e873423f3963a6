"""Cascades (map/execute with cascade=...), confidence columns, and what a map row's answer is made of.

Logic tests on fast in-test backends that go through the real engine, routing, budgets and store: an "exact"
stand-in whose option log-probabilities are set per prompt (so a row's confidence is known in advance), a
priced "cloud" stand-in, and one without log-probabilities (confidence NaN). Real-model runs of cascades are in
test_cascade_models.py."""
from __future__ import annotations

import asyncio
import json
import math

import pandas as pd
import pytest

from oblix_nb import NoModelHookedError, OblixClient
from oblix_nb.batch import META_COLUMNS, MapJob, PromptTemplate
from oblix_nb.models.base import ModelBackend, ModelType, Usage

LABELS = ["pos", "neg", "neutral"]


class Scripted(ModelBackend):
    """Answers ``{"label": <answer(prompt)>}``; an "exact" scorer whose chosen option has probability
    ``sure(prompt)`` (the rest shared). Streams its reply in ``chunks`` pieces ``gap`` seconds apart."""

    model_type = ModelType.OPENAI

    def __init__(self, name, *, target="local", answer=None, sure=None, logprobs=True, chunks=1, gap=0.0,
                 fail=None, reply=None):
        super().__init__(name, target=target, context_window=4096)
        self.answer = answer or (lambda p: "pos")
        self.sure = sure or (lambda p: 0.9)
        self.logprob_method = "exact" if logprobs else None
        self.chunks, self.gap, self.fail, self.reply = chunks, gap, fail, reply
        self.calls = 0
        self.prompts: list[str] = []

    async def connect(self):
        pass

    def _prompt(self, messages):
        return next(m["content"] for m in messages if m["role"] == "user")

    async def stream(self, messages, params):
        self.calls += 1
        prompt = self._prompt(messages)
        self.prompts.append(prompt)
        if self.fail is not None:
            raise self.fail
        text = self.reply(messages) if self.reply else json.dumps({"label": self.answer(prompt)})
        step = max(1, len(text) // self.chunks)
        for i in range(0, len(text), step):
            if self.gap:
                await asyncio.sleep(self.gap)
            yield text[i:i + step]
        yield Usage(10, 5, "server", "server", "stop")

    async def score_continuations(self, messages, prefix, continuations):
        prompt = self._prompt(messages)
        chosen = json.dumps(self.answer(prompt))
        p = self.sure(prompt)
        rest = (1 - p) / max(1, len(continuations) - 1)
        return [[math.log(p if c == chosen else max(rest, 1e-9))] for c in continuations]


def hook(client, *backends):
    for b in backends:
        client._models[b.model_id] = b


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


SCHEMA = "label pos|neg|neutral"


def frame(n=6):
    return pd.DataFrame({"text": [f"item {i} {'sure' if i % 2 == 0 else 'unsure'}" for i in range(n)]},
                        index=pd.Index([f"r{i}" for i in range(n)], name="id"))


def local_and_cloud(client, **cloud_kw):
    local = Scripted("small", sure=lambda p: 0.95 if " sure" in p else 0.4, answer=lambda p: "neg")
    cloud = Scripted("big", target="cloud", answer=lambda p: "pos", **cloud_kw)
    hook(client, local, cloud)
    client.set_price("openai:big", 1.0, 2.0)
    return local, cloud


# ------------------------------------------------------------------------------------------ cascades
async def test_cascade_escalates_rows_under_the_threshold_and_says_so(client):
    local, cloud = local_and_cloud(client)
    df = frame(6)
    out = await client.map(df, "Classify: {text}", schema=SCHEMA, cascade=["openai:small", "openai:big"],
                           min_confidence=0.8, progress=False)
    assert out.index.equals(df.index)
    sure = [" sure" in t for t in df["text"]]
    assert out["escalated"].tolist() == [not s for s in sure]
    assert out["model_id"].tolist() == ["openai:small" if s else "openai:big" for s in sure]
    assert out["label"].tolist() == ["neg" if s else "pos" for s in sure]
    assert local.calls == 6 and cloud.calls == 3
    assert out["error"].isna().all() and out["cascade_note"].isna().all()
    # confidence of the kept answer: the local one's where kept; the cloud's (also scored) where escalated
    for s, c in zip(sure, out["confidence"]):
        assert c == pytest.approx(0.95 if s else 0.9)
    # the cost of every attempt: local 0, cloud (10 in, 5 out) at $1/$2 per million
    for s, attempts, cost in zip(sure, out["attempt_costs"], out["cost_usd"]):
        assert [a["model_id"] for a in attempts] == (["openai:small"] if s else ["openai:small", "openai:big"])
        assert attempts[0]["cost_usd"] == 0.0
        assert cost == pytest.approx(0.0 if s else 20e-6)
    # token counts cover every attempt
    assert out["input_tokens"].tolist() == [10 if s else 20 for s in sure]
    # every attempt is stored: escalated rows have both exchanges
    msgs = client.messages_df()
    replies = msgs[msgs["role"] == "assistant"]
    assert len(replies) == 9


async def test_cascade_is_cached_and_resumes_with_the_same_columns(client):
    local, cloud = local_and_cloud(client)
    df = frame(4)
    kw = dict(schema=SCHEMA, cascade=["openai:small", "openai:big"], min_confidence=0.8, progress=False)
    first = await client.map(df, "Classify: {text}", **kw)
    calls = (local.calls, cloud.calls)
    again = await client.map(df, "Classify: {text}", **kw)
    assert (local.calls, cloud.calls) == calls and again["cached"].all()
    cols = ["label", "model_id", "escalated", "cost_usd", "confidence", "attempts"]
    pd.testing.assert_frame_equal(first[cols], again[cols])
    assert [len(a) for a in again["attempt_costs"]] == [len(a) for a in first["attempt_costs"]]
    # another threshold is another batch (nothing taken from the first one's rows)
    other = await client.map(df, "Classify: {text}", **{**kw, "min_confidence": 0.3})
    assert not other["cached"].any() and not other["escalated"].any()


async def test_unknown_confidence_escalates(client):
    local = Scripted("nolp", logprobs=False, answer=lambda p: "neg")
    cloud = Scripted("big", target="cloud")
    hook(client, local, cloud)
    out = await client.map(frame(3), "{text}", schema=SCHEMA, cascade=["openai:nolp", "openai:big"],
                           progress=False)
    assert out["escalated"].all() and (out["model_id"] == "openai:big").all()


async def test_invalid_first_answer_escalates(client):
    local = Scripted("small", reply=lambda m: "not json at all")
    cloud = Scripted("big", target="cloud")
    hook(client, local, cloud)
    out = await client.map(frame(2), "{text}", schema=SCHEMA, cascade=["openai:small", "openai:big"],
                           min_confidence=0.5, progress=False)
    assert out["escalated"].all() and out["error"].isna().all() and (out["label"] == "pos").all()
    assert local.calls == 4  # the local model's retry came first
    assert (out["attempts"] == 3).all()


async def test_over_budget_keeps_the_local_answer_and_says_so(client):
    local, cloud = local_and_cloud(client)
    client.set_budget(0.0, per="day")
    out = await client.map(frame(4), "{text}", schema=SCHEMA, cascade=["openai:small", "openai:big"],
                           min_confidence=0.8, progress=False)
    assert cloud.calls == 0
    assert out["error"].isna().all() and (out["model_id"] == "openai:small").all() and not out["escalated"].any()
    unsure = out[[" unsure" in t for t in frame(4)["text"]]]
    assert unsure["cascade_note"].str.contains("BudgetExceededError").all()
    assert out.loc[~out.index.isin(unsure.index), "cascade_note"].isna().all()
    assert (out["label"] == "neg").all()


async def test_unreachable_next_tier_keeps_the_local_answer(client):
    local, cloud = local_and_cloud(client, fail=ConnectionRefusedError("refused"))
    out = await client.map(frame(2), "{text}", schema=SCHEMA, cascade=["openai:small", "openai:big"],
                           progress=False)
    assert out["error"].isna().all() and (out["model_id"] == "openai:small").all()
    assert out["cascade_note"].iloc[1].startswith("not escalated to openai:big")


@pytest.mark.parametrize("kw, exc", [
    (dict(cascade=["openai:small"]), ValueError),
    (dict(cascade=["openai:small", "openai:nope"]), NoModelHookedError),
    (dict(cascade=["openai:small", "openai:big"], min_confidence=1.5), ValueError),
    (dict(cascade=["openai:small", "openai:big"], min_confidence=True), ValueError),
    (dict(cascade=["openai:small", "openai:small"]), ValueError),
    (dict(cascade=["openai:small", "openai:big"], model_id="openai:big"), ValueError),
    (dict(min_confidence=0.5), ValueError),
    (dict(cascade="openai:small"), ValueError),
    (dict(cascade=[1, 2]), TypeError),
])
async def test_bad_cascade_arguments_fail_before_any_call(client, kw, exc):
    local, cloud = local_and_cloud(client)
    with pytest.raises(exc):
        await client.map(frame(2), "{text}", schema=SCHEMA, progress=False, **kw)
    assert local.calls == cloud.calls == 0


async def test_execute_reports_confidence_and_runs_a_cascade(client):
    local, cloud = local_and_cloud(client)
    r = await client.execute("Classify: item sure", schema=SCHEMA, stream=False, model_id="openai:small")
    assert r["parsed"] == {"label": "neg"} and r["confidence"] == pytest.approx(0.95)
    r = await client.execute("Classify: item unsure", schema=SCHEMA, stream=False,
                             cascade=["openai:small", "openai:big"], min_confidence=0.8)
    assert r["escalated"] is True and r["model_id"] == "openai:big" and r["parsed"] == {"label": "pos"}
    assert [a["model_id"] for a in r["cascade"]] == ["openai:small", "openai:big"]
    assert r["cascade"][1]["cost_usd"] == pytest.approx(20e-6)
    r = await client.execute("Classify: item sure", schema=SCHEMA, stream=False,
                             cascade=["openai:small", "openai:big"], min_confidence=0.8)
    assert r["escalated"] is False and r["model_id"] == "openai:small"
    with pytest.raises(ValueError):
        await client.execute("x", stream=False, cascade=["openai:small"])


async def test_several_enum_fields_give_a_confidence_column_each(client):
    hook(client, Scripted("small", reply=lambda m: '{"a": "x", "b": "y"}', answer=lambda p: "x"))
    out = await client.map(frame(2), "{text}", schema="a x|y, b x|y", progress=False)
    assert {"a_confidence", "b_confidence"} <= set(out.columns) and "confidence" not in out.columns
    assert out["a_confidence"].dtype == "float64"


async def test_schema_field_named_confidence_wins(client):
    hook(client, Scripted("small", reply=lambda m: '{"label": "pos", "confidence": 0.3}'))
    out = await client.map(frame(2), "{text}", schema="label pos|neg, confidence float", progress=False)
    assert out["confidence"].tolist() == [0.3, 0.3]


# ------------------------------------------------------------------------------- what a row is made of
async def test_integer_and_float_parameters_share_a_cache_key(client):
    b = Scripted("small")
    hook(client, b)
    df = frame(3)
    await client.map(df, "{text}", temperature=0, top_p=1, max_tokens=8, progress=False)
    again = await client.map(df, "{text}", temperature=0.0, top_p=1.0, max_tokens=8, progress=False)
    assert again["cached"].all() and b.calls == 3
    assert len(client.list_sessions()) == 1
    other = await client.map(df, "{text}", temperature=0.5, max_tokens=8, progress=False)
    assert not other["cached"].any()


@pytest.mark.parametrize("template, near", [
    ("Describe {descripton} of {name}", "description"),
    ("{Name}: {description}", "name"),
    ("Only {descriptoin}", "description"),
    ("{name} {nmae}", "name"),
])
async def test_a_misspelled_field_raises_before_any_call(client, template, near):
    b = Scripted("small")
    hook(client, b)
    df = pd.DataFrame({"name": ["a", "b"], "description": ["x", "y"]})
    with pytest.raises(ValueError, match=rf"\{{{near}\}}"):
        await client.map(df, template, progress=False)
    assert b.calls == 0


def test_unrelated_braces_are_still_left_as_written():
    t = PromptTemplate('{name}: {x} {"a": 1} {{name}} {dt}', ["name", "description"])
    assert t.render(("A", "d")) == 'A: {x} {"a": 1} {name} {dt}'


async def test_attempts_column_explains_tokens_above_max_tokens(client):
    n = {}

    def flaky(messages):
        p = next(m["content"] for m in messages if m["role"] == "user")
        n[p] = n.get(p, 0) + 1
        return '{"label": "pos"}' if n[p] > 1 or "good" in p else '{"label": '

    b = Scripted("small", reply=flaky)
    hook(client, b)
    df = pd.DataFrame({"t": ["good", "retry"]})
    out = await client.map(df, "{t}", schema=SCHEMA, max_tokens=5, progress=False)
    assert out["attempts"].tolist() == [1, 2]
    assert out["output_tokens"].tolist() == [5, 10]  # above max_tokens: the attempts column says why
    again = await client.map(df, "{t}", schema=SCHEMA, max_tokens=5, progress=False)
    assert again["cached"].all() and again["attempts"].tolist() == [1, 2]


async def test_the_schema_instruction_is_stored_once_as_a_system_message(client):
    hook(client, Scripted("small"))
    df = frame(3)
    await client.map(df, "{text}", schema=SCHEMA, system="Be terse.", progress=False)
    await client.map(pd.concat([df, frame(5).iloc[3:]]), "{text}", schema=SCHEMA, system="Be terse.",
                     progress=False)
    msgs = client.messages_df()
    systems = msgs[msgs["role"] == "system"]
    assert len(systems) == 1 and systems["content"].iloc[0].startswith("Be terse.")
    assert "label" in systems["content"].iloc[0]  # the schema's instruction: what the model saw
    # a later execute() in that session is not held to it (it is tagged as the batch's instruction)
    assert systems["request_id"].iloc[0].startswith("map-")


async def test_batch_titles_tell_batches_apart(client):
    hook(client, Scripted("small"), Scripted("other"))
    df = frame(3)
    await client.map(df, "Classify this\n{text}", schema=SCHEMA, model_id="openai:small", progress=False)
    await client.map(df, "Classify this\n{text}", schema="label a|b", model_id="openai:small", progress=False)
    await client.map(df, "Classify this\n{text}", model_id="openai:other", progress=False)
    await client.map(frame(2), "Classify this\n{text}", model_id="openai:other", progress=False)  # same batch
    titles = [s["title"] for s in client.list_sessions()]
    assert len(titles) == 3 and len(set(titles)) == 3
    assert all(t.startswith("map ") and "Classify this" in t for t in titles)


async def test_map_rows_record_real_time_to_first_token(client):
    hook(client, Scripted("small", chunks=4, gap=0.05))
    out = await client.map(frame(2), "{text}", progress=False)
    msgs = client.messages_df()
    replies = msgs[msgs["role"] == "assistant"]
    assert len(replies) == 2
    for ttft, total, tps in zip(replies["time_to_first_token"], replies["total_latency"],
                                replies["tokens_per_second"]):
        assert 0 < ttft < total and total - ttft >= 0.1
        assert tps == pytest.approx(5 / (total - ttft))
    assert out["error"].isna().all()


async def test_progress_rate_is_the_decoding_rate(client):
    hook(client, Scripted("small", chunks=4, gap=0.05))
    job = MapJob(client, frame(2), "{text}", progress=False)
    await job.drive()
    rate = float(job._postfix().split(", ")[-1].split()[0])
    # 5 tokens over ~0.15 s between first and last chunk: ~33 tok/s (the wall clock would give ~12)
    assert 15 < rate < 40


def test_meta_columns_include_attempts():
    assert "attempts" in META_COLUMNS


class TopLogprobs(Scripted):
    """A server-like stand-in: log-probabilities only with a generation (``top_logprobs``)."""

    def __init__(self, name, p, **kw):
        super().__init__(name, **kw)
        self.logprob_method = "top_logprobs"
        self.p, self.logprob_calls = p, 0

    async def complete_with_logprobs(self, messages, params, top_logprobs=20):
        from oblix_nb.models.base import TokenLogprob

        self.logprob_calls += 1
        label = self.answer(self._prompt(messages))
        others = [o for o in LABELS if o != label]
        rest = (1 - self.p) / len(others)
        tokens = [TokenLogprob('{"label": ', 0.0),
                  TokenLogprob(f'"{label}"', math.log(self.p), [(f'"{o}"', math.log(rest)) for o in others]),
                  TokenLogprob("}", 0.0)]
        return "".join(t.text for t in tokens), Usage(10, 3, "server", "server", "stop"), tokens


@pytest.mark.parametrize("p, escalated", [(0.9, False), (0.5, True)])
async def test_a_server_first_stage_is_scored_with_a_logprobs_call(client, p, escalated):
    first = TopLogprobs("srv", p, answer=lambda prompt: "neg")
    cloud = TopLogprobs("big", 0.99, target="cloud")
    hook(client, first, cloud)
    out = await client.map(frame(2), "{text}", schema=SCHEMA, cascade=["openai:srv", "openai:big"],
                           min_confidence=0.8, progress=False)
    assert first.logprob_calls == 2 and out["escalated"].tolist() == [escalated] * 2
    # the first answer's confidence is in its attempt either way
    assert [a[0]["confidence"]["confidence"] for a in out["attempt_costs"]] == pytest.approx([p] * 2)
    # the last stage is not re-asked: nothing decides on its confidence (NaN in map without logprobs)
    assert cloud.logprob_calls == 0
    if escalated:
        assert out["confidence"].isna().all()
    else:
        assert out["confidence"].tolist() == pytest.approx([p] * 2)
    plain = await client.map(frame(2), "{text}", schema=SCHEMA, model_id="openai:srv", progress=False)
    assert plain["confidence"].isna().all() and first.logprob_calls == 2


def test_an_interrupted_map_sync_raises_a_short_keyboard_interrupt(tmp_path, capsys):
    """The API path raises KeyboardInterrupt (not CancelledError) carrying the note; its traceback ends in
    map's own frames, not in the waiting machinery (futures, threading)."""
    import _thread
    import threading
    import traceback

    c = OblixClient(home=tmp_path)
    hook(c, Scripted("small", chunks=2, gap=0.1))
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt) as info:
        c.map_sync([f"line {i}" for i in range(30)], "{value}", progress=False)
    timer.join()
    assert "rows are finished and stored" in str(info.value)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert all("concurrent" not in f.filename and "threading" not in f.filename for f in frames)
    assert len(frames) <= 5 and info.value.__context__ is None or info.value.__suppress_context__
    assert capsys.readouterr().err.count("map interrupted") == 1
    runtime_run = __import__("oblix_nb.runtime", fromlist=["run"]).run
    runtime_run(c.shutdown())
