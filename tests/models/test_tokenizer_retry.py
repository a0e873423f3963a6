"""Exact token counts stay exact (issue 18 item 5): a failed tokenizer call to llama_cpp.server makes that reply's
counts estimates, and the tokenizer is asked again later (it used to be switched off for the backend's life).

The real llama_cpp.server answers every request; failures are injected in front of its tokenizer endpoint by an
httpx transport (a timeout as httpx raises it, or an HTTP status), everything else passes through untouched."""
from __future__ import annotations

import httpx
import pytest

from oblix_nb.models import openai as openai_mod
from oblix_nb.models.base import GenerationParams, Usage
from oblix_nb.models.openai import OpenAIBackend

TOKENIZE = "/extras/tokenize/count"


class FlakyTokenizer(httpx.AsyncBaseTransport):
    """Forwards to the real server; the next ``failures`` tokenizer requests fail with ``kind`` instead."""

    def __init__(self):
        self.real = httpx.AsyncHTTPTransport()
        self.failures = 0
        self.kind: object = "timeout"
        self.tokenizer_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(TOKENIZE):
            self.tokenizer_requests += 1
            if self.failures > 0:
                self.failures -= 1
                if self.kind == "timeout":
                    raise httpx.ReadTimeout("timed out (injected)", request=request)
                if self.kind == "refused":
                    raise httpx.ConnectError("connection refused (injected)", request=request)
                return httpx.Response(int(self.kind), json={"detail": "injected"}, request=request)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


@pytest.fixture
async def backend(openai_server):
    b = OpenAIBackend(openai_server.model, base_url=openai_server.base_url)
    await b.connect()
    flaky = FlakyTokenizer()
    b._http = httpx.AsyncClient(transport=flaky, timeout=openai_mod.TOKENIZE_TIMEOUT)
    b.flaky = flaky
    yield b
    await b.aclose()


async def _usage(b) -> Usage:
    usage = None
    async for item in b.stream([{"role": "user", "content": "Say yes."}], GenerationParams(max_tokens=4,
                                                                                           temperature=0)):
        if isinstance(item, Usage):
            usage = item
    return usage


@pytest.mark.parametrize("kind", ["timeout", "refused", 503, 500, 429])
async def test_one_failed_tokenizer_call_does_not_turn_counting_off(backend, kind):
    assert (await _usage(backend)).output_source == "tokenizer"
    backend.flaky.kind, backend.flaky.failures = kind, 1
    failed = await _usage(backend)
    assert failed.input_source == "estimate" and failed.output_source in ("stream_chunks", "estimate")
    assert failed.output_tokens >= 1
    after = await _usage(backend)  # the very next reply asks the tokenizer again and is exact
    assert (after.input_source, after.output_source) == ("tokenizer", "tokenizer")
    assert after.output_tokens >= 1


async def test_repeated_failures_back_off_then_recover(backend, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(openai_mod.time, "monotonic", lambda: clock[0])
    backend.flaky.kind, backend.flaky.failures = "timeout", 3
    assert (await _usage(backend)).input_source == "estimate"   # failure 1: retried on the next reply
    assert (await _usage(backend)).input_source == "estimate"   # failure 2: 1 s pause
    asked = backend.flaky.tokenizer_requests
    assert (await _usage(backend)).input_source == "estimate"   # within the pause: not asked
    assert backend.flaky.tokenizer_requests == asked
    clock[0] += 1.5
    assert (await _usage(backend)).input_source == "estimate"   # failure 3: 2 s pause
    clock[0] += 2.5
    assert (await _usage(backend)).input_source == "tokenizer"  # recovered, and stays so
    assert (await _usage(backend)).input_source == "tokenizer"
    assert backend._tokenize_failures == 0


async def test_missing_endpoint_is_rechecked_later(backend, monkeypatch):
    clock = [5000.0]
    monkeypatch.setattr(openai_mod.time, "monotonic", lambda: clock[0])
    backend.flaky.kind, backend.flaky.failures = 404, 1
    assert (await _usage(backend)).input_source == "estimate"
    asked = backend.flaky.tokenizer_requests
    assert (await _usage(backend)).input_source == "estimate"   # a server without the endpoint: not asked again
    assert backend.flaky.tokenizer_requests == asked
    clock[0] += openai_mod.TOKENIZE_RECHECK + 1
    assert (await _usage(backend)).input_source == "tokenizer"  # ... until the recheck time


def test_non_loopback_servers_are_never_asked():
    b = OpenAIBackend("m", base_url="https://api.example.com/v1", api_key="sk-test")
    assert b._tokenize_supported is False
