"""The streaming display machinery without a model: throttling, final text, interrupts, the loop-thread sink."""
from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
import time

from oblix_nb import runtime
from oblix_nb.notebook.display import (
    CURSOR,
    NotebookSink,
    QueueSink,
    Reply,
    ReplyDisplay,
    drive,
    has_display_frontend,
    notebook_sink_factory,
)


class Recorder:
    """publish(data, display_id, update) that records everything (the ReplyDisplay publisher interface)."""

    def __init__(self):
        self.calls = []
        self.times = []

    def __call__(self, data, display_id, update):
        self.calls.append((data, display_id, update))
        self.times.append(time.monotonic())

    def of(self, display_id):
        return [c for c in self.calls if c[1] == display_id]


def produce(sink: QueueSink, pieces, delay: float, response=None, error=None):
    """A fake model on another thread: start, deltas every `delay` s, end, done."""
    def work():
        sink.start({"model_id": "fake:model", "routing": {"target": "local", "reason": "local: test"}})
        for p in pieces:
            sink.write(p)
            if delay:
                time.sleep(delay)
        text = "".join(pieces)
        resp = response if response is not None else {"response": text, "model_id": "fake:model"}
        if error is None:
            sink.end(resp)
            sink.done(resp)
        else:
            sink.end(None, error)
            sink.done(None, error)
    fut = concurrent.futures.Future()
    fut.set_running_or_notify_cancel()
    t = threading.Thread(target=lambda: (work(), fut.set_result(None)), daemon=True)
    t.start()
    return fut, t


def test_reply_is_a_str_with_the_response():
    r = Reply("**hi**", {"model_id": "m", "session_id": "s", "metrics": {"output_tokens": 2},
                         "routing_decision": {"target": "local", "reason": "local: x"}})
    assert isinstance(r, str) and r == "**hi**" and r.upper() == "**HI**"
    assert r.response["model_id"] == "m" and r.model_id == "m" and r.session_id == "s"
    assert r._repr_markdown_() == "**hi**" and not r.partial
    assert "m" in r.footer
    clone = pickle.loads(pickle.dumps(r))
    assert isinstance(clone, Reply) and clone.response == r.response
    cut = Reply("half", {"partial": True})
    assert cut.partial and "partial" in cut._repr_markdown_()


def test_every_bundle_has_text_plain():
    rec = Recorder()
    view = ReplyDisplay(rec)
    view.show("waiting")
    view.status("streaming")
    view.update("so far")
    view.final("all of it", "footer")
    assert all("text/plain" in data for data, _, _ in rec.calls)
    final = rec.of(view.reply_id)[-1][0]
    assert final["text/markdown"] == final["text/plain"] == "all of it" and "all of it" in final["text/html"]
    assert rec.of(view.reply_id)[1][0]["text/markdown"] == "so far" + CURSOR
    text_view = ReplyDisplay(Recorder(), fmt="text")
    assert set(text_view._bundle("x", final=True)) == {"text/plain"}


def test_model_html_never_reaches_the_page_live():
    """Frontends render text/html before text/markdown: ours is inert; the Markdown stays exact."""
    evil = ("Hi <img src=x onerror=alert(1)> <script>alert(2)</script> [x](javascript:alert(3))\n\n"
            "```html\n<b>code is shown, not run</b>\n```\n**bold**")
    view = ReplyDisplay(Recorder())
    bundle = view._bundle(evil, final=True)
    assert bundle["text/markdown"] == bundle["text/plain"] == evil
    html = bundle["text/html"]
    assert "<img" not in html and "<script" not in html and 'href="javascript' not in html
    assert "&lt;img" in html and "<strong>bold</strong>" in html and "&lt;b&gt;code is shown" in html
    r = Reply(evil, {})
    assert r._repr_markdown_() == evil and "<img" not in r._repr_html_()


def test_drive_throttles_a_fast_stream():
    """2,000 deltas in ~2 s: at most one update per interval (+ the final one); final text is exact."""
    rec = Recorder()
    view = ReplyDisplay(rec)
    view.show()
    sink = QueueSink()
    pieces = [f"w{i} " for i in range(2000)]
    fut, _ = produce(sink, pieces, delay=0.001)
    started = time.monotonic()
    out = drive(sink, fut, view, interval=0.1)
    elapsed = time.monotonic() - started
    view.final(out.response["response"], "footer")
    reply_calls = rec.of(view.reply_id)
    intermediate = len(reply_calls) - 2
    streaming = out.last_delta_at - out.first_delta_at
    assert out.text == "".join(pieces) == reply_calls[-1][0]["text/markdown"]
    assert intermediate <= 10 * streaming + 2, (intermediate, streaming, elapsed)
    assert intermediate >= 3
    times = [t for (_, did, update), t in zip(rec.calls, rec.times) if did == view.reply_id and update][:-1]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.09  # never two intermediate updates within one interval


def test_drive_flushes_pending_text_when_the_model_pauses():
    rec = Recorder()
    view = ReplyDisplay(rec)
    view.show()
    sink = QueueSink()
    fut, _ = produce(sink, ["a", "b", "c"], delay=0.3)
    out = drive(sink, fut, view, interval=0.1)
    # each delta got its own update (no text waits for the next delta)
    assert [c[0]["text/plain"] for c in rec.of(view.reply_id)[1:]] == ["a", "ab", "abc"]
    assert out.response["response"] == "abc"


def test_drive_terminal_mode_writes_tokens(capsys):
    sink = QueueSink()
    fut, _ = produce(sink, ["one ", "two"], delay=0)
    out = drive(sink, fut, None)
    assert capsys.readouterr().out == "one two"
    assert out.text == "one two" and out.updates == 0


def test_drive_interrupt_cancels_and_waits_for_cleanup():
    """A KeyboardInterrupt in the main thread cancels the job, which gets to store its partial reply."""
    sink = QueueSink()
    stored = {}

    async def job():
        try:
            sink.start({"model_id": "fake:model", "routing": {}})
            for i in range(1000):
                sink.write(f"t{i} ")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError as exc:
            await asyncio.sleep(0.2)  # slow cleanup, as storing the partial reply is
            stored["partial"] = True
            sink.done(None, exc)
            raise

    rec = Recorder()
    view = ReplyDisplay(rec)
    view.show()
    n = {"calls": 0}
    real_update = view.update

    def update(text):
        real_update(text)
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt

    view.update = update
    fut = runtime.submit(job())
    out = drive(sink, fut, view, interval=0.0)
    assert out.interrupted and stored == {"partial": True}
    assert out.text.startswith("t0 ") and fut.done()


def test_notebook_sink_from_the_loop_thread():
    """client.sink_factory's sink: called on the loop thread, throttled, final text exact, parent kept."""
    parents = []

    class Pub:
        parent_header = {"msg_id": "cell-1", "msg_type": "execute_request"}

        def __init__(self):
            self.calls = []
            self._parent = None

        def set_thread_parent(self, parent):
            self._parent = parent
            return "token"

        def reset_thread_parent(self, token):
            self._parent = None

        def publish(self, data, metadata=None, *, transient=None, update=False):
            parents.append(self._parent)
            self.calls.append((data, transient["display_id"], update, time.monotonic()))

    class Shell:
        display_pub = Pub()

    shell = Shell()
    factory = notebook_sink_factory(shell, lambda: 0.1)
    sink = factory(True)  # made in the "cell's" thread
    assert isinstance(sink, NotebookSink)
    pieces = [f"x{i} " for i in range(300)]

    async def stream():
        sink.start({"model_id": "fake:model", "routing": {"target": "local", "reason": "local: test"}})
        for p in pieces:
            sink.write(p)
            await asyncio.sleep(0.004)
        await asyncio.sleep(0.15)  # the pending text is flushed by the timer, not lost
        flushed = shell.display_pub.calls[-1][0]["text/plain"]
        sink.end({"response": "".join(pieces), "model_id": "fake:model", "metrics": {}})
        return flushed

    flushed = runtime.run(stream())
    calls = shell.display_pub.calls
    reply_id = calls[0][1]
    mine = [c for c in calls if c[1] == reply_id]
    assert flushed == "".join(pieces)
    assert mine[-1][0]["text/markdown"] == "".join(pieces)
    streaming = mine[-1][3] - mine[0][3]
    assert len(mine) - 2 <= 10 * streaming + 2
    assert all(p == Pub.parent_header for p in parents)
    assert all("text/plain" in c[0] for c in calls)


def test_has_display_frontend():
    class ZMQInteractiveShell:
        config = {}

    class TerminalInteractiveShell:
        config = {}

    class Configured:
        config = {"IPKernelApp": {}}

    assert has_display_frontend(ZMQInteractiveShell())
    assert not has_display_frontend(TerminalInteractiveShell())
    assert has_display_frontend(Configured())
    assert not has_display_frontend(None)


def test_import_oblix_nb_stays_light():
    import subprocess
    import sys

    code = ("import sys, oblix_nb, oblix_nb.notebook; "
            "print(sorted(m for m in ('pandas', 'ipywidgets', 'llama_cpp', 'IPython') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"


def test_footer_colours_come_from_the_theme_only():
    """No fixed colours in the %%oblix footer (3.9:1 on JupyterLab Dark before): theme variables, else inherit."""
    import re as _re

    from oblix_nb.notebook.display import _footer_bundle

    for bundle in (_footer_bundle("m · local · TTFT 5 ms"), _footer_bundle("boom", error=True),
                   _footer_bundle("waiting", pending=True)):
        html = bundle["text/html"]
        assert not _re.search(r"#[0-9a-fA-F]{3,8}\b|rgba?\(", html), html
        colours = _re.findall(r"(?<![-\w])color:([^;\"]+)", html)
        assert colours and all(c.startswith("var(--jp-") for c in colours), colours
    assert "⚠" in _footer_bundle("boom", error=True)["text/html"]
