"""Cascades on real models: the embedded SmolLM2 (exact option scoring) into llama_cpp.server on loopback,
priced as the paid tier; execute() confidence; evaluate() with a live cascade. Structure and bounds only."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from oblix_nb import ModelType, OblixClient

pytestmark = [pytest.mark.server, pytest.mark.slow]
LOCAL = "llamacpp:smollm2-135m"
SPEC = "mood happy|sad|angry"
ROWS = pd.DataFrame({"text": ["I won the lottery today!", "My dog died.", "They cancelled my flight again!"],
                     "gold": ["happy", "sad", "angry"]}, index=["a", "b", "c"])


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


async def hook_both(client, openai_server) -> str:
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    cloud = f"openai:{openai_server.model}"
    client.set_price(cloud, input=1.0, output=2.0)
    return cloud


async def test_real_cascade_thresholds_bound_escalation(client, openai_server):
    cloud = await hook_both(client, openai_server)
    data = ROWS[["text"]]
    kw = dict(schema=SPEC, max_tokens=16, temperature=0, progress=False)
    never = await client.map(data, "Mood of: {text}", cascade=[LOCAL, cloud], min_confidence=0.0, **kw)
    always = await client.map(data, "Mood of: {text}", cascade=[LOCAL, cloud], min_confidence=1.0, **kw)
    for out in (never, always):
        assert out.index.equals(data.index) and out["error"].isna().all(), out["error"].tolist()
        assert set(out["mood"]) <= {"happy", "sad", "angry"}
        assert [len(a) for a in out["attempt_costs"]] == [1 + int(e) for e in out["escalated"]]
    # threshold 0: the local answer is always good enough (exact scoring gives a known confidence)
    assert not never["escalated"].any() and (never["model_id"] == LOCAL).all() and (never["cost_usd"] == 0).all()
    assert never["confidence"].between(0, 1).all()
    # threshold 1: nothing is that sure, every row goes on and is paid for
    assert always["escalated"].all() and (always["model_id"] == cloud).all() and (always["cost_usd"] > 0).all()
    assert (always["attempts"] >= 2).all()
    again = await client.map(data, "Mood of: {text}", cascade=[LOCAL, cloud], min_confidence=1.0, **kw)
    assert again["cached"].all()
    assert again["escalated"].tolist() == always["escalated"].tolist()
    assert again["cost_usd"].tolist() == pytest.approx(always["cost_usd"].tolist())


async def test_real_execute_confidence_and_cascade(client, openai_server):
    cloud = await hook_both(client, openai_server)
    r = await client.execute("Mood of: I won!", schema=SPEC, max_tokens=16, stream=False, model_id=LOCAL)
    assert 0 <= r["confidence"] <= 1 and r["parsed"]["mood"] in {"happy", "sad", "angry"}
    r = await client.execute("Mood of: I won!", schema=SPEC, max_tokens=16, stream=False,
                             cascade=[LOCAL, cloud], min_confidence=1.0)
    assert r["escalated"] is True and r["model_id"] == cloud and len(r["cascade"]) == 2
    assert r["cascade"][0]["cost_usd"] == 0.0 and r["cascade"][1]["cost_usd"] > 0


async def test_real_evaluate_live_cascade(client, openai_server):
    cloud = await hook_both(client, openai_server)
    table = await client.evaluate(ROWS, "Mood of: {text}", truth="gold", schema="gold happy|sad|angry",
                                  cascade=[LOCAL, cloud], thresholds=[0.0, 1.0], cascade_run="live",
                                  max_tokens=16)
    live = table[table["cascade_run"] == "live"]
    assert list(live["threshold"]) == [0.0, 1.0] and list(live["escalated_share"]) == [0.0, 1.0]
    assert table["cascade_run"].isin(["live"]).sum() == 2 and not (table["cascade_run"] == "simulated").any()
    assert live["accuracy"].between(0, 1).all() and not math.isnan(live.iloc[1]["cost_usd"])
    fig = client.plot_evaluation(table)
    assert fig.axes
