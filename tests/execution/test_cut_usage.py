"""What a call cut short reports (issue 18 item 5, issue 20 item 1): a reply stopped while the model is still
reading the prompt keeps the prompt's real input token count (the engine's last PromptProgress), one stopped
before any report keeps an estimate (never 0/None), and sampling options a backend could not send are listed in
the response's metrics. Logic-level tests over small in-process backends; the real engines are exercised by
tests/models/test_stop_backends.py and tests/models/test_claude.py.
"""
from __future__ import annotations

import asyncio

import pytest

from oblix_nb import OblixClient
from oblix_nb.models.base import ModelBackend, ModelType, PromptProgress, Usage, report_progress


class ReadingBackend(ModelBackend):
    """Reports prompt-reading progress (like the embedded engine), then reads "forever" (until cancelled)."""

    model_type = ModelType.LLAMACPP

    def __init__(self, total: int, *, report: bool = True):
        super().__init__("reader", target="local", context_window=8192)
        self.total, self.report = total, report
        self.reading = asyncio.Event()

    async def connect(self):
        pass

    async def stream(self, messages, params):
        if self.report:
            report_progress(params, PromptProgress(0, self.total))
            report_progress(params, PromptProgress(self.total // 2, self.total))
        self.reading.set()
        await asyncio.sleep(3600)
        yield "never"  # pragma: no cover


class NotAppliedBackend(ModelBackend):
    """Answers, saying it could not send some sampling options (as Claude on an SDK without them does)."""

    model_type = ModelType.CLAUDE

    def __init__(self, not_applied: tuple):
        super().__init__("claude-like", target="cloud", context_window=8192)
        self.not_applied = not_applied

    async def connect(self):
        pass

    async def stream(self, messages, params):
        yield "Red."
        yield Usage(9, 2, "server", "server", "stop", options_not_applied=self.not_applied)


def hook(client: OblixClient, backend: ModelBackend) -> None:
    client._models[backend.model_id] = backend


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


async def _stop_while_reading(client, backend):
    await client.create_and_use_session("reading")
    task = asyncio.create_task(client.execute("Summarise the notes. " * 20, sink=lambda t: None,
                                              model_id=backend.model_id))
    await asyncio.wait_for(backend.reading.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("total", [37, 5400])
async def test_stop_while_reading_logs_the_prompts_real_token_count(client, total):
    backend = ReadingBackend(total)
    hook(client, backend)
    await _stop_while_reading(client, backend)
    usage = client.usage(by="model")
    row = usage[usage.model_id == backend.model_id].iloc[0]
    assert row["input_tokens"] == total  # the engine's count, not 0 and not an estimate
    assert row["output_tokens"] == 0


async def test_stop_before_any_report_logs_an_estimate_not_zero(client):
    backend = ReadingBackend(0, report=False)
    hook(client, backend)
    await _stop_while_reading(client, backend)
    usage = client.usage(by="model")
    row = usage[usage.model_id == backend.model_id].iloc[0]
    assert row["input_tokens"] >= 20  # twenty repetitions of a five-word sentence: estimated, never 0


async def test_progress_still_reaches_the_callers_callback(client):
    """The engine listens to the progress reports without taking them from whoever passed ``on_progress``."""
    backend = ReadingBackend(100)
    hook(client, backend)
    got: list[PromptProgress] = []
    req_params = client.engine.params(None, None, {})
    from dataclasses import replace

    from oblix_nb.execution import Call, Request

    class Fitted:
        messages = [{"role": "user", "content": "hi"}]
        used, dropped, truncated = 1, 0, False

    req = Request("hi", replace(req_params, on_progress=got.append), "r1", None)
    call = Call(backend, req, type("D", (), {"as_dict": lambda self: {}})(), [], Fitted())
    agen = backend.stream(Fitted.messages, call.params)
    task = asyncio.create_task(agen.__anext__())
    await asyncio.wait_for(backend.reading.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p.done for p in got] == [0, 50]
    assert call.prompt_progress == PromptProgress(50, 100)


@pytest.mark.parametrize("not_applied", [("temperature",), ("temperature", "top_k", "seed")])
async def test_options_not_applied_are_in_the_response(client, not_applied):
    backend = NotAppliedBackend(not_applied)
    hook(client, backend)
    r = await client.execute("Name a colour.", temperature=0, sink=lambda t: None)
    assert r["metrics"]["options_not_applied"] == list(not_applied)


async def test_no_options_not_applied_key_when_everything_was_sent(client):
    backend = NotAppliedBackend(())
    hook(client, backend)
    r = await client.execute("Name a colour.", sink=lambda t: None)
    assert "options_not_applied" not in r["metrics"]
