"""Benchmark: budget overspend under concurrency (not a test; prints one JSON object).

    python bench/budget_race.py [--calls 8] [--delays 0,0.05,0.3]

A $0.20 budget (per day, session and total in turn) and a cloud model whose every reply costs exactly its worst
case ($0.06: 16 output tokens at $3,750 per million, input free), so at most 3 calls fit. Scenarios, on SQLite
and on a PostgreSQL server of its own (tests/pg.py):

* ``in_process``: ``--calls`` concurrent ``execute()`` calls in one process;
* ``two_processes``: two processes, ``--calls // 2`` concurrent calls each, started at the same instant.

Also ``overhead_ms`` (median of ``--repeat``, on a store whose usage log holds ``--replies`` rows over 30 days, with a day, a
session and a total budget set): the previous pre-call check (``check_ms``) side by side with a reservation and
its settlement (``reserve_settle_ms``: two write transactions), per engine.

Each is run with every reply taking each of ``--delays`` seconds (different interleavings), side by side in two
modes: ``reserve`` (this code: the worst case is reserved atomically in the store and settled after) and
``check_only`` (the previous behaviour: each call checks spend, then runs). Reported: spend in USD, and
``overspend_pct`` = max(0, spend / budget - 1) x 100 (goal 0). The model is an in-process stand-in with
server-style exact usage, so the figures count only the accounting, not a model's speed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from oblix_nb import BudgetExceededError, ModelType, OblixClient  # noqa: E402
from oblix_nb.execution import Engine  # noqa: E402
from oblix_nb.models.base import ModelBackend, Usage  # noqa: E402

BUDGET, MAX_TOKENS, OUTPUT_PRICE = 0.20, 16, 3750.0


class CloudStandIn(ModelBackend):
    """A cloud model that answers after ``delay`` s with exactly ``max_tokens`` output tokens (server usage)."""

    model_type = ModelType.CLAUDE

    def __init__(self, delay: float):
        super().__init__("claude-haiku-4-5", "http://127.0.0.1:9", target="cloud", context_window=8192)
        self.delay = delay

    async def connect(self) -> None:
        pass

    async def stream(self, messages, params):
        await asyncio.sleep(self.delay)
        yield "x " * params.max_tokens
        yield Usage(10, params.max_tokens, "server", "server", "length")


RESERVE = Engine.reserve_budget


def check_only(self, backend, price, fitted, params, request):
    """The previous behaviour: check, do not reserve (Engine.over_budget is the check alone)."""
    return self.over_budget(backend, price, fitted, params, request.session_id), None


async def run_calls(url: str, home: str, n: int, delay: float, session_id, mode: str, start: float) -> dict:
    client = OblixClient(home=home, database_url=url)
    try:
        Engine.reserve_budget = check_only if mode == "check_only" else RESERVE
        backend = CloudStandIn(delay)
        client._models[backend.model_id] = backend
        await asyncio.sleep(max(0.0, start - time.time()))
        results = await asyncio.gather(*(client.execute("count", max_tokens=MAX_TOKENS, session_id=session_id,
                                                        sink=lambda t: None) for _ in range(n)),
                                       return_exceptions=True)
        other = [repr(r) for r in results if not isinstance(r, (dict, BudgetExceededError))]
        return {"answered": sum(isinstance(r, dict) for r in results), "other": other}
    finally:
        Engine.reserve_budget = RESERVE
        await client.shutdown()


def scenario(url: str, work: Path, name: str, per: str, delay: float, calls: int, mode: str) -> dict:
    home = work / f"{name}-{per}-{delay}-{mode}"
    setup = OblixClient(home=home, database_url=url)
    # each run on a fresh store (SQLite file or PostgreSQL schema): its usage log and budget start empty
    session_id = asyncio.run(setup.create_session("race")) if per == "session" else None
    setup.set_price("claude:claude-haiku-4-5", input=0.0, output=OUTPUT_PRICE)
    setup.set_budget(BUDGET, per=per)
    start = time.time() + (4.0 if name == "two_processes" else 0.0)
    if name == "in_process":
        report = asyncio.run(run_calls(url, str(home), calls, delay, session_id, mode, start))
        reports = [report]
    else:
        env = {k: v for k, v in os.environ.items() if "KEY" not in k.upper()}
        env["PYTHONPATH"] = str(ROOT)
        procs = [subprocess.Popen([sys.executable, __file__, "--child", url, str(home / f"p{i}"), str(calls // 2),
                                   str(delay), json.dumps(session_id), mode, str(start)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode:
                raise RuntimeError(err[-2000:])
            reports.append(json.loads(out.strip().splitlines()[-1]))
    spent = setup.sessions.usage_spend()[1]
    setup.sessions.close()
    return {"spent_usd": round(spent, 6), "overspend_pct": round(max(0.0, spent / BUDGET - 1) * 100, 1),
            "answered": sum(r["answered"] for r in reports), "errors": sum(len(r["other"]) for r in reports)}


def overhead(url: str, home: Path, replies: int, repeat: int) -> dict:
    import statistics
    from datetime import datetime, timedelta, timezone

    from oblix_nb._util import iso
    from oblix_nb.pricing import Price

    client = OblixClient(home=home, database_url=url)
    store = client.sessions
    sid = store.create(title="bench")
    row = (iso(), sid, "r", "claude:claude-haiku-4-5", "cloud", 100, 16, None, None, 1e-6, None, 0)
    now = datetime.now(timezone.utc)
    with store._write() as conn:  # seeding only (bench): one transaction; replies spread over 30 days
        for i in range(replies):
            store._insert_usage(conn, (iso(now - timedelta(seconds=30 * 86400 * i / replies)), *row[1:]))
    for per in ("day", "session", "total"):
        client.set_budget(1e6, per=per)
    price, budgets = Price(0.0, OUTPUT_PRICE), client.budgets
    check, reserve = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        budgets.check_call(price, 100, MAX_TOKENS, sid)
        check.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, rid = budgets.reserve(price, 100, MAX_TOKENS, sid)
        store.settle_spend(rid, row)
        reserve.append(time.perf_counter() - t)
    store.close()
    return {"check_ms": round(statistics.median(check) * 1e3, 3),
            "reserve_settle_ms": round(statistics.median(reserve) * 1e3, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--delays", default="0,0.05,0.3")
    parser.add_argument("--replies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, home, n, delay, sid, mode, start = args.child
        print(json.dumps(asyncio.run(run_calls(url, home, int(n), float(delay), json.loads(sid), mode,
                                               float(start)))))
        return 0
    from pg import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="oblix-bench-budget-"))
    server = PostgresServer.start()
    started = time.perf_counter()
    delays = [float(d) for d in args.delays.split(",")]
    result: dict = {"budget_usd": BUDGET, "worst_case_usd": MAX_TOKENS * OUTPUT_PRICE / 1e6, "calls": args.calls,
                    "runs": []}
    try:
        result["overhead_ms"] = {
            "sqlite": overhead(f"sqlite:{work / 'overhead.db'}", work / "oh1", args.replies, args.repeat),
            "postgresql": overhead(server.new_schema_url("o"), work / "oh2", args.replies, args.repeat)}
        for engine in ("sqlite", "postgresql") if not args.overhead_only else ():
            for name in ("in_process", "two_processes"):
                for per in ("total", "day", "session"):
                    for delay in delays:
                        row = {"engine": engine, "scenario": name, "per": per, "delay_s": delay}
                        for mode in ("reserve", "check_only"):
                            url = (f"sqlite:{work / f'{name}-{per}-{delay}-{mode}.db'}" if engine == "sqlite"
                                   else server.new_schema_url("b"))
                            row[mode] = scenario(url, work, name, per, delay, args.calls, mode)
                        result["runs"].append(row)
    finally:
        server.stop()
    runs = result["runs"]
    if runs:
        result["max_overspend_pct"] = {mode: max(r[mode]["overspend_pct"] for r in runs)
                                       for mode in ("reserve", "check_only")}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
