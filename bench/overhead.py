"""What oblix_nb's execute() costs over the raw official clients (issue: goal TTFT overhead <= 2 ms, >= 0.9x tok/s).

1. One real llama_cpp.server on loopback. 30 interleaved runs each of
   - execute() through OblixClient (a fresh session per run, so every request carries the same messages;
     ResourceMonitor and ConnectivityAgent hooked), and
   - the raw official ``openai.AsyncOpenAI`` client, streaming the same prompt with the same max_tokens,
   both at temperature 0. Time to first token and total time are measured from outside, the same way for both:
   from the call to the first text delta reaching the caller, and to the call's return.
2. The embedded model: tokens/s through execute() vs raw ``llama_cpp.Llama`` on the same GGUF (decode rate =
   output tokens / (last token - first token)), interleaved.
3. Checkpointed streaming (issue 8): execute() with ``checkpoint_interval=1.0`` (the default) vs ``None``, on
   replies long enough to be checkpointed; TTFT and total time ratios (goal: <= 1.05).

Run: ``python bench/overhead.py [--runs 30] [--only openai|embedded|checkpoint]``. Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time

PROMPT = "List three uses of a paperclip."


async def bench_openai(runs: int, max_tokens: int) -> dict:
    import openai

    from oblix_nb import ConnectivityAgent, ModelType, OblixClient, ResourceMonitor
    from oblix_nb.localserver import start_openai_server

    server = start_openai_server()
    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-bench-"))
    raw = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-no-key-required", max_retries=0)
    try:
        await client.hook_model(ModelType.OPENAI, server.model, base_url=server.base_url)
        client.hook_agent(ResourceMonitor())
        client.hook_agent(ConnectivityAgent())

        async def via_oblix():
            sid = await client.create_session("bench")
            first = None
            t0 = time.perf_counter()

            def sink(_text):
                nonlocal first
                if first is None:
                    first = time.perf_counter()

            r = await client.execute(PROMPT, max_tokens=max_tokens, temperature=0, session_id=sid, sink=sink)
            return first - t0, time.perf_counter() - t0, r["metrics"]["output_tokens"]

        async def via_raw():
            first = None
            n = 0
            t0 = time.perf_counter()
            stream = await raw.chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
                temperature=0, stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    n += 1
                    if first is None:
                        first = time.perf_counter()
            return first - t0, time.perf_counter() - t0, n

        for _ in range(2):  # warm both paths
            await via_oblix()
            await via_raw()
        o_ttft, o_total, r_ttft, r_total, d_ttft, d_total = [], [], [], [], [], []
        for i in range(runs):
            pair = [via_oblix, via_raw] if i % 2 == 0 else [via_raw, via_oblix]
            results = {}
            for fn in pair:
                results[fn] = await fn()
            (ot, oT, _), (rt, rT, _) = results[via_oblix], results[via_raw]
            o_ttft.append(ot)
            o_total.append(oT)
            r_ttft.append(rt)
            r_total.append(rT)
            d_ttft.append(ot - rt)
            d_total.append(oT - rT)
        med = statistics.median
        return {
            "bench": "execute() vs raw openai client, llama_cpp.server on loopback",
            "runs": runs, "max_tokens": max_tokens,
            "ttft_ms": {"oblix": med(o_ttft) * 1e3, "raw": med(r_ttft) * 1e3,
                        "overhead_median_of_medians": (med(o_ttft) - med(r_ttft)) * 1e3,
                        "overhead_median_paired": med(d_ttft) * 1e3,
                        "ratio": med(o_ttft) / med(r_ttft), "goal_overhead_ms": 2.0,
                        "ok": med(d_ttft) * 1e3 <= 2.0},
            "total_ms": {"oblix": med(o_total) * 1e3, "raw": med(r_total) * 1e3,
                         "overhead_median_paired": med(d_total) * 1e3,
                         "ratio": med(o_total) / med(r_total)},
        }
    finally:
        await client.shutdown()
        await raw.close()
        server.stop()


async def bench_embedded(runs: int, max_tokens: int) -> dict:
    import llama_cpp

    from oblix_nb import ModelType, OblixClient
    from oblix_nb.models.gguf import resolve_gguf

    path = str(resolve_gguf("smollm2-135m"))
    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-bench-"))
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m", n_threads=2)
    raw = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=2, verbose=False)
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]

    async def via_oblix():
        first = last = None

        def sink(_text):
            nonlocal first, last
            last = time.perf_counter()
            first = first or last

        r = await client.execute(messages[0]["content"], max_tokens=max_tokens, temperature=0, sink=sink)
        n = r["metrics"]["output_tokens"]
        return (n - 1) / (last - first), n

    def via_raw():
        first = last = None
        text = []
        for chunk in raw.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                last = time.perf_counter()
                first = first or last
                text.append(delta)
        n = len(raw.tokenize("".join(text).encode(), add_bos=False, special=False))
        return (n - 1) / (last - first), n

    try:
        await via_oblix()
        via_raw()
        ours, base = [], []
        for i in range(runs):
            if i % 2 == 0:
                ours.append((await via_oblix())[0])
                base.append(via_raw()[0])
            else:
                base.append(via_raw()[0])
                ours.append((await via_oblix())[0])
        ratio = statistics.median(ours) / statistics.median(base)
        return {"bench": "embedded decode tokens/s: execute() vs raw llama_cpp.Llama, same GGUF",
                "runs": runs, "max_tokens": max_tokens,
                "tokens_per_s": {"oblix": statistics.median(ours), "raw": statistics.median(base),
                                 "ratio": ratio, "goal_ratio": 0.9, "ok": ratio >= 0.9}}
    finally:
        await client.shutdown()
        raw.close()


async def bench_checkpoint(runs: int, max_tokens: int) -> dict:
    """Checkpointed streaming's cost: execute() with checkpoints every 1 s (the default) vs without, same
    client, same llama_cpp.server, interleaved; replies long enough (``max_tokens``) to be checkpointed."""
    from oblix_nb import ModelType, OblixClient
    from oblix_nb.localserver import start_openai_server

    server = start_openai_server()
    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-bench-"))
    writes = []
    real_upsert = client.sessions.upsert_message

    def counting_upsert(*args, **kwargs):
        writes[-1] += 1
        return real_upsert(*args, **kwargs)
    client.sessions.upsert_message = counting_upsert
    try:
        await client.hook_model(ModelType.OPENAI, server.model, base_url=server.base_url)

        async def run(interval):
            client.checkpoint_interval = interval
            sid = await client.create_session("bench")
            writes.append(0)
            first = None
            t0 = time.perf_counter()

            def sink(_text):
                nonlocal first
                if first is None:
                    first = time.perf_counter()

            r = await client.execute(PROMPT + " Explain each in detail.", max_tokens=max_tokens, temperature=0,
                                     session_id=sid, sink=sink)
            return first - t0, time.perf_counter() - t0, writes[-1], r["metrics"]["output_tokens"]

        for interval in (1.0, None):  # warm both
            await run(interval)
        on, off = [], []
        for i in range(runs):
            for interval in ((1.0, None) if i % 2 == 0 else (None, 1.0)):
                (on if interval else off).append(await run(interval))
        med = statistics.median
        ttft_on, ttft_off = med(r[0] for r in on), med(r[0] for r in off)
        total_on, total_off = med(r[1] for r in on), med(r[1] for r in off)
        return {
            "bench": "checkpointed streaming: execute() with checkpoint_interval=1.0 vs None, llama_cpp.server",
            "runs": runs, "max_tokens": max_tokens,
            "reply_s_median": total_off, "checkpoint_writes_per_reply": statistics.mean(r[2] for r in on),
            "ttft_ms": {"checkpointed": ttft_on * 1e3, "none": ttft_off * 1e3, "ratio": ttft_on / ttft_off,
                        "goal_ratio": 1.05, "ok": ttft_on / ttft_off <= 1.05},
            "total_ms": {"checkpointed": total_on * 1e3, "none": total_off * 1e3, "ratio": total_on / total_off,
                         "goal_ratio": 1.05, "ok": total_on / total_off <= 1.05},
        }
    finally:
        await client.shutdown()
        server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--embedded-runs", type=int, default=10)
    ap.add_argument("--embedded-max-tokens", type=int, default=128)
    ap.add_argument("--checkpoint-runs", type=int, default=10)
    ap.add_argument("--checkpoint-max-tokens", type=int, default=160)
    ap.add_argument("--only", choices=["openai", "embedded", "checkpoint"], help="run one part only")
    args = ap.parse_args(argv)
    parts = {"openai": lambda: bench_openai(args.runs, args.max_tokens),
             "embedded": lambda: bench_embedded(args.embedded_runs, args.embedded_max_tokens),
             "checkpoint": lambda: bench_checkpoint(args.checkpoint_runs, args.checkpoint_max_tokens)}
    out = [asyncio.run(make()) for name, make in parts.items() if args.only in (None, name)]
    print(json.dumps(out, indent=2))
    return 0 if all(o.get("ttft_ms", o.get("tokens_per_s"))["ok"] for o in out) else 1


if __name__ == "__main__":
    sys.exit(main())
