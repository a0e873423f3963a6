"""``%%oblix --over DF --cascade A,B --min-confidence X`` and the over-pipeline's fixes, in a real IPython shell
(in-test backends from test_cascade.py: fast, exact)."""
from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from batch.test_cascade import Scripted
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from oblix_nb import runtime
from oblix_nb.notebook import state


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    state.reset()
    shell.run_line_magic("load_ext", "oblix_nb")
    yield shell
    client = state.peek_client()
    if client is not None:
        runtime.run(client.shutdown())
        client.sessions.close()
    shell.run_line_magic("unload_ext", "oblix_nb")
    for name in ("oblix_result", "reviews", "out"):
        shell.user_ns.pop(name, None)
    state.reset()


def run(shell, cell):
    with capture_output() as cap:
        result = shell.run_cell(cell, store_history=False)
    return result, cap


def hook(*backends):
    client = state.get_client()
    for b in backends:
        client._models[b.model_id] = b
    return client


def test_over_with_a_cascade(ip):
    local = Scripted("small", sure=lambda p: 0.95 if " sure" in p else 0.4, answer=lambda p: "neg")
    cloud = Scripted("big", target="cloud", answer=lambda p: "pos")
    hook(local, cloud)
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a sure one", "an unsure one", "sure again"]})
    result, cap = run(ip, "%%oblix --over reviews --schema 'label pos|neg|neutral' --cascade openai:small,openai:big "
                          "--min-confidence 0.8 --into out\nClassify: {text}")
    assert result.success, (result.error_in_exec, cap.stderr)
    out = ip.user_ns["out"]
    assert out["escalated"].tolist() == [False, True, False]
    assert out["label"].tolist() == ["neg", "pos", "neg"] and cloud.calls == 1


@pytest.mark.parametrize("cell", [
    "%%oblix --over reviews --min-confidence 0.8\n{text}",                          # no --cascade
    "%%oblix --over reviews --cascade openai:small\n{text}",                        # one model
    "%%oblix --over reviews --cascade openai:small,openai:nope\n{text}",            # not hooked
    "%%oblix --over reviews --cascade openai:small,openai:big --min-confidence 2\n{text}",
    "%%oblix --over reviews --cascade openai:small,openai:big --model openai:big\n{text}",
    "%%oblix --cascade openai:small,openai:big\nplain prompt",                      # not with --over
    "%%oblix --over reviews\n{txet}",                                               # misspelled field
])
def test_over_cascade_usage_errors(ip, cell):
    local, cloud = Scripted("small"), Scripted("big", target="cloud")
    hook(local, cloud)
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    result, cap = run(ip, cell)
    assert not result.success or "UsageError" in cap.stderr or "Error" in cap.stderr
    assert local.calls == cloud.calls == 0


def test_magic_temperature_0_reuses_the_api_batch(ip):
    local = Scripted("small")
    client = hook(local)
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a", "b"]})
    client.map_sync(ip.user_ns["reviews"], "Say {text}", temperature=0, max_tokens=8, progress=False)
    result, cap = run(ip, "%%oblix --over reviews --temperature 0 --max-tokens 8\nSay {text}")
    assert result.success, result.error_in_exec
    assert local.calls == 2 and ip.user_ns["oblix_result"]["cached"].all()


def test_interrupted_over_prints_only_the_note(ip):
    """A kernel interrupt during the batch: the one-line note, no traceback; finished rows are stored."""
    import _thread
    import threading

    class Slow(Scripted):
        async def stream(self, messages, params):
            if self.calls >= 2:
                threading.Timer(0.05, _thread.interrupt_main).start()
                await asyncio.sleep(5)
            async for item in super().stream(messages, params):
                yield item

    local = Slow("small")
    hook(local)
    ip.user_ns["reviews"] = pd.DataFrame({"text": [f"row {i}" for i in range(6)]})
    result, cap = run(ip, "%%oblix --over reviews --concurrency 1\nSay {text}")
    assert "map interrupted: 2 of 6 rows are finished and stored" in cap.stderr
    assert "Traceback" not in cap.stderr and "Traceback" not in cap.stdout
    assert "KeyboardInterrupt" not in cap.stderr
