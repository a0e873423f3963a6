"""Embedded engine threads (issue 18): tokens/s at 1, 2 and N threads vs the automatic choice, idle and loaded.

One SmolLM2-135M model is loaded once through ``oblix_nb.models.llamacpp.LlamaCppBackend``; before each reply its
thread count is set (``set_n_threads``) to 1, 2, N (the usable physical cores) or ``"auto"`` (the per-call choice
of :mod:`oblix_nb.models.cpu`). Settings are interleaved round by round, so background load drifts hit all alike.
tokens/s of a reply = streamed tokens / (end - start), the same prompt, temperature 0, at most ``--max-tokens``
tokens or ``--budget`` seconds per reply (an oversubscribed setting can take a minute for 32 tokens).

Scenarios: ``idle`` (whatever else runs on the machine: its load is measured and reported) and ``loaded`` (plus
``--burners`` busy-looping processes the bench starts and stops). ``--knee`` adds one burner at 25/50/75 % duty,
to see at which background load more threads stop paying (the knee the automatic rule's margin comes from).
Per scenario: median tokens/s per setting, the thread counts auto chose, the best fixed setting, and
``auto_vs_best`` (goal: >= 0.9, i.e. auto within 10 % of the best).

Run: ``python bench/threads.py [--rounds 3] [--max-tokens 32] [--burners 1] [--knee]``. Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

PROMPT = "Write two sentences about rivers."


def _burn(duty: float) -> None:
    """Busy-loop ``duty`` of every 20 ms (1.0: all the time)."""
    period = 0.02
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < period * duty:
            pass
        if duty < 1:
            time.sleep(period * (1 - duty))


async def _reply(backend, max_tokens: int, budget: float) -> float:
    from oblix_nb.models.base import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    n = 0
    t0 = time.perf_counter()
    stream = backend.stream([{"role": "user", "content": PROMPT}], params)
    try:
        async for item in stream:
            if isinstance(item, str):
                n += 1
                if time.perf_counter() - t0 > budget:
                    break
    finally:
        await stream.aclose()
    return n / (time.perf_counter() - t0)


async def scenario(backend, settings, rounds: int, max_tokens: int, budget: float, duties) -> dict:
    from oblix_nb.models.cpu import LoadMonitor

    procs = [mp.Process(target=_burn, args=(d,), daemon=True) for d in duties]
    for p in procs:
        p.start()
    try:
        await asyncio.sleep(1.5)  # let the burners and the load monitor settle
        background = LoadMonitor.shared().other_busy()
        rates: dict = {str(s): [] for s in settings}
        chosen = []
        for _ in range(rounds):
            for s in settings:
                backend.set_n_threads(s)
                rates[str(s)].append(await _reply(backend, max_tokens, budget))
                if s == "auto":
                    chosen.append(backend.n_threads)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
    med = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    fixed = {k: v for k, v in med.items() if k != "auto"}
    best = max(fixed, key=fixed.get)
    ratio = med["auto"] / fixed[best] if fixed[best] else None
    return {"burner_duties": list(duties), "background_busy_cores": round(background, 2),
            "loadavg_1min": round(os.getloadavg()[0], 2), "tokens_per_s": med,
            "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()}, "auto_threads": chosen,
            "best_fixed": best, "auto_vs_best": None if ratio is None else round(ratio, 3),
            "auto_within_10pct": ratio is not None and ratio >= 0.9}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--budget", type=float, default=8.0, help="seconds per reply at most")
    ap.add_argument("--burners", type=int, default=1, help="busy processes in the 'loaded' scenario")
    ap.add_argument("--knee", action="store_true", help="also 25/50/75 %% duty burners")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    from oblix_nb.models.cpu import THREAD_MARGIN, usable_cores
    from oblix_nb.models.llamacpp import LlamaCppBackend

    cores = usable_cores()
    settings = sorted({1, 2, cores}) + ["auto"]
    backend = LlamaCppBackend(args.model, n_threads="auto")
    await backend.connect()
    try:
        await _reply(backend, 8, args.budget)  # warm-up
        plan = {"idle": [], "loaded": [1.0] * args.burners}
        if args.knee:
            plan.update({f"duty_{int(d * 100)}": [d] for d in (0.25, 0.5, 0.75)})
        out = {"benchmark": "threads", "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
               "usable_physical_cores": cores, "thread_margin": THREAD_MARGIN, "settings": [str(s) for s in settings],
               "rounds": args.rounds, "max_tokens": args.max_tokens, "scenarios": {}}
        for name, duties in plan.items():
            out["scenarios"][name] = await scenario(backend, settings, args.rounds, args.max_tokens, args.budget,
                                                    duties)
            print(f"# {name}: {json.dumps(out['scenarios'][name]['tokens_per_s'])}", file=sys.stderr, flush=True)
    finally:
        await backend.aclose()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
