"""client.map() and execute(schema=) on real models: the embedded SmolLM2, llama_cpp.server and the suite's
Ollama-API server, with grammar-constrained JSON; a server killed mid-batch. Asserts structure and types only."""
from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pandas as pd
import pytest

from oblix_nb import ModelType, OblixClient
from oblix_nb.localserver import start_openai_server
from oblix_nb.structured import compile_schema

pytestmark = [pytest.mark.server, pytest.mark.slow]
SPEC = "sentiment positive|negative|neutral, stars int"
REVIEWS = pd.DataFrame({"text": ["Great food and friendly staff.", "Cold soup, rude waiter.", "It was fine."]},
                       index=pd.MultiIndex.from_tuples([("mon", 1), ("mon", 1), ("tue", 7)], names=["day", "n"]))


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


def check_structured(out: pd.DataFrame, index) -> None:
    assert out.index.equals(index)
    assert out["error"].isna().all(), out["error"].tolist()
    assert set(out["sentiment"]) <= {"positive", "negative", "neutral"}
    assert out["sentiment"].dtype == "category" and out["stars"].dtype == "Int64"
    assert out["stars"].notna().all() and (out["output_tokens"] > 0).all() and (out["latency_s"] > 0).all()


async def test_embedded_model_grammar_constrained_map(client):
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    out = await client.map(REVIEWS, "Review: {text}\nRate it.", schema=SPEC, max_tokens=40, temperature=0.0,
                           progress=False)
    check_structured(out, REVIEWS.index)
    assert (out["model_id"] == "llamacpp:smollm2-135m").all() and (out["route"] == "local").all()
    again = await client.map(REVIEWS, "Review: {text}\nRate it.", schema=SPEC, max_tokens=40, temperature=0.0,
                             progress=False)
    assert again["cached"].all()
    pd.testing.assert_frame_equal(out.drop(columns="cached"), again.drop(columns="cached"))
    r = await client.execute("Rate: the best pizza in town.", schema=SPEC, max_tokens=40, stream=True,
                             sink=lambda text: None)
    assert r["parsed"]["sentiment"] in {"positive", "negative", "neutral"} and isinstance(r["parsed"]["stars"], int)


async def test_llama_cpp_server_map_and_execute(client, openai_server):
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    out = await client.map(REVIEWS, "Review: {text}\nRate it.", schema=SPEC, max_tokens=40, temperature=0.0,
                           progress=False)
    check_structured(out, REVIEWS.index)
    backend = client.models[f"openai:{openai_server.model}"]
    assert backend._schema_style == "json_object"  # llama_cpp.server takes json_object + schema, not json_schema
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["city", "year"]}
    r = await client.execute("Where and when were the first modern Olympics?", schema=schema, max_tokens=40,
                             stream=False)
    assert set(r["parsed"]) >= {"city", "year"} and isinstance(r["parsed"]["year"], int)


async def test_ollama_server_gets_the_schema_as_format(client, ollama_server):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.base_url)
    httpx.delete(ollama_server.url + "/_debug/requests")
    out = await client.map(REVIEWS, "Review: {text}\nRate it.", schema=SPEC, max_tokens=40, temperature=0.0,
                           progress=False)
    check_structured(out, REVIEWS.index)
    sent = httpx.get(ollama_server.url + "/_debug/requests", params={"path": "/api/chat"}).json()
    assert len(sent) >= 3 and all(r["body"]["format"] == compile_schema(SPEC).json_schema for r in sent)


async def test_server_killed_mid_batch_rows_fall_back_to_the_embedded_model(client):
    server = start_openai_server()
    try:
        await client.hook_model(ModelType.OPENAI, server.model, base_url=server.base_url, target="local")
        await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
        rows = pd.DataFrame({"t": [f"Say the number {i}." for i in range(16)]}, index=[i // 2 for i in range(16)])
        task = asyncio.ensure_future(client.map(rows, "{t}", max_tokens=8, concurrency=2, progress=False))
        while True:
            msgs = client.messages_df()
            if (msgs["role"] == "assistant").sum() >= 2 or task.done():
                break
            await asyncio.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        out = await task
    finally:
        server.stop()
    assert out.index.equals(rows.index)
    served = set(out["model_id"])
    assert f"openai:{server.model}" in served and "llamacpp:smollm2-135m" in served
    # a row in flight when the server died either failed mid-reply (recorded) or fell back; none is lost
    assert out["error"].isna().sum() >= len(rows) - 2
    assert (out["response"].notna() | out["error"].notna()).all()
    fell_back = out[out["model_id"] == "llamacpp:smollm2-135m"]
    assert (fell_back["error"].isna()).all()
