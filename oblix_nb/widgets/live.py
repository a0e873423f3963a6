"""Live data for the widgets: one cheap poller per session store on the package's loop.

Every ``interval`` seconds (default 0.5) the poller reads :meth:`SessionStore.change_token` — SQLite's
``PRAGMA data_version`` (bumped by commits of other connections: another kernel, another process, another
store object) plus the store's own write count (commits through this connection: ``%%oblix``, code, the
widgets' own Copy/Merge/Delete). Only when the token changed are the subscribers called — in a worker
thread, so a refresh never stalls a streaming reply on the loop. Nothing is re-read while nothing changes.

Subscribers are held weakly (a widget that is garbage-collected unsubscribes itself); the poller stops when
its last subscriber is gone or the store is closed.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import runtime

if TYPE_CHECKING:
    from ..sessions.base import SessionStoreBase

POLL_INTERVAL = 0.5
log = logging.getLogger(__name__)

_lock = threading.Lock()
_watchers: weakref.WeakKeyDictionary[object, StoreWatcher] = weakref.WeakKeyDictionary()


class StoreWatcher:
    """Polls one store's change token and calls the subscribers when it changes."""

    def __init__(self, store: SessionStoreBase, interval: float = POLL_INTERVAL):
        self._store = weakref.ref(store)
        self.interval = interval
        self._subscribers: dict[int, Callable[[], Callable[[], None] | None]] = {}
        self._next = 0
        self._job: runtime.Job | None = None
        self.polls = 0      # change_token reads
        self.changes = 0    # times the subscribers were called

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], object]:
        """Call ``callback()`` (a bound method: held weakly) after each change. Returns an unsubscribe."""
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        with _lock:
            key = self._next
            self._next += 1
            self._subscribers[key] = ref
            if self._job is None or self._job.done():
                self._job = runtime.submit(self._poll())
        return lambda: self._subscribers.pop(key, None)

    async def _poll(self) -> None:
        store = self._store()
        if store is None:
            return
        try:
            token = store.change_token()
        except Exception:  # noqa: BLE001 - a closed store: nothing to watch
            return
        del store
        while True:
            await asyncio.sleep(self.interval)
            store = self._store()
            with _lock:
                refs = [ref() for ref in self._subscribers.values()]
                callbacks = [cb for cb in refs if cb is not None]
                if store is None or not callbacks:
                    self._job = None
                    return
            try:
                new = store.change_token()
            except Exception:  # noqa: BLE001 - the store was closed
                with _lock:
                    self._job = None
                return
            finally:
                del store
            self.polls += 1
            if new == token:
                continue
            token = new
            self.changes += 1
            for callback in callbacks:
                try:
                    await asyncio.to_thread(callback)
                except Exception:  # noqa: BLE001 - one widget's failed refresh must not stop the others
                    log.exception("oblix_nb widget refresh failed")


@atexit.register
def _stop_all() -> None:
    """At exit (before the loop thread stops: atexit runs handlers last-registered first) end the pollers."""
    with _lock:
        jobs = [w._job for w in list(_watchers.values()) if w._job is not None]
    for job in jobs:
        job.cancel()


def watcher(store: SessionStoreBase) -> StoreWatcher:
    """The one watcher of ``store`` (made on first use)."""
    with _lock:
        found = _watchers.get(store)
        if found is None:
            found = _watchers[store] = StoreWatcher(store)
        return found


def watch(store: SessionStoreBase, callback: Callable[[], None]) -> Callable[[], object]:
    """Subscribe ``callback`` to changes of ``store``; returns the function that unsubscribes it."""
    return watcher(store).subscribe(callback)


__all__ = ["watch", "watcher", "StoreWatcher", "POLL_INTERVAL"]
