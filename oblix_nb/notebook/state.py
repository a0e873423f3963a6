"""The one OblixClient per kernel that the magics share (and that notebook code can get with ``get_client()``).

It is created on first use, with ``home`` from ``%config OblixMagics.home`` (else env ``OBLIX_HOME``, else
``~/.oblix``). Changing ``home`` later points the same client at another session store (hooked models stay).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The default-model policy lives in the core (oblix_nb.default_model); these names stay importable from here.
from ..default_model import EMBEDDED_MODEL, EMBEDDED_MODEL_ID, HOW_TO_HOOK, embedded_model_available  # noqa: F401

if TYPE_CHECKING:
    from ..client import OblixClient

_lock = threading.RLock()
_client: OblixClient | None = None
_home: str | None = None          # what %config OblixMagics.home asked for ("" = default)
_max_history: int | None = None
_sink_factory = None                 # the notebook sink factory while the extension is loaded in a kernel
_chat_handler = None                 # execute(chat=True) -> the chat panel, while loaded in a kernel


def get_client(home: str | os.PathLike | None = None) -> OblixClient:
    """The kernel's shared client (made on first call). ``home`` only matters for the first call."""
    global _client
    with _lock:
        if _client is None:
            from ..client import OblixClient

            chosen = home if home is not None else (_home or None)
            _client = OblixClient(home=chosen)
            _apply(_client)
        return _client


def set_client(client: OblixClient | None) -> None:
    """Make ``client`` the one the magics use (e.g. a client you configured yourself)."""
    global _client
    with _lock:
        _client = client
        if client is not None:
            _apply(client)


def peek_client() -> OblixClient | None:
    """The shared client if it exists, without creating it."""
    return _client


def _apply(client: OblixClient) -> None:
    if _max_history is not None:
        client.max_history_messages = _max_history
    if _chat_handler is not None:
        client.chat_handler = _chat_handler


def set_chat_handler(handler) -> None:
    """Install (None: remove) the shared client's ``chat_handler`` (``execute(..., chat=True)``)."""
    global _chat_handler
    with _lock:
        previous, _chat_handler = _chat_handler, handler
        if _client is not None:
            if handler is not None:
                _client.chat_handler = handler
            elif previous is not None and _client.chat_handler is previous:
                _client.chat_handler = None


def set_home(home: str | None) -> None:
    """Point the shared client (now or when it is made) at ``home`` ("" or None: the default)."""
    global _home
    with _lock:
        _home = home or None
        client = _client
        if client is None:
            return
        from ..client import default_home
        from ..sessions import SessionStore

        new_home = Path(_home).expanduser() if _home else default_home()
        if Path(client.home) == new_home:
            return
        old = client.sessions
        client.home = new_home
        client.sessions = SessionStore(new_home / "sessions.db")
        client.current_session_id = None
        close = getattr(old, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the old store is no longer used either way
                pass


def set_max_history(n: int | None) -> None:
    global _max_history
    with _lock:
        _max_history = n
        if _client is not None and n is not None:
            _client.max_history_messages = n


def set_sink_factory(factory) -> None:
    """Install (or with None, remove) the notebook sink factory as the default of every OblixClient in this
    kernel. Clients look the default up at call time, so the shared one and those made earlier follow it."""
    global _sink_factory
    from .. import client as client_module

    with _lock:
        previous, _sink_factory = _sink_factory, factory
        if factory is not None:
            client_module.default_sink_factory = factory
        elif previous is not None and client_module.default_sink_factory is previous:
            client_module.default_sink_factory = client_module.stdout_sink_factory


def reset() -> None:
    """Forget the shared client (tests). Does not shut it down."""
    global _client, _home, _max_history
    with _lock:
        _client = None
        _home = None
        _max_history = None


def describe() -> dict[str, Any]:
    c = _client
    return {"client": repr(c) if c is not None else None, "home": _home, "max_history": _max_history}
