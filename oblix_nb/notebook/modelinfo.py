"""``%oblix_model list``: the hooked models (and the models aliases name) as a DataFrame, reachability measured.

Reachability is checked the way ``hook_model`` checks a model — the endpoint's model listing (never a
generation, never billable) — concurrently, each bounded by ``timeout`` seconds. An embedded (in-process)
model is reachable when it is loaded.
"""
from __future__ import annotations

import asyncio
from typing import Any

from .. import runtime

COLUMNS = ["model_id", "type", "target", "endpoint", "context_window", "hooked", "reachable", "aliases", "default"]


async def _reachable(backend: Any, timeout: float) -> bool | None:
    if backend.model_type.value == "llamacpp":
        return getattr(backend, "_llama", None) is not None
    try:
        await asyncio.wait_for(backend.connect(), timeout)
        return True
    except Exception:  # noqa: BLE001 - unreachable, refused, model gone: all "no"
        return False


async def _probe_all(backends: list, timeout: float) -> list:
    return await asyncio.gather(*(_reachable(b, timeout) for b in backends))


def model_table(client: Any, default: str | None = None, timeout: float = 3.0):
    """One row per hooked model, then one per alias target that is not hooked (``hooked`` False)."""
    import pandas as pd

    backends = list(client.models.values())
    reachable = runtime.run(_probe_all(backends, timeout)) if backends else []
    aliases = client.model_aliases()
    by_target: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        by_target.setdefault(target, []).append(alias)
    resolved_default = aliases.get(default, default) if default else None
    rows = []
    for backend, ok in zip(backends, reachable):
        rows.append({"model_id": backend.model_id, "type": backend.model_type.value, "target": backend.target,
                     "endpoint": backend.endpoint or "in-process", "context_window": backend.context_window,
                     "hooked": True, "reachable": ok, "aliases": ", ".join(by_target.get(backend.model_id, [])),
                     "default": backend.model_id == resolved_default})
    hooked = {b.model_id for b in backends}
    for target, names in by_target.items():
        if target not in hooked:
            rows.append({"model_id": target, "type": target.partition(":")[0], "target": None, "endpoint": None,
                         "context_window": None, "hooked": False, "reachable": None, "aliases": ", ".join(names),
                         "default": target == resolved_default})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["context_window"] = frame["context_window"].astype("Int64")
    frame["reachable"] = frame["reachable"].astype("boolean")
    return frame
