"""From a model name to a GGUF file: the forms ``hook_model(ModelType.LLAMACPP, name)`` takes.

Sits above :mod:`.gguf` (header facts, shipped models), :mod:`.hub` (Hugging Face downloads) and
:mod:`.discover` (Ollama's on-disk store), so none of those needs the others to resolve a name.
"""
from __future__ import annotations

import os
from pathlib import Path

from .discover import ollama_store_gguf
from .gguf import SHIPPED, is_gguf, shipped_gguf
from .hub import resolve_hf

__all__ = ["resolve_gguf"]


def resolve_gguf(name_or_path: str | os.PathLike) -> Path:
    """Where the embedded engine's GGUF comes from, by the forms ``hook_model(ModelType.LLAMACPP, name)`` takes:

    - a short name from :data:`SHIPPED` (``"smollm2-135m"``);
    - ``"hf:OWNER/REPO[@REV][/PATH/FILE.gguf]"`` or ``"hf:OWNER/REPO[@REV]:QUANT"``: a file of a Hugging Face Hub
      repo, from the local Hub cache or downloaded into it (:mod:`oblix_nb.models.hub`);
    - ``"ollama:NAME[:TAG]"``: a model of Ollama's on-disk store (``$OLLAMA_MODELS`` or ``~/.ollama/models``),
      loaded without Ollama running (:func:`oblix_nb.models.discover.ollama_store_gguf`);
    - a path to a ``.gguf`` file, or to any file that starts with the GGUF magic (e.g. an Ollama blob).

    Raises FileNotFoundError saying how to get the model (hub errors: :class:`~oblix_nb.models.hub.HubError`,
    an OSError too).
    """
    key = str(name_or_path)
    if key.startswith("hf:"):
        return resolve_hf(key)
    if key.startswith("ollama:"):
        return ollama_store_gguf(key[len("ollama:"):])
    if key in SHIPPED:
        path = shipped_gguf(key)
        if path is None:
            raise FileNotFoundError(f"model {key!r} is not installed; install it with: {SHIPPED[key][2]}")
        return path
    path = Path(key).expanduser()
    if path.suffix.lower() != ".gguf" and not (path.is_file() and is_gguf(path)):
        raise FileNotFoundError(
            f"{key!r} is neither a known shipped model ({', '.join(SHIPPED)}), 'hf:OWNER/REPO[/FILE.gguf]', "
            f"'ollama:NAME[:TAG]', nor a path to a GGUF file")
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path
