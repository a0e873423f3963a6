"""Stopping the embedded model while it reads a long prompt, and what the stoppable prompt reading costs.

    python bench/stop.py [--rounds 3] [--tokens 3000] [--stop-after 2.0]

Issue 18 item 4: Stop must take effect within 1 s at any point, including while the prompt is being read.
The embedded backend reads the prompt in timed steps with llama.cpp's abort callback armed (see
oblix_nb/models/llamacpp.py). Side by side, alternating order, one SmolLM2-135M each (n_ctx 8192, 2 threads):

* ``prompt_s``: a ~``--tokens``-token prompt read and 1 token generated -- llama-cpp-python's own
  ``create_chat_completion`` (baseline) vs the backend's ``complete`` (ours: steps + abort callback + progress);
* ``stop_s``: ours only -- the stream is cancelled ``--stop-after`` s after send; seconds until it has ended.

Prints JSON: ``{"rows": [{metric, ours_s, baseline_s, ratio}...], "stop": {...}, "load": ...}``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from oblix_nb.models.base import GenerationParams
from oblix_nb.models.gguf import resolve_gguf
from oblix_nb.models.llamacpp import LlamaCppBackend


def prompt_messages(tokens: int, salt: int) -> list[dict]:
    words = " ".join(f"the ferry at station {salt}-{i} reported calm water" for i in range(tokens // 9))
    return [{"role": "user", "content": f"Run {salt}. {words}\nSummarise."}]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--stop-after", type=float, default=2.0)
    args = ap.parse_args()
    import llama_cpp

    path = str(resolve_gguf("smollm2-135m"))
    ours = LlamaCppBackend("smollm2-135m", model_path=path, n_ctx=8192, n_threads=2)
    await ours.connect()
    base = llama_cpp.Llama(model_path=path, n_ctx=8192, n_threads=2, verbose=False)
    timings: dict[str, list[float]] = {"ours": [], "baseline": []}
    progress_events: list[int] = []
    for r in range(args.rounds):
        for side in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
            messages = prompt_messages(args.tokens, 100 * r + len(side))  # fresh text: nothing cached
            t0 = time.perf_counter()
            if side == "ours":
                events = []
                await ours.complete(messages, GenerationParams(1, 0.0, on_progress=events.append))
                progress_events.append(len(events))
            else:
                await asyncio.to_thread(base.create_chat_completion, messages=messages, max_tokens=1,
                                        temperature=0.0)
            timings[side].append(time.perf_counter() - t0)
    stops = []
    for r in range(args.rounds):
        messages = prompt_messages(args.tokens, 1000 + r)

        async def drain():
            return [i async for i in ours.stream(messages, GenerationParams(16, 0.0))]

        task = asyncio.create_task(drain())
        await asyncio.sleep(args.stop_after)
        t0 = time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        stops.append(time.perf_counter() - t0)
    await ours.aclose()
    o, b = statistics.median(timings["ours"]), statistics.median(timings["baseline"])
    print(json.dumps({
        "rows": [{"metric": "prompt_s (median)", "ours_s": round(o, 3), "baseline_s": round(b, 3),
                  "ratio": round(o / b, 3)}],
        "runs": {k: [round(x, 3) for x in v] for k, v in timings.items()},
        "progress_events_per_call": progress_events,
        "stop": {"after_s": args.stop_after, "took_s": [round(x, 3) for x in stops], "max_s": round(max(stops), 3)},
        "tokens": args.tokens, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
