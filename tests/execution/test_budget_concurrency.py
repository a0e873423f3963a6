"""Budgets under concurrency: a call's worst case is reserved atomically before it runs and settled after.

Against the suite's Anthropic Messages-API server (SmolLM2 behind a Claude name, exact usage from the server),
on both store engines (``store_url``: SQLite and a real PostgreSQL): concurrent ``execute()`` calls in one
process, two processes with four calls each, and ``map()`` running into a budget, for each budget period. The
store's reservations are also checked directly (threads, a crashed holder, lapsing). Never asserts model text.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from oblix_nb import BudgetExceededError, ModelType, OblixClient
from oblix_nb.sessions import open_store

pytest.importorskip("anthropic")

MODEL = "claude-haiku-4-5"
MODEL_ID = f"claude:{MODEL}"
MAX_TOKENS = 16
OUTPUT_PRICE = 3750.0                         # USD per million output tokens: a 16-token worst case is $0.06
WORST = MAX_TOKENS * OUTPUT_PRICE / 1e6
BUDGET = 0.20                                 # room for 3 worst cases, not 4
PROMPT = "Count from one to one hundred in words, separated by commas:"
REPO = Path(__file__).resolve().parents[2]


def spent(store) -> float:
    return store.usage_spend()[1]


async def make_client(tmp_path, store_url, server) -> OblixClient:
    client = OblixClient(home=tmp_path / "home", database_url=store_url)
    await client.hook_model(ModelType.CLAUDE, MODEL, base_url=server.base_url, api_key=server.api_key)
    client.set_price(MODEL_ID, input=0.0, output=OUTPUT_PRICE)  # worst case = output only: exact to the cent
    return client


# ------------------------------------------------------------------------------------------------ the store

def test_reservations_are_atomic_across_threads_and_connections(store_url, tmp_path):
    """16 threads, each with its own store (connection), reserve $0.03 under $0.20: exactly 6 get one."""
    stores = [open_store(store_url, default_path=tmp_path / "x.db") for _ in range(16)]
    try:
        results: list = []
        barrier = threading.Barrier(len(stores))

        def reserve(store):
            barrier.wait()
            results.append(store.reserve_spend(0.03, [(None, None, BUDGET, 0, 0.0)], request_id="r")[0])

        threads = [threading.Thread(target=reserve, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        granted = [r for r in results if r is not None]
        assert len(results) == 16 and len(granted) == 6
        assert stores[0].reserved_spend() == pytest.approx(0.18)
        # Settling replaces each reservation by the real cost, in one transaction.
        row = ("2026-01-01T00:00:00.000Z", None, "r", MODEL_ID, "cloud", 1, 2, None, None, 0.01, None, 0)
        for rid in granted:
            stores[0].settle_spend(rid, row)
        assert stores[0].reserved_spend() == 0 and spent(stores[0]) == pytest.approx(0.06)
        rid, _ = stores[0].reserve_spend(0.01, [(None, None, BUDGET, 0, 0.0)])
        with pytest.raises(ValueError):
            stores[0].settle_spend(rid, row[:5])  # a malformed row: nothing changes
        assert spent(stores[0]) == pytest.approx(0.06) and stores[0].reserved_spend() == pytest.approx(0.01)
        stores[0].settle_spend(rid)  # no reply: the reservation is simply given back
        assert stores[0].reserved_spend() == 0 and spent(stores[0]) == pytest.approx(0.06)
        # Windows: the day (since) and the session are counted apart from the total.
        rid, sums = stores[0].reserve_spend(0.05, [("2099-01-01T00:00:00.000Z", None, 0.05, 0, 0.0),
                                                    (None, "s1", 0.05, 0, 0.0), (None, None, BUDGET, 0, 0.0)],
                                            session_id="s1")
        assert rid is not None and [s[1:] for s in sums] == [(0.0, 0.0), (0.0, 0.0), (pytest.approx(0.06), 0.0)]
        rid2, sums = stores[0].reserve_spend(0.01, [(None, "s1", 0.05, 0, 0.0)], session_id="s1")
        assert rid2 is None and sums[0][2] == pytest.approx(0.05)  # the live reservation counts in its session
        assert stores[0].reserve_spend(0.01, [(None, "s2", 0.05, 0, 0.0)], session_id="s2")[0] is not None
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("bad", [math.inf, math.nan, -0.01, "0.1", True, None])
def test_reservation_amount_is_checked(store, bad):
    with pytest.raises(ValueError):
        store.reserve_spend(bad, [(None, None, 1.0, 0, 0.0)])
    assert store.reserved_spend() == 0


def test_reservations_of_a_crashed_process_and_lapsed_ones_are_given_back(store_url, tmp_path):
    db = tmp_path / "x.db"
    code = textwrap.dedent(f"""
        import os, sys
        from oblix_nb.sessions import open_store
        s = open_store({store_url!r}, default_path={str(db)!r})
        rid, _ = s.reserve_spend(0.15, [(None, None, 0.2, 0, 0.0)])
        print(rid, flush=True)
        os._exit(0)  # dies mid-call: never settles
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    store = open_store(store_url, default_path=db)
    try:
        assert store.reserved_spend() == pytest.approx(0.15)  # held until someone reserves again
        rid, sums = store.reserve_spend(0.15, [(None, None, 0.2, 0, 0.0)], ttl_s=0.0)
        assert rid is not None and sums[0][2] == 0  # the dead process's reservation was dropped first
        time.sleep(0.01)
        rid, sums = store.reserve_spend(0.15, [(None, None, 0.2, 0, 0.0)])
        assert rid is not None and sums[0][2] == 0  # the lapsed one (ttl 0) no longer counts
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------ prices

@pytest.mark.parametrize("bad", [(1e308, 1e308), (0.0, 1e308), (math.inf, 1.0), (1.0, math.nan), (10 ** 400, 1.0),
                                 (-1.0, 1.0), (100_000.01, 1.0)])
async def test_prices_are_bounded(tmp_path, bad):
    client = OblixClient(home=tmp_path)
    try:
        with pytest.raises(ValueError, match="USD per million"):
            client.set_price(MODEL_ID, *bad)
        assert client.sessions.settings("price:") == {}  # nothing stored
        assert client.set_price(MODEL_ID, 100_000, 0)["input"] == 100_000  # the bound itself is accepted
    finally:
        await client.shutdown()


async def test_an_unbounded_price_stored_earlier_is_reported_not_used(tmp_path, anthropic_server):
    """A price stored before prices were bounded (or edited in the store) never turns a budget into inf."""
    client = OblixClient(home=tmp_path)
    try:
        await client.hook_model(ModelType.CLAUDE, MODEL, base_url=anthropic_server.base_url,
                                api_key=anthropic_server.api_key)
        client.set_budget(BUDGET, per="total")
        client.sessions.set_setting("price:" + MODEL_ID, {"input": 1e308, "output": 1e308, "source": "user"})
        with pytest.raises(ValueError, match=r"stored price of claude:claude-haiku-4-5 is invalid.*set_price"):
            await client.execute(PROMPT, max_tokens=MAX_TOKENS)
        assert spent(client.sessions) == 0 and client.sessions.reserved_spend() == 0
        client.set_price(MODEL_ID, input=0.0, output=OUTPUT_PRICE)  # what the message says fixes it
        r = await client.execute(PROMPT, max_tokens=MAX_TOKENS)
        cost = r["metrics"]["cost_usd"]
        assert 0 < cost <= WORST and spent(client.sessions) == pytest.approx(cost)
    finally:
        await client.shutdown()


# ------------------------------------------------------------------------------------------------ execute()

@pytest.mark.parametrize("per", ["total", "day", "session"])
async def test_concurrent_execute_never_overspends(per, store_url, tmp_path, anthropic_server):
    """8 concurrent execute() calls under a $0.20 budget: spend stays within it, the rest are refused."""
    client = await make_client(tmp_path, store_url, anthropic_server)
    try:
        sid = await client.create_session("budget") if per == "session" else None
        client.set_budget(BUDGET, per=per)
        results = await asyncio.gather(*(client.execute(PROMPT, max_tokens=MAX_TOKENS, session_id=sid)
                                         for _ in range(8)), return_exceptions=True)
        answered = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, BudgetExceededError)]
        assert len(answered) + len(refused) == 8, [r for r in results if not isinstance(r, (dict,))]
        assert answered and refused
        total = spent(client.sessions)
        assert total == pytest.approx(sum(r["metrics"]["cost_usd"] for r in answered))
        assert total <= BUDGET
        assert client.sessions.reserved_spend() == 0  # every reservation was settled
        err = refused[0]
        assert err.worst_case_usd == pytest.approx(WORST) and err.budget["per"] == per
    finally:
        await client.shutdown()


CHILD = """
import asyncio, json, sys, time
from oblix_nb import BudgetExceededError, ModelType, OblixClient

async def main():
    home, url, base_url, start = sys.argv[1:5]
    api_key = sys.stdin.readline().strip()          # never through the environment
    client = OblixClient(home=home, database_url=url)
    await client.hook_model(ModelType.CLAUDE, "claude-haiku-4-5", base_url=base_url, api_key=api_key)
    time.sleep(max(0.0, float(start) - time.time()))  # both processes start their calls together
    results = await asyncio.gather(*(client.execute("Count from one to one hundred in words:", max_tokens=16)
                                     for _ in range(4)), return_exceptions=True)
    print(json.dumps({"answered": sum(isinstance(r, dict) for r in results),
                      "refused": sum(isinstance(r, BudgetExceededError) for r in results),
                      "other": [repr(r) for r in results if not isinstance(r, (dict, BudgetExceededError))]}))
    await client.shutdown()

asyncio.run(main())
"""


@pytest.mark.parametrize("per", ["total", "day"])
async def test_two_processes_never_overspend(per, store_url, tmp_path, anthropic_server):
    client = await make_client(tmp_path, store_url, anthropic_server)
    try:
        client.set_budget(BUDGET, per=per)
        env = {k: v for k, v in os.environ.items() if "KEY" not in k.upper()}
        env["PYTHONPATH"] = str(REPO)
        start = time.time() + 8  # imports and hooking first
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"home{i}"), store_url,
                                   anthropic_server.base_url, str(start)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(2)]
        outs = [p.communicate(anthropic_server.api_key + "\n", timeout=300) for p in procs]
        reports = []
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        assert all(r["other"] == [] for r in reports), reports
        assert sum(r["answered"] for r in reports) >= 1 and sum(r["refused"] for r in reports) >= 1
        assert spent(client.sessions) <= BUDGET
        assert client.sessions.reserved_spend() == 0
    finally:
        await client.shutdown()


# ------------------------------------------------------------------------------------------------ map()

@pytest.mark.parametrize("per", ["total", "session"])
async def test_map_into_its_budget_records_row_errors(per, store_url, tmp_path, anthropic_server):
    """A map that runs out of budget finishes: over-budget rows carry the error, the others their reply."""
    client = await make_client(tmp_path, store_url, anthropic_server)
    try:
        sid = await client.create_session("map budget") if per == "session" else None
        client.set_budget(BUDGET, per=per)
        rows = pd.DataFrame({"n": [f"item {i}" for i in range(6)]}, index=[10, 11, 12, 13, 14, 15])
        kwargs = {"max_tokens": MAX_TOKENS, "concurrency": 2, "progress": False}
        if sid:
            kwargs["session_id"] = sid
        # (a map's rows count in the session they are stored in: session_id=, else the map's own session)
        out = await client.map(rows, "Describe {n} at length:", **kwargs)
        assert list(out.index) == [10, 11, 12, 13, 14, 15] and len(out) == 6
        errors = out["error"].dropna()
        assert 1 <= len(errors) <= 5 and errors.str.startswith("BudgetExceededError").all()
        assert out.loc[errors.index, "response"].isna().all() and out["response"].notna().sum() == 6 - len(errors)
        assert spent(client.sessions) <= BUDGET and client.sessions.reserved_spend() == 0
        if sid:
            assert client.budget_status(sid)[0]["spent_usd"] == pytest.approx(spent(client.sessions))
        # Raising the budget and re-running calls only the rows that failed.
        client.set_budget(10.0, per=per)
        again = await client.map(rows, "Describe {n} at length:", **kwargs)
        assert again["error"].isna().all() and again["cached"].sum() == 6 - len(errors)
    finally:
        await client.shutdown()
