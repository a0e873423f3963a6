"""The package's own background event loop and the sync bridge onto it.

Notebook-facing sync calls (magics, widgets, the sync session API used from a running kernel) must not nest
event loops: ipykernel already runs one in the main thread, and ``nest_asyncio`` breaks "Run All". Instead,
every coroutine that a sync caller needs is run on ONE daemon thread owned by this module, and the caller
blocks on a concurrent future (or consumes an async iterator through a queue). A KeyboardInterrupt in the
caller (kernel interrupt, Ctrl-C) cancels the coroutine on the loop and waits for its cleanup, so upstream
requests really stop and partial replies get stored.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from ._util import block_interrupts

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def _run() -> None:
                block_interrupts()  # threads started from the loop (executors, workers) inherit the mask
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=_run, name="oblix-nb-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


class Job(concurrent.futures.Future):
    """A coroutine running as a task on the background loop, seen from other threads as a Future.

    Unlike ``asyncio.run_coroutine_threadsafe``'s future, ``cancel()`` does not mark it cancelled at once: it
    cancels the task, and the Job resolves (cancelled, or with the task's outcome) only when the task has
    finished its cleanup, so waiting on it really waits for partial replies to be stored.
    """

    def __init__(self, coro: Coroutine[Any, Any, T]):
        super().__init__()
        self._loop = get_loop()
        self._task: asyncio.Task | None = None
        self._loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro) -> None:
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        if task.cancelled():
            super().cancel()
        elif task.exception() is not None:
            self.set_exception(task.exception())
        else:
            self.set_result(task.result())

    def cancel(self) -> bool:
        if self.done():
            return False
        # FIFO: this runs after _start, so the task exists by then.
        self._loop.call_soon_threadsafe(lambda: self._task is not None and self._task.cancel())
        return True


def submit(coro: Coroutine[Any, Any, T]) -> Job:
    """Schedule a coroutine on the background loop; returns a Job (a concurrent Future), without blocking."""
    return Job(coro)


def _cancel_and_wait(fut: concurrent.futures.Future, timeout: float = 10.0) -> None:
    fut.cancel()
    try:
        fut.result(timeout=timeout)
    except BaseException:  # noqa: BLE001 - CancelledError or the coroutine's own error during cleanup
        pass


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the background loop and wait for its result, from any non-loop thread.

    Works whether or not the calling thread has a running event loop (a Jupyter cell does).
    KeyboardInterrupt cancels the coroutine (awaiting its cleanup) and is re-raised.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError("oblix_nb.runtime.run() called from the background loop itself; await instead")
    fut = submit(coro)
    try:
        return _wait(fut, timeout)
    except KeyboardInterrupt:
        _cancel_and_wait(fut)
        raise
    except concurrent.futures.TimeoutError:
        _cancel_and_wait(fut)
        raise TimeoutError(f"operation did not finish within {timeout} s") from None


def _wait(fut: concurrent.futures.Future, timeout: float | None):
    """``fut.result(timeout)``, waking every 0.1 s: a SIGINT that the kernel delivered to another thread only
    flags the main thread, so a single long wait would not see Ctrl-C / a kernel interrupt until it ended."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
        try:
            return fut.result(timeout=step)
        except concurrent.futures.TimeoutError:
            if fut.done() or (deadline is not None and time.monotonic() >= deadline):
                raise


_POLL_S = 0.1
_DONE = object()


def iterate(agen: AsyncIterator[T], maxsize: int = 0) -> Iterator[T]:
    """Consume an async iterator from a sync thread, item by item, as the items arrive.

    Closing the returned generator (or a KeyboardInterrupt while waiting) cancels the producer.
    """
    q: queue.Queue = queue.Queue(maxsize)

    async def pump() -> None:
        try:
            async for item in agen:
                q.put((True, item))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            q.put((False, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            q.put((True, _DONE))
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException:  # noqa: BLE001
                    pass

    fut = submit(pump())
    finished = False
    try:
        while True:
            ok, item = q.get()
            if ok and item is _DONE:
                finished = True
                return
            if not ok:
                finished = True
                if isinstance(item, asyncio.CancelledError):
                    raise KeyboardInterrupt from None
                raise item
            yield item
    finally:
        if not finished:
            _cancel_and_wait(fut)
        else:
            try:
                fut.result(timeout=10)
            except BaseException:  # noqa: BLE001 - already forwarded
                pass


async def to_loop(coro: Awaitable[T]) -> T:
    """Await ``coro`` on the background loop from a coroutine running on another loop (e.g. a kernel cell's).

    Used by the async API so that objects bound to the package loop (HTTP clients, locks) are always used on
    the loop that created them, whichever loop the caller awaits from.
    """
    if in_loop_thread():
        return await coro
    fut = submit(coro)  # type: ignore[arg-type]
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        # Cancel the task on the package loop and wait (bounded) for its cleanup, e.g. storing a partial reply.
        fut.cancel()
        await asyncio.wait([asyncio.wrap_future(fut)], timeout=10)
        raise


def _shutdown() -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
