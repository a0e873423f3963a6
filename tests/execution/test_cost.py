"""Prices, reply costs, the usage log, budgets and the BudgetAgent: fast tests of the logic.

The models here are fakes (a backend class that replies with fixed text and server-style usage), so every cost is
known exactly; the same paths against a real Messages-API server are in test_claude.py.
"""
from __future__ import annotations

import math

import pytest

from oblix_nb import BudgetAgent, BudgetExceededError, ModelType, OblixClient
from oblix_nb.models.base import ModelBackend, Usage
from oblix_nb.pricing import (
    LOCAL_PRICE,
    Price,
    cost_label,
    format_cost,
    parse_price,
    price_table_info,
    reply_cost,
    table_price,
)
from oblix_nb.routing import decide
from oblix_nb.streaming import format_footer


class FakeBackend(ModelBackend):
    """Replies "ok ok ok" with exact (server-style) usage: ``input`` tokens in, 3 out."""
    model_type = ModelType.OPENAI

    def __init__(self, name: str, target: str, input_tokens: int = 1000, cached: int = 0):
        super().__init__(name, "http://127.0.0.1:9/v1", target=target, context_window=8192)
        self.input_tokens, self.cached, self.calls = input_tokens, cached, 0

    async def connect(self) -> None:
        pass

    async def stream(self, messages, params):
        self.calls += 1
        for word in ("ok", " ok", " ok"):
            yield word
        yield Usage(self.input_tokens, 3, "server", "server", "stop", cache_read_tokens=self.cached or None)


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


def hook(client, backend):
    client._models[backend.model_id] = backend
    return backend


def quiet(**kw):
    return {"sink": lambda t: None, **kw}


# ------------------------------------------------------------------------------------------------ the table

def test_table_has_date_sources_and_snapshot_matching_only():
    info = price_table_info()
    assert info["date"] and info["currency"] == "USD" and set(info["sources"]) == {"anthropic", "openai"}
    assert table_price("claude-sonnet-4-5-20250929") == table_price("claude-sonnet-4-5")
    assert table_price("gpt-4o-2024-08-06").input == 2.5 and table_price("gpt-4o-mini").input == 0.15
    assert table_price("claude-3-5-haiku-latest").output == 4.0
    for unknown in ("claude-opus-4-7", "gpt-4o-mini-tts", "smollm2:135m", "gpt-5.1-codex", ""):
        assert table_price(unknown) is None, unknown  # never priced like a look-alike


def test_price_math_and_validation():
    p = Price(3.0, 15.0, cached=0.3, cache_write=3.75)
    # 1000 read: 200 from cache, 100 written to it, 700 plain; 50 out
    assert p.cost(1000, 50, cache_read=200, cache_write=100) == pytest.approx(
        (700 * 3 + 200 * 0.3 + 100 * 3.75 + 50 * 15) / 1e6)
    assert Price(2.0, 8.0).cost(1000, 10, cache_read=500) == pytest.approx((1000 * 2 + 10 * 8) / 1e6)
    assert p.worst_case(1000, 100) == pytest.approx((1000 * 3.75 + 100 * 15) / 1e6)
    for bad in (-1, math.nan, math.inf, "3", True, None):
        with pytest.raises(ValueError):
            Price(bad, 1.0)
    with pytest.raises(ValueError, match="both"):
        parse_price({"input": 1})
    with pytest.raises(ValueError, match="unknown price field"):
        parse_price({"input": 1, "output": 2, "per": "token"})
    with pytest.raises(TypeError):
        parse_price(3.0)


def test_reply_cost_exact_estimated_unknown_local():
    exact = Usage(1000, 10, "server", "server")
    assert reply_cost(Price(1, 5), exact) == {"cost_usd": pytest.approx(0.00105), "cost_source": "table"}
    est = reply_cost(Price(1, 5), Usage(None, 10, "none", "estimate"))
    assert est["cost_usd"] is None and est["cost_estimate_usd"] == pytest.approx(0.00005)
    assert reply_cost(None, exact) == {"cost_usd": None, "cost_source": "unknown"}
    assert reply_cost(LOCAL_PRICE, Usage(None, None, "none", "none")) == {"cost_usd": 0.0, "cost_source": "local"}


def test_cost_labels():
    assert format_cost(0.000423) == "$0.00042" and format_cost(0.0123) == "$0.0123" and format_cost(12.5) == "$12.50"
    assert format_cost(0) == "$0" and format_cost(None) == "cost unknown"
    assert cost_label({"cost_usd": 0.0, "cost_source": "local"}) is None
    assert cost_label({"cost_usd": 0.002, "cost_source": "table"}) == "$0.002"
    assert cost_label({"cost_usd": None, "cost_estimate_usd": 0.002, "cost_source": "user"}).startswith("≈$0.002")
    assert cost_label({"cost_usd": None, "cost_source": "unknown"}) == "cost unknown (set_price)"
    footer = format_footer({"model_id": "claude:x", "metrics": {"cost_usd": 0.0015, "cost_source": "table"}})
    assert footer.endswith("$0.0015")
    from oblix_nb.notebook.widgets import badge_html
    assert "$0.0015" in badge_html("claude:x", {}, {"cost_usd": 0.0015, "cost_source": "table"})
    assert "$" not in badge_html("llamacpp:x", {}, {"cost_usd": 0.0, "cost_source": "local"})


# ------------------------------------------------------------------------------------------------ user prices

async def test_user_prices_persist_and_win(client, tmp_path):
    cloud = hook(client, FakeBackend("gpt-4o", "cloud"))
    local = hook(client, FakeBackend("mine", "local"))
    assert client.price_of(cloud.model_id)["source"] == "table"
    assert client.price_of(local.model_id) == LOCAL_PRICE.as_dict()
    r = await client.execute("hi", model_id=cloud.model_id, **quiet())
    assert r["metrics"]["cost_usd"] == pytest.approx((1000 * 2.5 + 3 * 10) / 1e6)
    client.set_price("gpt-4o", input=1.0, output=2.0)                       # by bare name
    assert OblixClient(home=tmp_path).price_of(cloud.model_id)["input"] == 1.0  # another kernel sees it
    client.set_price(cloud.model_id, input=0.5, output=1.0, cached=0.1)    # the full id beats the name
    r = await client.execute("hi", model_id=cloud.model_id, **quiet())
    assert r["metrics"]["cost_source"] == "user" and r["metrics"]["cost_usd"] == pytest.approx((500 + 3) / 1e6)
    client.set_price(local.model_id, input=1, output=1)                     # even a local model, if asked
    assert client.price_of(local.model_id)["source"] == "user"
    with pytest.raises(ValueError):
        client.set_price("gpt-4o", input=-1, output=1)
    assert client.price_of(cloud.model_id)["input"] == 0.5                  # a bad price changed nothing


async def test_unpriced_cloud_reply_has_no_cost_but_is_counted(client):
    cloud = hook(client, FakeBackend("my-proxy-model", "cloud", input_tokens=10))
    r = await client.execute("hi", model_id=cloud.model_id, **quiet())
    assert r["metrics"]["cost_usd"] is None and r["metrics"]["cost_source"] == "unknown"
    assert "cost unknown" in format_footer(r)
    u = client.usage()
    assert u["unpriced_replies"].tolist() == [1] and u["cost_usd"].isna().all()


# ------------------------------------------------------------------------------------------------ usage()

async def test_usage_by_model_session_day(client):
    cloud = hook(client, FakeBackend("claude-haiku-4-5", "cloud", input_tokens=2000, cached=500))
    local = hook(client, FakeBackend("mine", "local"))
    s1 = await client.create_session("one")
    s2 = await client.create_session("two")
    await client.execute("a", model_id=cloud.model_id, session_id=s1, **quiet())
    await client.execute("b", model_id=local.model_id, session_id=s1, **quiet())
    await client.execute("c", model_id=cloud.model_id, session_id=s2, **quiet())
    await client.execute("no session", model_id=cloud.model_id, **quiet())
    one = Price(1.0, 5.0, 0.1, 1.25).cost(2000, 3, cache_read=500)
    by_model = client.usage(by="model").set_index("model_id")
    assert by_model.loc[cloud.model_id, "replies"] == 3 and by_model.loc[local.model_id, "cost_usd"] == 0
    assert by_model.loc[cloud.model_id, "cost_usd"] == pytest.approx(3 * one)
    assert by_model.loc[cloud.model_id, "cache_read_tokens"] == 1500
    by_session = client.usage(by="session")
    assert list(by_session.columns[:2]) == ["session_id", "title"]
    rows = {r.session_id: r for r in by_session.dropna(subset=["session_id"]).itertuples()}
    assert rows[s1].replies == 2 and rows[s1].title == "one" and rows[s1].cost_usd == pytest.approx(one)
    assert by_session[by_session.session_id.isna()]["replies"].tolist() == [1]  # calls outside a session count
    by_day = client.usage(by="day")
    assert len(by_day) == 1 and by_day["replies"].iloc[0] == 4
    assert by_day["spend_usd"].iloc[0] == pytest.approx(3 * one)
    client.delete_session(s2)  # spend already happened: deleting the session does not refund it
    assert client.usage(by="day")["spend_usd"].iloc[0] == pytest.approx(3 * one)
    with pytest.raises(ValueError, match="by must be"):
        client.usage(by="week")


# ------------------------------------------------------------------------------------------------ budgets

async def test_budget_validation_and_removal(client):
    for bad in (-1, math.inf, "5", True):
        with pytest.raises(ValueError):
            client.set_budget(bad)
    with pytest.raises(ValueError, match="per must be"):
        client.set_budget(5, per="week")
    assert client.set_budget(5, per="total") == {"per": "total", "usd": 5.0, "spent_usd": 0.0, "remaining_usd": 5.0}
    assert client.set_budget(None, per="total") is None and client.budget_status() == []


async def test_unknown_price_cannot_be_bounded(client):
    cloud = hook(client, FakeBackend("unpriced", "cloud"))
    client.set_budget(100, per="total")
    with pytest.raises(BudgetExceededError, match="set_price"):
        await client.execute("hi", model_id=cloud.model_id, **quiet())
    assert cloud.calls == 0
    client.set_price("unpriced", input=1, output=1)
    assert (await client.execute("hi", model_id=cloud.model_id, **quiet()))["model_id"] == cloud.model_id


async def test_session_budget_only_binds_its_session(client):
    cloud = hook(client, FakeBackend("claude-opus-4-1", "cloud", input_tokens=1000))  # $15/M in, $75/M out
    local = hook(client, FakeBackend("mine", "local"))
    s1 = await client.create_session("tight")
    client.set_budget(0.016, per="session")
    r = await client.execute("a", model_id=cloud.model_id, session_id=s1, max_tokens=10, **quiet())
    assert r["model_id"] == cloud.model_id  # it cost 1000 x $15/M + 3 x $75/M: $0.000775 left
    assert client.budget_status(s1)[0]["remaining_usd"] == pytest.approx(0.016 - 0.015225)
    r = await client.execute("b", model_id=cloud.model_id, session_id=s1, max_tokens=10, **quiet())
    assert r["model_id"] == local.model_id and "session budget" in r["routing_decision"]["reason"]
    s2 = await client.create_session("fresh")
    r = await client.execute("c", model_id=cloud.model_id, session_id=s2, max_tokens=10, **quiet())
    assert r["model_id"] == cloud.model_id
    assert cloud.calls == 2 and local.calls == 1


async def test_worst_case_uses_model_default_when_no_max_tokens(client):
    cloud = hook(client, FakeBackend("gpt-4o", "cloud", input_tokens=10))
    client.set_budget(0.01, per="day")
    # No max_tokens: the worst case is the rest of the context window (8192 tokens at $10/M > $0.01).
    with pytest.raises(BudgetExceededError) as info:
        await client.execute("hi", model_id=cloud.model_id, **quiet())
    assert info.value.budget["per"] == "day" and cloud.calls == 0
    assert (await client.execute("hi", model_id=cloud.model_id, max_tokens=100, **quiet()))["model_id"] \
        == cloud.model_id


async def test_budget_agent_votes_and_routing_follows(client):
    cloud = hook(client, FakeBackend("gpt-4o-mini", "cloud", input_tokens=100_000))  # $0.015 per call
    local = hook(client, FakeBackend("mine", "local"))
    agent = BudgetAgent(warn_at=0.5)
    client.hook_agent(agent)
    assert agent.check()["state"] == "within_budget" and agent.check()["reason"] == "no budget set"
    client.set_budget(0.04, per="total")
    assert [a.name for a in client.agents].count("budget") == 1  # set_budget did not add a second one
    await client.execute("1", model_id=cloud.model_id, max_tokens=10, **quiet())
    assert agent.check()["state"] == "within_budget" and agent.check()["target"] is None
    await client.execute("2", model_id=cloud.model_id, max_tokens=10, **quiet())
    check = agent.check()
    assert check["state"] == "near_budget" and check["target"] == "local" and "75%" in check["reason"]
    # Unforced, routing now prefers local; the vote shows in agent_checks.
    hook(client, FakeBackend("gpt-4o", "cloud"))
    r = await client.execute("3", **quiet())
    assert r["model_id"] == local.model_id
    vote = next(c for c in r["agent_checks"] if c["agent"] == "budget")["result"]
    assert vote["state"] == "near_budget" and vote["metrics"]["budgets"][0]["per"] == "total"
    # A resource agent asking for cloud at the same rank ties, and a tie goes local.
    checks = [{"agent": "budget", "result": vote},
              {"agent": "resource_monitor", "result": {"state": "constrained", "target": "cloud", "reason": "RAM"}}]
    assert decide([cloud, local], checks).target == "local"
    client.set_budget(0.03, per="total")  # already spent: over budget beats everything
    checks[0]["result"] = agent.check()
    assert checks[0]["result"]["state"] == "over_budget"
    checks[1]["result"]["state"] = "critical"
    assert decide([cloud, local], checks).target == "local"
    with pytest.raises(ValueError):
        BudgetAgent(warn_at=0)


def test_magics_config_prices(tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    from oblix_nb.notebook import state

    monkeypatch.setenv("OBLIX_HOME", str(tmp_path))
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "oblix_nb")
        shell.run_line_magic("config", 'OblixMagics.prices = {"my-model": {"input": 1.5, "output": 2}}')
        client = state.get_client()
        assert client.price_of("openai:my-model") == {"input": 1.5, "output": 2, "cached": None,
                                                     "cache_write": None, "source": "user"}
        shell.run_line_magic("config", 'OblixMagics.prices = {"m": {"input": -1, "output": 2}}')  # %config logs it
        assert client.price_of("openai:m") is None and client.price_of("openai:my-model")["input"] == 1.5
    finally:
        shell.run_line_magic("unload_ext", "oblix_nb")
        InteractiveShell.clear_instance()


def test_cost_columns_on_both_engines(store):
    """messages_df/sessions_df read metrics.cost_usd on SQLite and PostgreSQL alike (the ``store`` fixture)."""
    from oblix_nb.sessions.frames import messages_df, sessions_df

    paid, free, none = store.create(title="paid"), store.create(title="free"), store.create(title="none")
    store.append_message(paid, "user", "q", request_id="r1")
    store.append_message(paid, "assistant", "a1", model_id="claude:x", request_id="r1",
                         metrics={"cost_usd": 0.25, "output_tokens": 3})
    store.append_message(paid, "assistant", "a2", model_id="claude:x", metrics={"cost_usd": 0.5})
    store.append_message(paid, "assistant", "a3", model_id="openai:y", metrics={"cost_usd": None})
    store.append_message(free, "assistant", "b", model_id="llamacpp:z", metrics={"cost_usd": 0.0})
    store.append_message(none, "assistant", "c", model_id="openai:y", metrics={"output_tokens": 1})
    df = messages_df(store)
    assert df["cost_usd"].dtype == "Float64"
    by_content = dict(zip(df["content"], df["cost_usd"]))
    assert by_content["a1"] == 0.25 and by_content["b"] == 0.0
    assert by_content["a3"] is pd_na() and by_content["c"] is pd_na() and by_content["q"] is pd_na()
    assert df.loc[df.content == "q", "request_id"].tolist() == ["r1"]  # the columns after it are intact
    costs = dict(zip(sessions_df(store)["title"], sessions_df(store)["cost_usd"]))
    assert costs["paid"] == 0.75 and costs["free"] == 0.0 and costs["none"] is pd_na()


def pd_na():
    import pandas as pd

    return pd.NA
