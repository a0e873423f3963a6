"""oblix_nb: a hybrid local <-> cloud LLM client for Jupyter whose conversations are durable, queryable data.

    from oblix_nb import OblixClient, ModelType
    client = OblixClient()
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    await client.execute("Hello!")

In IPython/Jupyter: ``%load_ext oblix_nb``, then ``%oblix_session`` and ``%%oblix``.
``import oblix_nb`` stays light: pandas, ipywidgets, llama_cpp and anthropic are imported only when used.
"""
from __future__ import annotations

from ._version import __version__
from .agents import BudgetAgent, ConnectivityAgent, ResourceMonitor
from .client import OblixClient
from .errors import (
    BudgetExceededError,
    ModelCallError,
    ModelUnavailableError,
    NoModelHookedError,
    OblixError,
    ReplyNotStoredError,
    RowError,
    SchemaError,
    SessionExistsError,
    SessionFileError,
    SessionNotFoundError,
    StorageError,
    StructuredOutputError,
)
from .models.base import ModelType
from .streaming import StdoutSink, StreamSink

__all__ = [
    "__version__", "OblixClient", "ModelType", "ResourceMonitor", "ConnectivityAgent", "BudgetAgent", "StreamSink", "StdoutSink",
    "OblixError", "SessionNotFoundError", "SessionExistsError", "ModelUnavailableError", "ModelCallError", "NoModelHookedError",
    "StorageError", "ReplyNotStoredError", "SessionFileError", "SchemaError", "StructuredOutputError", "RowError", "BudgetExceededError",
    "load_ipython_extension", "unload_ipython_extension",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext oblix_nb``: registers ``%oblix_session``, ``%%oblix`` and ``%oblix_chat``."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)
