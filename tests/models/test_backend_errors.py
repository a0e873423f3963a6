"""Backend failures (issue 20 items 2, 3): every SDK exception becomes a BackendError that says whether to fall
back, keeps the server's whole reason on one line, and an Ollama error inside a stream falls back like a 5xx.

Unit tests build the SDKs' own exception objects; the rest run against the real loopback servers.
"""
from __future__ import annotations

import httpx
import pytest

from oblix_nb import ModelCallError, ModelType, OblixClient
from oblix_nb._util import ERROR_TEXT_LIMIT, describe_error
from oblix_nb.errors import BackendError
from oblix_nb.models.base import GenerationParams, backend_error, is_connection_failure

SMALL = 8


def _response(status: int, body) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    return httpx.Response(status, json=body, request=request)


# ------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("text,kept", [
    ("1 validation error:\nbody -> top_p\n  Input should be a valid number", "Input should be a valid number"),
    ("first\r\n\r\n   second\tthird", "first second third"),
    ("single line", "single line"),
])
def test_describe_error_keeps_every_line(text, kept):
    out = describe_error(RuntimeError(text))
    assert out.startswith("RuntimeError: ") and kept in out and "\n" not in out


def test_describe_error_caps_long_messages():
    out = describe_error(ValueError("x" * 5000))
    assert len(out) <= len("ValueError: ") + ERROR_TEXT_LIMIT and out.endswith("…")
    assert describe_error(ValueError()) == "ValueError"


def test_openai_500_keeps_the_reason():
    import openai

    reason = "1 validation error:\n  body -> response_format -> type\n    Input should be 'json_object'"
    exc = openai.InternalServerError("Error code: 500", response=_response(500, {"error": {"message": reason}}),
                                     body={"error": {"message": reason}})
    err = backend_error(exc, "openai:m")
    assert isinstance(err, BackendError) and err.retryable and err.status_code == 500 and err.cause is exc
    text = describe_error(err)
    assert text.startswith("InternalServerError: HTTP 500") and "Input should be 'json_object'" in text
    assert "\n" not in text and err.__cause__ is exc


@pytest.mark.parametrize("status,retryable", [(400, False), (401, False), (404, False), (422, False),
                                              (429, True), (500, True), (503, True), (529, True)])
def test_http_status_decides_fallback(status, retryable):
    import openai

    exc = openai.APIStatusError(f"Error code: {status}", response=_response(status, {"error": {"message": "m"}}),
                                body={"error": {"message": "m"}})
    err = backend_error(exc)
    assert err.retryable is retryable and is_connection_failure(err) is retryable


def test_ollama_in_stream_error_is_retryable():
    import ollama

    err = backend_error(ollama.ResponseError("Connection error."), "ollama:m")
    assert err.retryable and err.status_code == -1 and "Connection error." in str(err)
    assert is_connection_failure(ollama.ResponseError("Connection error."))  # unwrapped, too
    assert not backend_error(ollama.ResponseError('{"error": "model not found"}', 404)).retryable


@pytest.mark.parametrize("kind,retryable", [("overloaded_error", True), ("api_error", True),
                                            ("invalid_request_error", False)])
def test_anthropic_error_event_in_a_stream(kind, retryable):
    anthropic = pytest.importorskip("anthropic")
    httpx2 = pytest.importorskip("httpx2")
    body = {"type": "error", "error": {"type": kind, "message": "why"}}
    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1:9/v1/messages"))
    err = backend_error(anthropic.APIStatusError("why", response=response, body=body))
    assert err.retryable is retryable and f"{kind}: why" in str(err)


@pytest.mark.parametrize("exc", [TypeError("create() got an unexpected keyword argument 'temperature'"),
                                 ValueError("Expecting value: line 1 column 1"), ConnectionResetError("reset")])
def test_other_sdk_failures_are_retryable(exc):
    err = backend_error(exc, "x:y")
    assert err.retryable and err.model_id == "x:y" and type(exc).__name__ in str(err)
    assert backend_error(err) is err


# ------------------------------------------------------------------------------------- real servers

@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


def _fail(server, **spec) -> None:
    httpx.post(server.url + "/_control/fail", json=spec, trust_env=False).raise_for_status()


@pytest.mark.parametrize("stage,stream", [("stream", True), ("http", True), ("http", False)])
async def test_ollama_failure_before_first_token_falls_back(client, ollama_server, openai_server, stage, stream):
    """Issue 20 item 2: an error inside the stream (HTTP 200, then {"error": ...}) falls back like a 500."""
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url, target="local")
    ollama_id, local = f"ollama:{ollama_server.model}", f"openai:{openai_server.model}"
    _fail(ollama_server, status=500, stage=stage, message="Connection error.")
    try:
        r = await client.execute("Say hi.", max_tokens=SMALL, model_id=ollama_id, stream=stream,
                                 sink=lambda t: None)
    finally:
        httpx.delete(ollama_server.url + "/_control/fail", trust_env=False)
    decision = r["routing_decision"]
    assert r["model_id"] == local and decision["fallback_from"].startswith(ollama_id)
    assert "Connection error." in decision["fallback_from"] + decision["reason"]


async def test_ollama_bad_request_does_not_fall_back(client, ollama_server, openai_server):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url, target="local")
    _fail(ollama_server, status=400, stage="http", message="invalid option: num_ctx")
    try:
        with pytest.raises(ModelCallError, match="HTTP 400.*invalid option: num_ctx"):
            await client.execute("Say hi.", max_tokens=SMALL, model_id=f"ollama:{ollama_server.model}",
                                 sink=lambda t: None)
    finally:
        httpx.delete(ollama_server.url + "/_control/fail", trust_env=False)


@pytest.mark.parametrize("stream", [True, False])
async def test_llama_server_500_keeps_its_reason(openai_server, stream):
    """Issue 20 item 3: llama_cpp.server answers a bad option with a 500 whose reason (the field and what is
    wrong with it) follows "1 validation error:" on the next lines; the error keeps all of it."""
    from oblix_nb.models.openai import OpenAIBackend

    backend = OpenAIBackend(openai_server.model, base_url=openai_server.base_url)
    params = GenerationParams(SMALL, None, {"top_p": "not-a-number"})
    try:
        with pytest.raises(BackendError) as info:
            if stream:
                [i async for i in backend.stream([{"role": "user", "content": "Hi."}], params)]
            else:
                await backend.complete([{"role": "user", "content": "Hi."}], params)
    finally:
        await backend.aclose()
    err = info.value
    text = describe_error(err)
    assert err.status_code == 500 and err.retryable and "top_p" in text and "\n" not in text
    assert "validation error" in text and text.index("top_p") > text.index("validation error")
