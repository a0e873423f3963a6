"""The background event loop and the sync bridge: no nested loops, cancellation reaches the coroutine."""
import asyncio
import threading
import time

import pytest

from oblix_nb import runtime


def test_run_returns_result_on_the_package_thread():
    async def where():
        return threading.current_thread().name

    assert runtime.run(where()) == "oblix-nb-loop"


def test_run_works_inside_a_running_loop():
    async def inner():
        return 42

    async def caller():  # a cell with a running loop calling a sync API
        return runtime.run(inner())

    assert asyncio.run(caller()) == 42


def test_run_propagates_errors():
    async def boom():
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        runtime.run(boom())


def test_timeout_cancels_the_coroutine():
    cancelled = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        runtime.run(slow(), timeout=0.05)
    assert cancelled.wait(2)


def test_iterate_streams_items_as_they_come():
    async def gen():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield i

    assert list(runtime.iterate(gen())) == [0, 1, 2]


def test_closing_iterate_cancels_the_producer():
    stopped = threading.Event()

    async def gen():
        try:
            i = 0
            while True:
                await asyncio.sleep(0.005)
                yield i
                i += 1
        finally:
            stopped.set()

    it = runtime.iterate(gen())
    assert next(it) == 0
    it.close()
    assert stopped.wait(2)


def test_to_loop_runs_on_package_loop_from_another_loop():
    async def where():
        return threading.current_thread().name

    async def caller():
        return await runtime.to_loop(where())

    assert asyncio.run(caller()) == "oblix-nb-loop"


def test_run_from_loop_thread_is_refused():
    async def nested():
        async def x():
            return 1
        return runtime.run(x())

    with pytest.raises(RuntimeError, match="background loop"):
        runtime.run(nested())


def test_keyboard_interrupt_cancels(monkeypatch):
    started = threading.Event()
    cancelled = threading.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    import concurrent.futures

    real_result = concurrent.futures.Future.result
    calls = {"n": 0}

    def interrupting_result(self, timeout=None):
        calls["n"] += 1
        if calls["n"] == 1:
            started.wait(2)
            raise KeyboardInterrupt
        return real_result(self, timeout)

    monkeypatch.setattr(concurrent.futures.Future, "result", interrupting_result)
    with pytest.raises(KeyboardInterrupt):
        runtime.run(slow())
    monkeypatch.undo()
    assert cancelled.wait(2)
    time.sleep(0)


def test_package_threads_leave_sigint_to_the_main_thread():
    """SIGINT must reach the main thread (Ctrl-C in a terminal, a kernel interrupt): the loop thread and the
    threads it starts block it, and a wait in run() wakes often enough to act on a signal flagged elsewhere."""
    import asyncio
    import signal

    from oblix_nb import runtime

    async def loop_mask():
        return signal.pthread_sigmask(signal.SIG_BLOCK, [])

    async def executor_mask():
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: signal.pthread_sigmask(signal.SIG_BLOCK, []))

    assert signal.SIGINT in runtime.run(loop_mask())
    assert signal.SIGINT in runtime.run(executor_mask())
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the caller's mask is untouched
