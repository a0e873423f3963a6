"""client.map() in a real ipykernel: a kernel interrupt during ``await client.map(...)`` and during
``client.map_sync(...)`` stops the batch (no more model calls), keeps every finished row, and the next call
resumes from the store. The model is an in-test backend with a fixed delay, so the counts are exact."""
from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def kernel(tmp_path):
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env["OBLIX_HOME"] = str(tmp_path / "oblix-home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")] +
                                        [p for p in [env.get("PYTHONPATH")] if p])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(km, kc, code: str, interrupt_after: float | None = None, timeout: float = 120) -> tuple[str, str, str]:
    """(stdout, stderr, error name or '') of one cell; optionally interrupt the kernel after some seconds."""
    msg_id = kc.execute(code)
    t0 = time.monotonic()
    out, err, ename = [], [], ""
    interrupted = False
    while time.monotonic() - t0 < timeout:
        if interrupt_after is not None and not interrupted and time.monotonic() - t0 > interrupt_after:
            km.interrupt_kernel()
            interrupted = True
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            (out if content["name"] == "stdout" else err).append(content["text"])
        elif kind == "error":
            ename = content["ename"]
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), "".join(err), ename
    raise TimeoutError(code)


SETUP = """
from oblix_nb import OblixClient
from batch.test_batch import FakeBackend
client = OblixClient()
model = FakeBackend(delay=0.1)
client._models[model.model_id] = model
rows = [f"row {i}" for i in range(80)]

def settled():
    import time
    calls = model.calls
    time.sleep(0.8)
    stored = int((client.messages_df().role == "assistant").sum())
    print("calls", calls, model.calls, "stored", stored)
"""


def counts(stdout: str) -> tuple[int, int, int]:
    _, before, after, _, stored = stdout.split()
    return int(before), int(after), int(stored)


@pytest.mark.parametrize("call", ["await client.map(rows, '{value}', concurrency=2, progress=False)",
                                  "client.map_sync(rows, '{value}', concurrency=2, progress=False)"])
def test_kernel_interrupt_stops_the_batch_and_the_next_call_resumes(kernel, call):
    km, kc = kernel
    assert run(km, kc, SETUP)[2] == ""
    _, err, ename = run(km, kc, f"out = {call}", interrupt_after=1.5)
    assert ename in ("KeyboardInterrupt", "CancelledError") and "run the same map again to resume" in err
    before, after, stored = counts(run(km, kc, "settled()")[0])
    assert before == after, "model calls went on after the interrupt"
    assert 0 < stored < 80
    stdout, _, ename = run(km, kc, f"out = {call}\nprint(int(out['cached'].sum()), model.calls, "
                                   f"bool(out['error'].isna().all()), len(out))")
    assert ename == ""
    cached, calls, ok, n = stdout.split()
    assert int(cached) == stored and int(calls) == after + 80 - stored and ok == "True" and n == "80"
