"""The notebook layer: ``%load_ext oblix_nb`` magics, streaming cell output, DataFrames, notebook runner.

``from oblix_nb.notebook import get_client`` gives the kernel's shared client (the one the magics use).
Importing this package stays light: IPython and pandas are imported only by the parts that need them.
"""
from __future__ import annotations

from .state import get_client, set_client

__all__ = ["get_client", "set_client", "Reply", "OblixMagics", "load_ipython_extension",
           "unload_ipython_extension"]


def __getattr__(name: str):
    if name == "Reply":
        from .display import Reply
        return Reply
    if name in ("OblixMagics", "load_ipython_extension", "unload_ipython_extension"):
        from . import magics
        return getattr(magics, name)
    raise AttributeError(f"module 'oblix_nb.notebook' has no attribute {name!r}")
