"""Model backends, one module each; imported lazily so that hooking one never imports the others' clients."""
from __future__ import annotations

from .base import ModelBackend, ModelType


def make_backend(model_type: ModelType, model_name: str, endpoint: str | None = None,
                 api_key: str | None = None, **kwargs) -> ModelBackend:
    """The backend object for one ``hook_model`` call (not yet connected)."""
    model_type = ModelType.parse(model_type)
    if model_type is ModelType.OLLAMA:
        from .ollama import OllamaBackend
        return OllamaBackend(model_name, endpoint, api_key=api_key, **kwargs)
    if model_type is ModelType.OPENAI:
        from .openai import OpenAIBackend
        return OpenAIBackend(model_name, endpoint, api_key=api_key, **kwargs)
    if model_type is ModelType.LLAMACPP:
        from .llamacpp import LlamaCppBackend
        return LlamaCppBackend(model_name, endpoint, **kwargs)
    if model_type is ModelType.CLAUDE:
        from .claude import ClaudeBackend
        return ClaudeBackend(model_name, endpoint, api_key=api_key, **kwargs)
    raise NotImplementedError(f"{model_type.value} models are not available in this build of oblix_nb")


def __getattr__(name: str):
    """``discover_models``, ``strongest_local``, ``default_local_model`` (models/discover.py), imported on use."""
    if name in ("discover_models", "strongest_local", "default_local_model"):
        from . import discover

        return getattr(discover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelBackend", "ModelType", "make_backend", "discover_models", "strongest_local", "default_local_model"]
