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

4. The package's own per-call path with no model in it (``--only engine``): execute() on an instant in-process
   backend (fresh session per call, ResourceMonitor + ConnectivityAgent hooked): request checks, routing,
   history, storing prompt and reply, the usage log. Median ms per call.
5. ``--compare DIR``: part 1 (``--only openai``, the default) or part 4 (``--only engine``) against another
   checkout of the package (e.g. the commit before a refactor, ``git archive 856aa6d | tar -x -C /tmp/base``):
   ``--rounds`` subprocesses per tree, alternating, each a full run with ``PYTHONPATH`` set to its tree.
   Part 1: each run's oblix/raw ratio cancels the machine's load at that moment, and the result is the ratio
   of those ratios; part 4: the ratio of the median per-call times. Current / baseline; goal <= 1.05.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "List three uses of a paperclip."


async def bench_openai(runs: int, max_tokens: int) -> dict:
    import openai

    import oblix_nb
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
            "runs": runs, "max_tokens": max_tokens, "package": str(Path(oblix_nb.__file__).parent),
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


async def bench_engine(calls: int) -> dict:
    """execute() with an instant in-process backend: what the package itself costs per call."""
    import oblix_nb
    from oblix_nb import ConnectivityAgent, OblixClient, ResourceMonitor
    from oblix_nb.models.base import ModelBackend, ModelType, Usage

    class Instant(ModelBackend):
        model_type = ModelType.OPENAI

        async def connect(self):
            pass

        async def stream(self, messages, params):
            yield "blue"
            yield Usage(12, 1, "server", "server", "stop")

    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-bench-"))
    backend = Instant("instant", target="local", context_window=4096)
    client._models[backend.model_id] = backend
    client.hook_agent(ResourceMonitor())
    client.hook_agent(ConnectivityAgent())

    async def once() -> float:
        sid = await client.create_session("bench")
        t0 = time.perf_counter()
        await client.execute(PROMPT, max_tokens=4, temperature=0, session_id=sid, sink=lambda _text: None)
        return time.perf_counter() - t0

    try:
        for _ in range(20):
            await once()
        times = [await once() for _ in range(calls)]
        return {"bench": "execute() per call, instant in-process backend (no model, no network)",
                "calls": calls, "package": str(Path(oblix_nb.__file__).parent),
                "per_call_ms": {"median": statistics.median(times) * 1e3,
                                "p10": statistics.quantiles(times, n=10)[0] * 1e3,
                                "p90": statistics.quantiles(times, n=10)[-1] * 1e3, "ok": True}}
    finally:
        await client.shutdown()


async def bench_embedded(runs: int, max_tokens: int) -> dict:
    import llama_cpp

    from oblix_nb import ModelType, OblixClient
    from oblix_nb.models.resolve import resolve_gguf

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


def compare(baseline: str, part: str, rounds: int, child_args: list[str]) -> dict:
    """``part`` in subprocesses, alternating between this checkout and ``baseline`` (see the module docstring)."""
    trees = {"current": str(Path(__file__).resolve().parents[1]), "baseline": str(Path(baseline).resolve())}
    if not (Path(trees["baseline"]) / "oblix_nb" / "__init__.py").is_file():
        raise SystemExit(f"--compare {baseline}: no oblix_nb package there")
    runs_of: dict[str, list[dict]] = {name: [] for name in trees}
    for i in range(rounds):
        for name in (("current", "baseline") if i % 2 == 0 else ("baseline", "current")):
            env = {**os.environ, "PYTHONPATH": trees[name]}
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--only", part, *child_args],
                                  env=env, capture_output=True, text=True, timeout=3600)
            try:
                result = json.loads(done.stdout)[0]
            except (ValueError, IndexError):
                raise SystemExit(f"{name} run failed:\n{done.stdout}\n{done.stderr}") from None
            if Path(result["package"]).parent != Path(trees[name]):
                raise SystemExit(f"{name} run imported oblix_nb from {result['package']}, not {trees[name]}")
            runs_of[name].append(result)
    med = statistics.median
    summary: dict = {}
    for name, results in runs_of.items():
        if part == "engine":
            summary[name] = {"tree": trees[name], "per_call_ms": med(r["per_call_ms"]["median"] for r in results),
                             "per_round_ms": [round(r["per_call_ms"]["median"], 3) for r in results]}
        else:
            summary[name] = {
                "tree": trees[name],
                "ttft_ratio_vs_raw": med(r["ttft_ms"]["ratio"] for r in results),
                "total_ratio_vs_raw": med(r["total_ms"]["ratio"] for r in results),
                "ttft_overhead_ms": med(r["ttft_ms"]["overhead_median_paired"] for r in results),
                "total_overhead_ms": med(r["total_ms"]["overhead_median_paired"] for r in results),
                "per_round_ttft_ratio_vs_raw": [round(r["ttft_ms"]["ratio"], 4) for r in results],
            }
    cur, base = summary["current"], summary["baseline"]
    if part == "engine":
        ratios = {"per_call": cur["per_call_ms"] / base["per_call_ms"]}
    else:
        ratios = {"ttft": cur["ttft_ratio_vs_raw"] / base["ttft_ratio_vs_raw"],
                  "total": cur["total_ratio_vs_raw"] / base["total_ratio_vs_raw"]}
    return {"bench": f"part {part!r}: this checkout vs a baseline checkout, alternating subprocesses",
            "rounds": rounds, "child_args": child_args, **summary,
            "ratio_vs_baseline": {**ratios, "goal": 1.05, "ok": all(r <= 1.05 for r in ratios.values())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--embedded-runs", type=int, default=10)
    ap.add_argument("--embedded-max-tokens", type=int, default=128)
    ap.add_argument("--checkpoint-runs", type=int, default=10)
    ap.add_argument("--checkpoint-max-tokens", type=int, default=160)
    ap.add_argument("--engine-calls", type=int, default=300)
    ap.add_argument("--only", choices=["openai", "embedded", "checkpoint", "engine"], help="run one part only")
    ap.add_argument("--compare", metavar="DIR", help="compare part 1 with the oblix_nb package in DIR")
    ap.add_argument("--rounds", type=int, default=4, help="subprocess runs per tree with --compare")
    args = ap.parse_args(argv)
    if args.compare:
        part = args.only or "openai"
        if part not in ("openai", "engine"):
            raise SystemExit("--compare takes --only openai or --only engine")
        child = ["--engine-calls", str(args.engine_calls)] if part == "engine" else \
            ["--runs", str(args.runs), "--max-tokens", str(args.max_tokens)]
        out = compare(args.compare, part, args.rounds, child)
        print(json.dumps(out, indent=2))
        return 0 if out["ratio_vs_baseline"]["ok"] else 1
    parts = {"openai": lambda: bench_openai(args.runs, args.max_tokens),
             "embedded": lambda: bench_embedded(args.embedded_runs, args.embedded_max_tokens),
             "checkpoint": lambda: bench_checkpoint(args.checkpoint_runs, args.checkpoint_max_tokens),
             "engine": lambda: bench_engine(args.engine_calls)}
    out = [asyncio.run(make()) for name, make in parts.items()
           if args.only == name or (args.only is None and name != "engine")]
    print(json.dumps(out, indent=2))
    return 0 if all((o.get("ttft_ms") or o.get("tokens_per_s") or o["per_call_ms"])["ok"] for o in out) else 1


if __name__ == "__main__":
    sys.exit(main())
