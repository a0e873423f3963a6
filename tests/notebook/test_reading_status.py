"""18.4: while the model reads the prompt, %%oblix's status line and the chat panel say so ("reading 3,400
tokens…", with the engine's progress where it reports it), then "streaming from …" once text arrives."""
from __future__ import annotations

import asyncio
import re

import pytest
from test_magics import client, footer_publishes, ip, run  # noqa: F401  (ip is a fixture)

from oblix_nb.models.base import ModelBackend, ModelType, PromptProgress, Usage, report_progress
from oblix_nb.streaming import reading_status


class Reader(ModelBackend):
    """Reports prompt-reading progress in ``steps`` (like the embedded engine) unless ``server``, then replies."""

    model_type = ModelType.OPENAI

    def __init__(self, name="reader", *, steps=4, cached=0, server=False):
        super().__init__(name, target="local", context_window=8192)
        self.steps, self.cached, self.server = steps, cached, server
        self.totals: list[int] = []

    async def connect(self):
        pass

    async def stream(self, messages, params):
        total = sum(self.estimate_tokens(m["content"]) for m in messages) + 7
        self.totals.append(total)
        if not self.server:
            for i in range(self.steps + 1):
                report_progress(params, PromptProgress(self.cached + (total - self.cached) * i // self.steps,
                                                       total, self.cached))
                await asyncio.sleep(0.01)
        yield "an answer"
        yield Usage(total, 2, "server", "server", "stop")


@pytest.mark.parametrize("tokens, progress, expected", [
    (3400, None, "reading 3,400 tokens…"),
    (1, None, "reading 1 token…"),
    (None, None, "reading the prompt…"),
    (3400, PromptProgress(1200, 3400), "reading 1,200 of 3,400 tokens (35 %)…"),
    (10, PromptProgress(0, 20, 0), "reading 0 of 20 tokens (0 %)…"),
    (3400, PromptProgress(2500, 3400, 2000), "reading 2,500 of 3,400 tokens (73 %, 2,000 cached)…"),
    (3400, PromptProgress(3400, 3400, 2000), "read 3,400 tokens, 2,000 cached; waiting for the first token…"),
])
def test_reading_status_text(tokens, progress, expected):
    assert reading_status(tokens, progress) == expected


def statuses(cap) -> list[str]:
    return [p["data"]["text/plain"] for p in footer_publishes(cap)]


@pytest.mark.parametrize("steps, cached", [(4, 0), (2, 30), (8, 5)])
def test_cell_status_shows_the_engine_reading_progress(ip, steps, cached):  # noqa: F811
    backend = Reader(steps=steps, cached=cached)
    client()._models[backend.model_id] = backend
    result, cap = run(ip, "%%oblix --max-tokens 8\n" + "Summarise this long text please. " * 20)
    assert result.success, result.error_in_exec
    lines = statuses(cap)
    reading = [line for line in lines if "reading" in line]
    assert reading and re.search(r"reading [\d,]+ tokens? · openai:reader", reading[0]), lines
    progress = [line for line in lines if re.search(r"reading [\d,]+ of [\d,]+ tokens \(\d+ %", line)]
    assert progress, lines
    for line in progress:
        done, total = (int(x.replace(",", "")) for x in re.search(r"reading ([\d,]+) of ([\d,]+)", line).groups())
        assert total == backend.totals[0] and 0 <= done < total
        assert (f"{cached:,} cached" in line) == bool(cached)
    streaming = [i for i, line in enumerate(lines) if "streaming from" in line]
    first_reading = lines.index(reading[0])
    assert streaming and streaming[0] > first_reading  # reading first, then streaming
    assert "reading" not in lines[-1] and "streaming" not in lines[-1]  # the footer replaces the status


def test_a_server_without_progress_shows_the_estimated_input(ip):  # noqa: F811
    backend = Reader(name="server", server=True)
    client()._models[backend.model_id] = backend
    result, cap = run(ip, "%%oblix --max-tokens 8 --new-session\n" + "word " * 300)
    assert result.success, result.error_in_exec
    lines = statuses(cap)
    reading = [line for line in lines if line.lstrip("[⏳ ").startswith("reading")]
    assert reading, lines
    n = int(re.search(r"reading ([\d,]+) tokens", reading[0]).group(1).replace(",", ""))
    assert 300 <= n <= 2 * backend.totals[0]  # the prompt's estimate: hundreds of tokens, not a placeholder
    assert not any(" of " in line for line in reading)  # no progress invented


def test_chat_panel_status_says_reading_then_streaming(ip):  # noqa: F811
    pytest.importorskip("anywidget")
    from oblix_nb.notebook.widgets import ChatPanel

    c = client()
    backend = Reader(steps=3)
    c._models[backend.model_id] = backend
    panel = ChatPanel(c, stream_interval=0.05)
    seen: list[str] = []
    panel.observe(lambda change: seen.append(change["new"]), names="status")
    panel.send("Please read " + "this sentence " * 50)
    panel.wait(30)
    reading = [s for s in seen if s.startswith("reading")]
    assert reading and any(re.match(r"reading [\d,]+ of [\d,]+ tokens", s) for s in reading), seen
    assert any(s.startswith("streaming from") for s in seen)
    assert seen.index(reading[0]) < next(i for i, s in enumerate(seen) if s.startswith("streaming from"))
    assert [m["role"] for m in c.sessions.messages(panel.session_id)] == ["user", "assistant"]


class _Pub:
    def __init__(self):
        self.sent = []

    def publish(self, data, metadata=None, transient=None, update=False):
        self.sent.append((data, (transient or {}).get("display_id"), update))


class _Shell:
    def __init__(self):
        self.display_pub = _Pub()


def test_notebook_sink_of_a_top_level_execute_says_reading_then_streaming():
    from oblix_nb.notebook.display import NotebookSink

    shell = _Shell()
    sink = NotebookSink(shell, interval=0.0)
    sink.start({"model_id": "llamacpp:m", "routing": {"target": "local", "reason": "local: forced"},
                "input_tokens": 1234})
    sink.progress(PromptProgress(600, 1240, 100))
    sink.progress(PromptProgress(1240, 1240, 100))
    sink.write("Hello")
    sink.end({"response": "Hello", "model_id": "llamacpp:m", "metrics": {}})
    footer_id = sink.view.footer_id
    lines = [d["text/plain"] for d, i, _ in shell.display_pub.sent if i == footer_id]
    assert "reading 1,234 tokens · llamacpp:m" in lines[0]
    assert any("reading 600 of 1,240 tokens (48 %, 100 cached)" in line for line in lines)
    assert any("read 1,240 tokens, 100 cached; waiting for the first token" in line for line in lines)
    streaming = [k for k, line in enumerate(lines) if "streaming from llamacpp:m" in line]
    assert streaming and all("reading" not in line for line in lines[streaming[0]:])
