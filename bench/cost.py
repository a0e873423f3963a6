"""Benchmark: what cost accounting and budgets add to a call (not a test; prints one JSON object).

    python bench/cost.py [--replies 100000] [--repeat 200]

Seeds a throwaway store whose usage log holds ``--replies`` replies spread over 30 days and 1,000 sessions, then
times, side by side in this process (median of ``--repeat``):

* ``budget_check_none``: the pre-call check with no budget set (what every call pays);
* ``budget_check_all``: the pre-call check with a day, a session and a total budget set (three SUMs over the log);
* ``usage_record``: logging one reply (one INSERT transaction), after the reply has streamed;
* baseline ``append_message``: storing one message in a session (what every call already pays twice);
* ``usage_by_model`` (best of 3): ``client.usage(by="model")`` over the whole log, vs. baseline
  ``messages_df()`` + pandas ``groupby`` over the same number of stored replies.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oblix_nb import OblixClient, runtime  # noqa: E402
from oblix_nb._util import iso, utcnow  # noqa: E402
from oblix_nb.models.base import GenerationParams  # noqa: E402
from oblix_nb.pricing import table_price  # noqa: E402
from oblix_nb.sessions import usage as usage_log  # noqa: E402


@dataclass
class _Fitted:
    used: int = 500


class _Backend:
    model_id, model_name, target, context_window = "claude:claude-haiku-4-5", "claude-haiku-4-5", "cloud", 200_000

    def default_max_tokens(self):
        return 4096


def seed(client: OblixClient, replies: int, sessions: int) -> list[str]:
    rng = random.Random(7)
    sids = [client.sessions.create(title=f"bench {i}") for i in range(sessions)]
    now = utcnow()
    rows = []
    for i in range(replies):
        sid = sids[i % sessions]
        cloud = rng.random() < 0.5
        rows.append((iso(now - timedelta(seconds=rng.uniform(0, 30 * 86400))), sid, f"req-{i}",
                     "claude:claude-haiku-4-5" if cloud else "llamacpp:smollm2-135m", "cloud" if cloud else "local",
                     rng.randint(20, 900), rng.randint(10, 400), 0, 0, rng.uniform(1e-5, 3e-3) if cloud else 0.0,
                     None, 0))
    with client.sessions._write() as conn:
        conn.executemany(f"INSERT INTO usage_log ({', '.join(usage_log._COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(usage_log._COLUMNS))})", rows)
    # the same replies as session messages, for the messages_df baseline
    per = replies // sessions
    for sid in sids:
        client.sessions.append_messages(sid, [
            {"role": "assistant", "content": "answer", "model_id": "claude:claude-haiku-4-5",
             "metrics": {"input_tokens": 100, "output_tokens": 50, "cost_usd": 0.0003}} for _ in range(per)])
    return sids


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def best_s(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replies", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oblix-bench-cost-") as home:
        client = OblixClient(home=home)
        t = time.perf_counter()
        sids = seed(client, args.replies, args.sessions)
        seeded = time.perf_counter() - t
        backend, fitted, params = _Backend(), _Fitted(), GenerationParams(max_tokens=256)
        price = table_price(backend.model_name)
        sid = sids[0]

        none = median_ms(lambda: client._over_budget(backend, price, fitted, params, sid), args.repeat)
        client.set_budget(1000, per="day")
        client.set_budget(1000, per="session")
        client.set_budget(10_000, per="total")
        full = median_ms(lambda: client._over_budget(backend, price, fitted, params, sid), args.repeat)
        response = {"session_id": sid, "request_id": "r", "model_id": backend.model_id,
                    "metrics": {"end_time": iso(), "input_tokens": 500, "output_tokens": 100, "cost_usd": 0.001}}
        record = median_ms(lambda: usage_log.record(client.sessions, response, "cloud"), args.repeat)
        append = median_ms(lambda: client.sessions.append_message(sid, "user", "hello"), args.repeat)

        def by_frames():
            df = client.messages_df()
            df[df.role == "assistant"].groupby("model_id", observed=True)[
                ["input_tokens", "output_tokens", "cost_usd"]].sum()

        usage_s = best_s(lambda: client.usage(by="model"))
        frames_s = best_s(by_frames)
        runtime.run(client.shutdown())
    print(json.dumps({
        "replies_in_log": args.replies, "seed_s": round(seeded, 2),
        "budget_check_none_ms": round(none, 4), "budget_check_all_ms": round(full, 4),
        "usage_record_ms": round(record, 4), "baseline_append_message_ms": round(append, 4),
        "ratio_check_all_vs_append": round(full / append, 2), "ratio_record_vs_append": round(record / append, 2),
        "usage_by_model_s": round(usage_s, 3), "baseline_messages_df_groupby_s": round(frames_s, 3),
        "ratio_usage_vs_baseline": round(usage_s / frames_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
