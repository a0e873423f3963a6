"""Embedded engine threads (issue 18 item 3): the rule, the machine facts it reads, and per-call changes seen by
llama.cpp's own context. Speed itself is measured by bench/threads.py, not here."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from oblix_nb.models import cpu
from oblix_nb.models.cpu import LoadMonitor, threads_for, usable_cores


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2), (2, 0.2, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 14.0, 1),
    (1, 0.0, 1), (8, 0.0, 8), (8, 2.5, 5), (8, 2.8, 5), (8, 2.7, 5), (8, 7.9, 1), (4, -1.0, 4),
])
def test_thread_rule(cores, busy, expected):
    assert threads_for(cores, busy) == expected


def test_usable_cores_follow_affinity():
    n = usable_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from oblix_nb.models.cpu import usable_cores; print(usable_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_load_arithmetic_excludes_this_process():
    """other = (machine busy time - this process's time) / elapsed, over the last second's samples."""
    m = LoadMonitor()
    t = time.monotonic()
    with m._lock:
        m._samples.clear()
        m._samples.extend([(t - 3.0, 0.0, 0.0),            # older than the window: ignored
                           (t - 1.0, 100.0, 10.0), (t - 0.5, 100.9, 10.4), (t, 101.8, 10.8)])
    assert m.other_busy() == pytest.approx(1.0)  # 1.8 s busy, 0.8 s of it ours, over 1 s
    with m._lock:
        m._samples.extend([(t + 0.001, 101.8, 10.8)])
        m._samples.clear()
        m._samples.extend([(t - 1.0, 100.0, 10.0), (time.monotonic(), 100.0, 12.0)])
    assert m.other_busy() == 0.0  # never negative


def test_monitor_sees_a_busy_process():
    m = LoadMonitor()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.2)
        m._sample()
        time.sleep(1.0)
        m._sample()
        busy = m.other_busy()
    finally:
        burner.kill()
        burner.wait()
    # the burner alone keeps some of a core busy (all of one on an idle machine); our own process is excluded
    assert busy > 0.1


@pytest.fixture
def backend(gguf_path):
    pytest.importorskip("llama_cpp")
    from oblix_nb import runtime
    from oblix_nb.models.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(str(gguf_path))
    runtime.run(b.connect())
    yield b
    runtime.run(b.aclose())


def _ctx_threads(b) -> tuple[int, int]:
    import llama_cpp

    ctx = b._llama._ctx.ctx
    return llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)


def _reply(b, **options) -> None:
    from oblix_nb import runtime
    from oblix_nb.models.base import GenerationParams

    async def go():
        async for _ in b.stream([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=2)):
            pass

    runtime.run(go())


def test_auto_threads_follow_the_load_per_call(backend, monkeypatch):
    cores = usable_cores()
    info = backend.describe()
    assert info["n_threads_setting"] == "auto" and 1 <= info["n_threads"] <= cores
    assert "usable core" in info["threads_reason"]
    monkeypatch.setattr(cpu, "usable_cores", lambda: 4)  # as if on a 4-core machine
    for busy, expected in ((4.0, 1), (0.0, 4), (2.1, 2)):
        monkeypatch.setattr(LoadMonitor, "other_busy", lambda self, b=busy: b)
        _reply(backend)
        assert backend.n_threads == expected
        assert _ctx_threads(backend) == (expected, expected)  # what llama.cpp itself will use
        assert f"{busy:.2f} busy" in backend.threads_reason


def test_fixed_threads_and_set_n_threads(backend, monkeypatch):
    monkeypatch.setattr(LoadMonitor, "other_busy", lambda self: 0.0)
    backend.set_n_threads(1)
    _reply(backend)
    assert _ctx_threads(backend) == (1, 1) and backend.describe()["n_threads_setting"] == 1
    backend.set_n_threads(3)
    _reply(backend)
    assert _ctx_threads(backend) == (3, 3) and backend.threads_reason == "set by n_threads"
    backend.set_n_threads("auto")
    monkeypatch.setattr(LoadMonitor, "other_busy", lambda self: 99.0)
    _reply(backend)
    assert _ctx_threads(backend) == (1, 1)
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), ("many", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            backend.set_n_threads(bad)


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), ("2", TypeError),
                                        (False, TypeError)])
def test_bad_n_threads_refused_at_hook(value, exc):
    from oblix_nb.models.llamacpp import LlamaCppBackend

    with pytest.raises(exc, match="n_threads"):
        LlamaCppBackend("smollm2-135m", n_threads=value)


def test_fixed_count_is_used_at_load(gguf_path):
    pytest.importorskip("llama_cpp")
    from oblix_nb import runtime
    from oblix_nb.models.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(str(gguf_path), n_threads=1)
    runtime.run(b.connect())
    try:
        assert _ctx_threads(b) == (1, 1) and b._monitor is None  # no load sampling for a fixed count
    finally:
        runtime.run(b.aclose())
