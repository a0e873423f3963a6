"""How often the embedded model's replies fall into a loop: before/after its recommended sampling defaults.

30 fixed prompts (the kind the quickstart asks), each answered by the embedded SmolLM2-135M-Instruct through
``execute()`` (no session: every prompt stands alone), once per sampling configuration, with the same seed per
prompt in every configuration:

- ``before``: no defaults (``sampling={}``): llama-cpp-python's own (temperature 0.2, top_p 0.95, top_k 40,
  min_p 0.05, repeat_penalty 1.0);
- ``after``: the model's recommended defaults (``oblix_nb.models.gguf.RECOMMENDED_SAMPLING``), what
  ``hook_model(ModelType.LLAMACPP, "smollm2-135m")`` now uses when the caller gives none;
- with ``--explore``: a few more candidates (card values without a repeat penalty, stronger penalties).

A reply "loops" when some word 4-gram occurs 3 or more times in it (e.g. "cross-platform, cross-platform,
cross-platform, cross-platform, cross-platform, cross-platform" repeats the 4-gram "cross-platform
cross-platform cross-platform cross-platform"). Also reported: the mean share of distinct 4-grams (1.0 = no
4-gram repeats at all), and how many replies hit max_tokens.

Run: ``python bench/quality.py [--max-tokens 128] [--explore] [--threads 1]``. Prints JSON (and one line per
configuration on stderr as it finishes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter

PROMPTS = [
    "In two sentences: why would someone run a language model on their own laptop?",
    "Give me one concrete example of a task a small local model does well.",
    "What is SQLite? One sentence.",
    "Explain WAL mode in one paragraph.",
    "List three uses of a paperclip.",
    "Name three colours.",
    "Say hello in French.",
    "What is a Python list comprehension? Give an example.",
    "Write a haiku about autumn.",
    "What are the benefits of cross-platform development?",
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "How do I reverse a string in Python?",
    "What is the capital of Japan, and what is it known for?",
    "Explain what an API is to a beginner.",
    "Give three tips for writing clear emails.",
    "What is the difference between a process and a thread?",
    "Describe a sunset at the beach.",
    "Why is the sky blue?",
    "What does a data scientist do?",
    "Write a short product description for a reusable water bottle.",
    "Explain recursion with a simple example.",
    "What are the main causes of climate change?",
    "How does a hash table work?",
    "Suggest a name for a coffee shop and explain why.",
    "What is machine learning? Answer in plain words.",
    "Give me a recipe idea using eggs and spinach.",
    "What is the Pythagorean theorem?",
    "Write two sentences encouraging someone learning to code.",
    "Explain what a database index is.",
    "What should I pack for a weekend hiking trip?",
]
SEED_BASE = 1234

CONFIGS = {
    "before": {},
    "after": None,  # the model's recommended defaults
}
EXPLORE = {
    "card_only": {"temperature": 0.2, "top_p": 0.9},
    "card_rp1.2": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.2},
}

WORD_RE = re.compile(r"[\w'-]+", re.UNICODE)


def ngram_counts(text: str, n: int = 4) -> Counter:
    words = [w.lower() for w in WORD_RE.findall(text)]
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def loops(text: str, n: int = 4, times: int = 3) -> bool:
    """True if some word n-gram occurs ``times`` times or more."""
    return any(c >= times for c in ngram_counts(text, n).values())


def distinct_share(text: str, n: int = 4) -> float:
    counts = ngram_counts(text, n)
    total = sum(counts.values())
    return len(counts) / total if total else 1.0


async def run_config(name: str, sampling, max_tokens: int, threads: int) -> dict:
    from oblix_nb import ModelType, OblixClient

    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-quality-"))
    kwargs = {"n_threads": threads} if sampling is None else {"sampling": sampling, "n_threads": threads}
    try:
        await client.hook_model(ModelType.LLAMACPP, "smollm2-135m", **kwargs)
        backend = client.models["llamacpp:smollm2-135m"]
        replies = []
        t0 = time.perf_counter()
        for i, prompt in enumerate(PROMPTS):
            r = await client.execute(prompt, max_tokens=max_tokens, seed=SEED_BASE + i, stream=False)
            replies.append({"prompt": prompt, "text": r["response"],
                            "finish_reason": r["metrics"].get("finish_reason"),
                            "output_tokens": r["metrics"].get("output_tokens")})
        seconds = time.perf_counter() - t0
    finally:
        await client.shutdown()
    looped = [r for r in replies if loops(r["text"])]
    return {
        "config": name, "sampling": backend.sampling,
        "replies": len(replies), "looping_replies": len(looped),
        "loop_share": round(len(looped) / len(replies), 3),
        "mean_distinct_4gram_share": round(statistics.mean(distinct_share(r["text"]) for r in replies), 3),
        "hit_max_tokens": sum(r["finish_reason"] == "length" for r in replies),
        "mean_output_tokens": round(statistics.mean(r["output_tokens"] or 0 for r in replies), 1),
        "seconds": round(seconds, 1),
        "looping_examples": [{"prompt": r["prompt"], "text": r["text"][:160]} for r in looped[:3]],
    }


async def main_async(args) -> dict:
    configs = dict(CONFIGS)
    if args.explore:
        configs.update(EXPLORE)
    if args.only:
        configs = {name: sampling for name, sampling in {**CONFIGS, **EXPLORE}.items() if name in args.only}
    results = []
    for name, sampling in configs.items():
        results.append(await run_config(name, sampling, args.max_tokens, args.threads))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "looping_examples"}), file=sys.stderr,
              flush=True)
    by = {r["config"]: r for r in results}
    return {
        "bench": "embedded model reply loops (word 4-gram occurring >= 3 times)",
        "model": "llamacpp:smollm2-135m", "prompts": len(PROMPTS), "max_tokens": args.max_tokens,
        "n_threads": args.threads,
        "seeds": f"{SEED_BASE}..{SEED_BASE + len(PROMPTS) - 1} (one per prompt, same in every config)",
        "results": results,
        "loop_share_before": by["before"]["loop_share"] if "before" in by else None,
        "loop_share_after": by["after"]["loop_share"] if "after" in by else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--explore", action="store_true", help="also try a few other sampling settings")
    parser.add_argument("--only", nargs="+", metavar="CONFIG", help="run only these configurations")
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads, the same for every configuration (default 1: on a busy machine "
                             "one thread decodes far faster than two competing ones)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
