"""Benchmark: 100,000 stored messages into a DataFrame (not a test; prints one JSON object).

    python bench/frames.py [--messages 100000] [--per-session 100] [--repeat 3]

Seeds a throwaway store (``append_messages``, one transaction per session) with realistic assistant
metrics and routing, then times, best of ``--repeat``:

* ``messages_df``: ``client.messages_df()`` — one SQL query (JSON fields extracted by SQLite), columns built
  with their final dtypes;
* ``baseline``: what one would write without it — ``load_session`` for every session, flatten the messages
  with ``pd.json_normalize``, then the same dtypes (UTC datetimes, categoricals, nullable ints).

The goal is ``messages_df`` under 1 s for 100,000 messages.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oblix_nb import OblixClient, runtime  # noqa: E402

MODELS = [("llamacpp:smollm2-135m", "local"), ("openai:gpt-4o-mini", "cloud")]


def seed(client: OblixClient, messages: int, per_session: int) -> int:
    rng = random.Random(42)
    n_sessions = max(1, messages // per_session)
    made = 0
    for s in range(n_sessions):
        sid = runtime.run(client.create_session(title=f"bench {s}", metadata={"i": s, "group": f"g{s % 7}"}))
        batch = []
        count = min(per_session, messages - made)
        for i in range(count):
            if i % 2 == 0:
                batch.append({"role": "user", "content": f"question {i} of session {s} " + "lorem ipsum " * 5})
                continue
            model, target = MODELS[rng.randrange(2)]
            out = rng.randint(10, 400)
            ttft = rng.uniform(0.05, 1.5)
            total = ttft + out / rng.uniform(20, 150)
            batch.append({
                "role": "assistant", "content": "answer " * (out // 4 + 1), "model_id": model,
                "metrics": {"total_latency": total, "time_to_first_token": ttft,
                            "tokens_per_second": out / (total - ttft), "input_tokens": rng.randint(20, 900),
                            "output_tokens": out, "start_time": "2026-11-24T20:00:00.000Z",
                            "end_time": "2026-11-24T20:00:01.000Z", "model_name": model.split(":", 1)[1],
                            "model_type": model.split(":", 1)[0],
                            "usage_source": {"input": "tokenizer", "output": "tokenizer"},
                            "finish_reason": "stop", "context": {"messages": i, "dropped": 0, "truncated": 0}},
                "routing": {"target": target, "model_id": model, "reason": f"{target}: bench",
                            "fallback_from": None, "candidates": [m for m, _ in MODELS], "forced": False},
                "partial": rng.random() < 0.02, "request_id": f"req-{s}-{i}",
            })
        client.sessions.append_messages(sid, batch)
        made += count
        if made >= messages:
            break
    return made


def baseline(client: OblixClient):
    import pandas as pd

    rows = []
    for summary in client.list_sessions(limit=None):
        session = client.load_session(summary["id"])
        for m in session["messages"]:
            rows.append({**m, "session_id": session["id"], "session_title": session["title"]})
    df = pd.json_normalize(rows)
    df["timestamp"] = pd.to_datetime(df["timestamp"], format="ISO8601", utc=True)
    for col in ("role", "model_id", "routing.target", "session_id", "session_title"):
        df[col] = df[col].astype("category")
    for col in ("metrics.input_tokens", "metrics.output_tokens"):
        df[col] = df[col].astype("Int64")
    df["partial"] = df["partial"].fillna(False).astype(bool) if "partial" in df else False
    return df


def best_of(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="oblix-bench-") as home:
        client = OblixClient(home=home)
        t0 = time.perf_counter()
        n = seed(client, args.messages, args.per_session)
        seed_s = time.perf_counter() - t0
        import pandas  # noqa: F401 - import time is not part of either figure

        ours_s, df = best_of(client.messages_df, args.repeat)
        base_s, base = best_of(lambda: baseline(client), args.repeat)
        assert len(df) == len(base) == n, (len(df), len(base), n)
        print(json.dumps({
            "messages": n,
            "sessions": len(client.list_sessions(limit=None)),
            "db_mb": round(os.path.getsize(Path(home) / "sessions.db") / 1e6, 1),
            "seed_s": round(seed_s, 2),
            "messages_df_s": round(ours_s, 3),
            "baseline_load_session_json_normalize_s": round(base_s, 3),
            "speedup": round(base_s / ours_s, 1),
            "under_1s": ours_s < 1.0,
            "python": sys.version.split()[0],
            "pandas": pandas.__version__,
        }, indent=2))
        client.sessions.close()


if __name__ == "__main__":
    main()
