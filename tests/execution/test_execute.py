"""execute() against real model servers on loopback: llama_cpp.server (OpenAI API), the suite's Ollama-API
server, and the embedded model. Never asserts model wording: structure, metrics and what servers received."""
from __future__ import annotations

import asyncio
import builtins
import io
import json

import httpx
import pytest
from _proxy import RecordingProxy

from oblix_nb import (
    ConnectivityAgent,
    ModelCallError,
    ModelType,
    ModelUnavailableError,
    NoModelHookedError,
    OblixClient,
    ResourceMonitor,
)
from oblix_nb.localserver import free_port, start_openai_server
from oblix_nb.streaming import StdoutSink

pytestmark = pytest.mark.server
SMALL = 16


def sane_metrics(m: dict) -> None:
    assert 0 < m["time_to_first_token"] <= m["total_latency"]
    assert m["output_tokens"] > 0 and m["input_tokens"] > 0
    assert m["tokens_per_second"] > 0
    assert m["start_time"].endswith("Z") and m["end_time"] >= m["start_time"]
    assert m["usage_source"]["input"] in {"server", "engine", "tokenizer", "estimate"}


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


@pytest.fixture
async def embedded(client):
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    return client


@pytest.fixture
def dedicated_openai_server():
    """A server of this test's own, which the test may kill."""
    server = start_openai_server(warmup=True)
    yield server
    server.stop()


# ----------------------------------------------------------------------------- each backend, stream and not
@pytest.mark.parametrize("stream", [True, False])
async def test_embedded_execute(embedded, stream):
    sid = await embedded.create_and_use_session("embedded")
    seen = []
    r = await embedded.execute("Name a fruit.", max_tokens=SMALL, stream=stream, request_id="req-1",
                               sink=seen.append)
    assert r["request_id"] == "req-1" and r["session_id"] == sid
    assert r["model_id"] == "llamacpp:smollm2-135m" and r["response"]
    assert r["routing_decision"]["target"] == "local" and r["routing_decision"]["reason"]
    sane_metrics(r["metrics"])
    assert ("".join(seen) == r["response"]) if stream else seen == []
    messages = embedded.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    reply = messages[1]
    assert reply["content"] == r["response"] and reply["model_id"] == r["model_id"]
    assert reply["metrics"]["output_tokens"] == r["metrics"]["output_tokens"]
    assert reply["routing"]["reason"] == r["routing_decision"]["reason"]
    assert not reply.get("partial")


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_server_execute_and_history_reaches_server(client, openai_server, stream):
    proxy = RecordingProxy(openai_server.port)
    try:
        await client.hook_model(ModelType.OPENAI, openai_server.model,
                                base_url=f"http://127.0.0.1:{proxy.port}/v1")
        sid = await client.create_and_use_session("openai")
        first = await client.execute("My name is Ada.", max_tokens=SMALL, stream=stream, sink=lambda t: None)
        second = await client.execute("What is my name?", max_tokens=SMALL, stream=stream, sink=lambda t: None)
        for r in (first, second):
            assert r["model_id"] == f"openai:{openai_server.model}" and r["response"]
            sane_metrics(r["metrics"])
            assert r["metrics"]["usage_source"]["output"] == ("tokenizer" if stream else "server")
        bodies = proxy.json_bodies("/chat/completions")
        assert bodies[-1]["messages"] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first["response"]},
            {"role": "user", "content": "What is my name?"},
        ]
        assert bodies[-1]["max_tokens"] == SMALL and bodies[-1].get("stream", False) is stream
        assert len(client.load_session(sid)["messages"]) == 4
        if not stream:  # the server's own count grew with the history
            assert second["metrics"]["input_tokens"] > first["metrics"]["input_tokens"]
    finally:
        proxy.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_ollama_execute_history_and_options(client, ollama_server, stream):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    sid = await client.create_and_use_session("ollama")
    first = await client.execute("Remember the number 7.", max_tokens=SMALL, stream=stream, sink=lambda t: None)
    second = await client.execute("Which number?", max_tokens=8, temperature=0.2, top_k=20, seed=3,
                                  stream=stream, sink=lambda t: None)
    for r in (first, second):
        assert r["model_id"] == f"ollama:{ollama_server.model}"
        sane_metrics(r["metrics"])
        assert r["metrics"]["usage_source"] == {"input": "server", "output": "server"}
    assert second["metrics"]["output_tokens"] <= 8
    received = httpx.get(ollama_server.url + "/_debug/requests").json()
    chats = [r for r in received if r.get("path", "/api/chat").endswith("/api/chat") and "messages" in
             (r.get("body") or r)]
    last = chats[-1].get("body", chats[-1])
    assert last["messages"] == [
        {"role": "user", "content": "Remember the number 7."},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": "Which number?"},
    ]
    opts = last["options"]
    assert opts["num_predict"] == 8 and opts["temperature"] == 0.2 and opts["top_k"] == 20 and opts["seed"] == 3
    assert opts["num_ctx"] >= 512
    assert last.get("stream", True) is stream
    assert len(client.load_session(sid)["messages"]) == 4


async def test_stream_async_iterator(embedded):
    sid = await embedded.create_and_use_session("iter")
    stream = embedded.stream("Count to five.", max_tokens=SMALL)
    chunks = [c async for c in stream]
    assert chunks and "".join(chunks) == stream.response["response"]
    # one chunk per generated token: a reply of several tokens arrives in as many chunks (however short it is)
    assert len(chunks) >= min(2, stream.response["metrics"]["output_tokens"])
    assert embedded.load_session(sid)["messages"][-1]["content"] == stream.response["response"]


async def test_default_sink_is_stdout(embedded, capsys):
    r = await embedded.execute("Say hello.", max_tokens=SMALL)
    out = capsys.readouterr().out
    assert r["response"] in out and "llamacpp:smollm2-135m" in out and "TTFT" in out


async def test_no_session_means_no_history_and_nothing_stored(embedded):
    r = await embedded.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert r["session_id"] is None and r["metrics"]["context"]["messages"] == 1
    assert embedded.list_sessions() == []


# ----------------------------------------------------------------------------- routing
async def test_routes_to_cloud_under_resource_pressure(client, ollama_server, openai_server):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    # Thresholds set so that live values cross them: 0% is always exceeded.
    client.hook_agent(ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0, "cpu_critical": 100,
                                                         "memory_critical": 100, "load_per_core": 1000,
                                                         "load_per_core_critical": 1000}))
    r = await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert r["routing_decision"]["target"] == "cloud"
    assert r["model_id"] == f"openai:{openai_server.model}"
    assert "resource_monitor" in r["routing_decision"]["reason"]
    assert [c["agent"] for c in r["agent_checks"]] == ["resource_monitor"]
    assert r["agent_checks"][0]["result"]["state"] == "constrained"


async def test_routes_local_when_resources_fine(client, ollama_server, openai_server):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    client.hook_agent(ResourceMonitor(custom_thresholds={"cpu": 100, "memory": 100, "load_per_core": 1000,
                                                         "load_per_core_critical": 1000}))
    r = await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert r["routing_decision"]["target"] == "local"
    assert r["model_id"] == f"ollama:{ollama_server.model}"


async def test_routes_local_when_cloud_endpoint_down(client, ollama_server, dedicated_openai_server):
    srv = dedicated_openai_server
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, srv.model, base_url=srv.base_url)
    connectivity = ConnectivityAgent(interval=60)
    pressure = ResourceMonitor(custom_thresholds={"cpu": 0, "memory": 0})  # would say cloud
    client.hook_agent(pressure)
    client.hook_agent(connectivity)
    await asyncio.to_thread(connectivity.refresh)
    r = await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert r["routing_decision"]["target"] == "cloud"
    srv.stop()
    await asyncio.to_thread(connectivity.refresh)
    r = await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert r["routing_decision"]["target"] == "local"
    assert r["model_id"] == f"ollama:{ollama_server.model}"
    assert "connectivity" in r["routing_decision"]["reason"]
    conn = next(c for c in r["agent_checks"] if c["agent"] == "connectivity")["result"]
    assert conn["state"] == "disconnected"
    metrics = await client.get_connectivity_metrics()
    assert metrics["endpoints"][f"openai:{srv.model}"]["reachable"] is False


async def test_forced_model_id(client, ollama_server, openai_server):
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    r = await client.execute("Hi", max_tokens=4, model_id=f"openai:{openai_server.model}", sink=lambda t: None)
    assert r["model_id"] == f"openai:{openai_server.model}" and r["routing_decision"]["forced"] is True
    with pytest.raises(NoModelHookedError, match="not hooked"):
        await client.execute("Hi", model_id="openai:nope")


# ----------------------------------------------------------------------------- fallback and failures
async def test_fallback_when_chosen_server_is_dead(embedded, tmp_path):
    dead = start_openai_server()
    await embedded.hook_model(ModelType.OPENAI, dead.model, base_url=dead.base_url)
    dead.stop()  # now its port refuses connections
    sid = await embedded.create_and_use_session("fallback")
    r = await embedded.execute("Hi", max_tokens=4, model_id=f"openai:{dead.model}", sink=lambda t: None)
    assert r["model_id"] == "llamacpp:smollm2-135m"
    route = r["routing_decision"]
    assert route["fallback_from"].startswith(f"openai:{dead.model}")
    assert "Connection" in route["fallback_from"]
    assert "fell back" in route["reason"]
    messages = embedded.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # no error text stored as a reply
    assert messages[1]["routing"]["fallback_from"] == route["fallback_from"]


async def test_all_candidates_dead_raises_clearly(client, dedicated_openai_server):
    srv = dedicated_openai_server
    await client.hook_model(ModelType.OPENAI, srv.model, base_url=srv.base_url)
    srv.stop()
    sid = await client.create_and_use_session("dead")
    with pytest.raises(ModelCallError, match="no model could answer"):
        await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    assert [m["role"] for m in client.load_session(sid)["messages"]] == ["user"]


async def test_server_killed_mid_stream_keeps_partial(client, dedicated_openai_server):
    srv = dedicated_openai_server
    await client.hook_model(ModelType.OPENAI, srv.model, base_url=srv.base_url)
    sid = await client.create_and_use_session("killed")
    seen = []

    def kill_after_some(text):
        seen.append(text)
        if len(seen) == 5:
            srv.stop(timeout=0)  # SIGTERM then SIGKILL: the stream breaks mid-reply

    with pytest.raises(ModelCallError) as info:
        await client.execute("Write a very long story about the sea.", max_tokens=400, sink=kill_after_some)
    assert "failed after" in str(info.value) and info.value.partial
    messages = client.load_session(sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["partial"] is True
    assert messages[1]["content"] == info.value.partial == "".join(seen)
    metrics = messages[1]["metrics"]
    # the backend's live usage: the prompt estimated, the output counted in the chunks that arrived
    assert metrics["usage_source"] == {"input": "estimate", "output": "stream_chunks"}
    assert metrics["output_tokens"] == len(seen) and metrics["input_tokens"] > 0
    assert metrics["finish_reason"] == "interrupted"


async def test_cancel_keeps_partial(embedded):
    sid = await embedded.create_and_use_session("cancel")
    got = asyncio.Event()
    loop = asyncio.get_running_loop()
    seen = []

    def sink(text):  # called on the package's loop thread
        seen.append(text)
        if len(seen) == 3:
            loop.call_soon_threadsafe(got.set)

    task = asyncio.create_task(embedded.execute("Write a long poem.", max_tokens=300, sink=sink))
    await asyncio.wait_for(got.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply = embedded.load_session(sid)["messages"][-1]
    assert reply["role"] == "assistant" and reply["partial"] is True
    assert reply["metrics"]["output_tokens"] > 0 and reply["metrics"]["usage_source"]["output"] == "tokenizer"
    assert reply["content"].startswith("".join(seen[:3]))


# ----------------------------------------------------------------------------- hooking
async def test_hook_unreachable_endpoint_names_it(client):
    port = free_port()
    with pytest.raises(ModelUnavailableError, match=rf"127\.0\.0\.1:{port}"):
        await client.hook_model(ModelType.OPENAI, "x", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ModelUnavailableError, match=rf"127\.0\.0\.1:{port}"):
        await client.hook_model(ModelType.OLLAMA, "x", endpoint=f"http://127.0.0.1:{port}")
    assert client.list_models() == {}


async def test_hook_unknown_model_names_it(client, openai_server, ollama_server):
    with pytest.raises(ModelUnavailableError, match="no-such-model"):
        await client.hook_model(ModelType.OPENAI, "no-such-model", base_url=openai_server.base_url)
    with pytest.raises(ModelUnavailableError, match="no-such-model.*ollama pull"):
        await client.hook_model(ModelType.OLLAMA, "no-such-model", endpoint=ollama_server.url)
    with pytest.raises(ModelUnavailableError, match="not found"):
        await client.hook_model(ModelType.LLAMACPP, "/nonexistent/model.gguf")


async def test_list_models_and_unknown_kwargs(client, openai_server, ollama_server):
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    await client.hook_model(ModelType.OLLAMA, ollama_server.model, endpoint=ollama_server.url)
    assert client.list_models() == {"openai": [openai_server.model], "ollama": [ollama_server.model]}
    with pytest.raises(TypeError, match="frobnicate"):
        await client.execute("Hi", frobnicate=1)
    with pytest.raises(ValueError, match="max_tokens"):
        await client.execute("Hi", max_tokens=0)
    with pytest.raises(ValueError, match="prompt"):
        await client.execute("   ")


async def test_no_model_hooked(client):
    with pytest.raises(NoModelHookedError, match="hook_model"):
        await client.execute("Hi")


async def test_api_key_never_leaks(client, openai_server, tmp_path):
    secret = "sk-test-SECRET-0123456789"
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url,
                            api_key=secret)
    sid = await client.create_and_use_session("secret")
    r = await client.execute("Hi", max_tokens=4, sink=lambda t: None)
    await client.export_session(sid, tmp_path / "out.json")
    blobs = [repr(client), repr(client.models), json.dumps(r), (tmp_path / "out.json").read_text()]
    blobs += [p.read_bytes().decode("latin-1") for p in client.home.iterdir() if p.is_file()]
    assert not any(secret in b for b in blobs)


async def test_openai_needs_a_key_for_the_real_api(client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        await client.hook_model(ModelType.OPENAI, "gpt-4o-mini")


# ----------------------------------------------------------------------------- chat, agents, shutdown
async def test_chat_in_a_terminal(embedded, monkeypatch):
    answers = iter(["Tell me more.", "exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    result = await embedded.execute("Hello there", chat=True, max_tokens=8, sink=lambda t: None)
    assert set(result) == {"session_id"}
    messages = embedded.load_session(result["session_id"])["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Hello there", "Tell me more."]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


async def test_chat_ends_on_eof_and_resumes_session(embedded, monkeypatch):
    sid = await embedded.create_session("resume")

    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    result = await embedded.execute("Let's continue", session_id=sid, chat=True, max_tokens=4,
                                    sink=lambda t: None)
    assert result == {"session_id": sid}
    assert len(embedded.load_session(sid)["messages"]) == 2


async def test_metrics_getters(client):
    monitor = ResourceMonitor()
    client.hook_agent(monitor)
    metrics = await client.get_resource_metrics()
    assert 0 <= metrics["cpu_percent"] <= 100 and 0 < metrics["memory_percent"] <= 100
    assert metrics["gpu"] is None  # no GPU on these machines: never invented
    conn = await client.get_connectivity_metrics()
    assert isinstance(conn, dict)


async def test_shutdown_closes_what_it_opened_and_is_idempotent(embedded):
    monitor = ResourceMonitor(interval=0.05)
    embedded.hook_agent(monitor)
    assert monitor.running
    outside = ResourceMonitor(interval=0.05)
    outside.start()  # started by the user, not the client
    embedded.hook_agent(outside)
    await embedded.shutdown()
    await embedded.shutdown()
    assert embedded.list_models() == {} and not monitor.running
    assert outside.running  # not the client's to stop
    outside.stop()
    assert embedded.list_sessions() == []  # the store stays usable


async def test_stdout_sink_footer():
    buf = io.StringIO()
    sink = StdoutSink(buf)
    sink.write("abc")
    sink.end({"model_id": "m:x", "metrics": {"time_to_first_token": 0.1, "tokens_per_second": 12.5,
                                            "output_tokens": 3},
              "routing_decision": {"target": "local", "reason": "why"}})
    assert buf.getvalue().startswith("abc\n[m:x · local: why · TTFT 100 ms · 12.5 tok/s · 3 tokens]")


async def test_local_reply_capped_at_reserve_when_no_max_tokens(client):
    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m", n_ctx=256)
    r = await client.execute("Write a very long essay about rivers.", sink=lambda t: None)
    assert 0 < r["metrics"]["output_tokens"] <= 256 // 4 + 1  # +1: the tokenizer may split the tail differently
    client.default_max_tokens = 5
    r = await client.execute("Write a very long essay about rivers.", sink=lambda t: None)
    assert r["metrics"]["output_tokens"] <= 6
