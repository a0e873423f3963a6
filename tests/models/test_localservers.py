"""The real loopback model servers work, and speak their APIs faithfully enough for the official clients.

Never asserts model wording: only structure, counts, reasons and timings.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time

import httpx
import pytest

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

N = 16  # tokens per request: keep it small (100 tokens ~ 1 s here)
LONG_PROMPT = "Write a long, detailed essay about the history of the oceans."


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=60)


def _debug(server, what: str, **params) -> list:
    with _http(server) as http:
        return http.get(f"/_debug/{what}", params=params).json()


def _assert_final_stats(final, num_predict: int) -> None:
    assert final.done is True
    assert final.done_reason in {"stop", "length"}
    assert 0 < final.eval_count <= num_predict
    assert final.prompt_eval_count > 0
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, name), int) and getattr(final, name) > 0, name
    assert final.total_duration >= final.eval_duration
    dt.datetime.fromisoformat(final.created_at.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------------ OpenAI server

@pytest.fixture(scope="module")
def oai(openai_server):
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="not-needed", max_retries=0, timeout=60)
    yield client
    client.close()


def test_openai_server_is_a_loopback_subprocess(openai_server):
    assert openai_server.base_url == f"http://127.0.0.1:{openai_server.port}/v1"
    assert openai_server.is_running() and openai_server.pid
    assert openai_server.kind == "openai" and openai_server.startup_seconds > 0


def test_openai_models_lists_alias(oai, openai_server):
    assert openai_server.model in [m.id for m in oai.models.list().data]


def test_openai_chat_non_stream(oai, openai_server):
    r = oai.chat.completions.create(model=openai_server.model, max_tokens=N,
                                    messages=[{"role": "user", "content": "Say hello."}])
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= N
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_stream(oai, openai_server):
    chunks = list(oai.chat.completions.create(model=openai_server.model, max_tokens=N, stream=True,
                                              messages=[{"role": "user", "content": "Say hello."}]))
    assert len(chunks) >= 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1 and reasons[0] in {"stop", "length"}


def test_openai_tiny_max_tokens_gives_length(oai, openai_server):
    r = oai.chat.completions.create(model=openai_server.model, max_tokens=2, temperature=0,
                                    messages=[{"role": "user", "content": LONG_PROMPT}])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_openai_history_reaches_server_via_prompt_tokens(oai, openai_server):
    """llama_cpp.server keeps no request log: history reaching it shows up as more prompt tokens."""
    def prompt_tokens(messages):
        return oai.chat.completions.create(model=openai_server.model, max_tokens=1,
                                           messages=messages).usage.prompt_tokens

    short = prompt_tokens([{"role": "user", "content": "And then?"}])
    longer = prompt_tokens([{"role": "user", "content": "My name is Ada and I like sailing."},
                            {"role": "assistant", "content": "Nice to meet you, Ada."},
                            {"role": "user", "content": "And then?"}])
    assert longer > short + 10


# ------------------------------------------------------------------------------------------------ Ollama server

@pytest.fixture(scope="module")
def oll(ollama_server):
    client = ollama.Client(host=ollama_server.base_url, timeout=60)
    yield client
    client.close()


def test_ollama_root_and_version(ollama_server):
    assert ollama_server.base_url == ollama_server.url == f"http://127.0.0.1:{ollama_server.port}"
    with _http(ollama_server) as http:
        r = http.get("/")
        assert r.status_code == 200 and r.text == "Ollama is running"
        assert http.head("/").status_code == 200
        v = http.get("/api/version")
        assert v.status_code == 200 and isinstance(v.json()["version"], str)


def test_ollama_list(oll, ollama_server):
    listing = oll.list()
    assert isinstance(listing, ollama.ListResponse)
    [model] = listing.models
    assert model.model == ollama_server.model
    assert model.size > 0 and len(model.digest) == 64 and model.modified_at is not None
    assert model.details.format == "gguf" and model.details.family and model.details.quantization_level


def test_ollama_show(oll, ollama_server):
    info = oll.show(ollama_server.model)
    assert isinstance(info, ollama.ShowResponse)
    assert info.template and info.modelfile and "completion" in info.capabilities
    assert info.details.format == "gguf"
    arch = info.modelinfo["general.architecture"]
    assert isinstance(info.modelinfo[f"{arch}.context_length"], int)
    assert isinstance(info.modelinfo["general.parameter_count"], int)
    assert "num_ctx" in info.parameters


def test_ollama_ps(oll, ollama_server):
    ps = oll.ps()
    assert isinstance(ps, ollama.ProcessResponse)
    [model] = ps.models
    assert model.model == ollama_server.model and model.context_length == 2048 and model.expires_at


def test_ollama_chat_non_stream(oll, ollama_server):
    r = oll.chat(model=ollama_server.model, messages=[{"role": "user", "content": "Say hello."}],
                 options={"num_predict": N}, stream=False)
    assert isinstance(r, ollama.ChatResponse)
    assert r.model == ollama_server.model
    assert r.message.role == "assistant" and r.message.content
    _assert_final_stats(r, N)


def test_ollama_chat_stream(oll, ollama_server):
    parts = list(oll.chat(model=ollama_server.model, messages=[{"role": "user", "content": "Say hello."}],
                          options={"num_predict": N}, stream=True))
    assert all(isinstance(p, ollama.ChatResponse) for p in parts)
    *chunks, final = parts
    assert chunks and all(p.done is False and p.message.role == "assistant" for p in chunks)
    assert "".join(p.message.content for p in chunks).strip()
    assert final.message.role == "assistant" and final.message.content == ""
    _assert_final_stats(final, N)
    assert len(chunks) <= final.eval_count


def test_ollama_generate_non_stream(oll, ollama_server):
    r = oll.generate(model=ollama_server.model, prompt="Say hello.", options={"num_predict": N}, stream=False)
    assert isinstance(r, ollama.GenerateResponse)
    assert r.response
    _assert_final_stats(r, N)
    assert r.context and all(isinstance(t, int) for t in r.context)


def test_ollama_generate_stream(oll, ollama_server):
    parts = list(oll.generate(model=ollama_server.model, prompt="Say hello.", options={"num_predict": N},
                              stream=True))
    *chunks, final = parts
    assert chunks and all(p.done is False for p in chunks)
    assert "".join(p.response for p in chunks).strip()
    assert final.response == ""
    _assert_final_stats(final, N)
    assert final.context


def test_ollama_tiny_num_predict_gives_length(oll, ollama_server):
    for stream in (False, True):
        r = oll.chat(model=ollama_server.model, messages=[{"role": "user", "content": LONG_PROMPT}],
                     options={"num_predict": 2, "temperature": 0}, stream=stream)
        final = r if not stream else list(r)[-1]
        assert final.done_reason == "length" and final.eval_count == 2


def test_ollama_seed_makes_sampling_repeatable(oll, ollama_server):
    opts = {"num_predict": N, "seed": 1234, "temperature": 1.0}
    messages = [{"role": "user", "content": "Tell me something."}]
    a = oll.chat(model=ollama_server.model, messages=messages, options=opts)
    b = oll.chat(model=ollama_server.model, messages=messages, options=opts)
    assert a.message.content == b.message.content and a.eval_count == b.eval_count


def test_ollama_stop_option(oll, ollama_server):
    opts = {"num_predict": 24, "seed": 7, "temperature": 0}
    parts = list(oll.generate(model=ollama_server.model, prompt=LONG_PROMPT, options=opts, stream=True))
    pieces = [p.response for p in parts[:-1]]
    # a stop string taken from the model's own output, after its first piece
    i, stop = next((i, p) for i, p in enumerate(pieces) if i > 0 and p.strip())
    r = oll.generate(model=ollama_server.model, prompt=LONG_PROMPT, options={**opts, "stop": [stop]})
    assert r.done_reason == "stop"
    assert stop not in r.response and "".join(pieces).startswith(r.response)
    assert r.eval_count <= parts[-1].eval_count


def test_ollama_num_ctx_bounds_generation(oll, ollama_server):
    r = oll.chat(model=ollama_server.model, messages=[{"role": "user", "content": LONG_PROMPT}],
                 options={"num_ctx": 64, "num_predict": 500, "temperature": 0})
    assert r.prompt_eval_count + r.eval_count <= 64
    assert r.done_reason in {"length", "stop"}


def test_ollama_num_ctx_drops_oldest_history(oll, ollama_server):
    turn = "Here is a fairly long message that takes up room in the context window, again and again."
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        history += [{"role": "user", "content": f"{i}: {turn}"}, {"role": "assistant", "content": "Noted."}]
    history.append({"role": "user", "content": "Done?"})
    full = oll.chat(model=ollama_server.model, messages=history, options={"num_predict": 1})
    cut = oll.chat(model=ollama_server.model, messages=history, options={"num_predict": 1, "num_ctx": 100})
    assert full.prompt_eval_count > 100 > cut.prompt_eval_count > 0
    with pytest.raises(ollama.ResponseError) as info:  # even the last message alone does not fit
        oll.chat(model=ollama_server.model, messages=history[-2:] + [{"role": "user", "content": turn * 3}],
                 options={"num_ctx": 30})
    assert info.value.status_code == 400


def test_ollama_format_schema_constrains_output(oll, ollama_server):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    r = oll.chat(model=ollama_server.model, messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                 format=schema, options={"num_predict": 64, "temperature": 0})
    assert r.done_reason == "stop"  # the grammar ends the object well before 64 tokens
    data = json.loads(r.message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_ollama_unknown_model_is_404(oll):
    calls = [lambda: oll.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}]),
             lambda: list(oll.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}], stream=True)),
             lambda: oll.generate(model="nope:1b", prompt="hi"),
             lambda: oll.show("nope:1b")]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404 and info.value.error == "model 'nope:1b' not found"


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[1, 2]",
    {"messages": [{"role": "user", "content": "hi"}]},                      # no model
    {"model": "MODEL", "messages": "hi"},                                   # messages not a list
    {"model": "MODEL", "messages": [{"content": "hi"}]},                    # no role
    {"model": "MODEL", "messages": [], "options": {"num_predict": "many"}},  # wrong option type
    {"model": "MODEL", "messages": [], "stream": "yes"},
])
def test_ollama_malformed_bodies_are_400(ollama_server, body):
    if isinstance(body, dict):
        body = json.dumps(body).replace("MODEL", ollama_server.model).encode()
    with _http(ollama_server) as http:
        r = http.post("/api/chat", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_ollama_empty_chat_loads_model(oll, ollama_server):
    r = oll.chat(model=ollama_server.model, messages=[], stream=False)
    assert r.done and r.done_reason == "load" and r.message.content == ""


def test_ollama_debug_requests_show_the_history_sent(oll, ollama_server):
    with _http(ollama_server) as http:
        http.delete("/_debug/requests")
    history = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "My name is Ada (marker 8c1f)."},
               {"role": "assistant", "content": "Hello Ada."},
               {"role": "user", "content": "What is my name?"}]
    r = oll.chat(model=ollama_server.model, messages=history, options={"num_predict": 4})
    [entry] = _debug(ollama_server, "requests", path="/api/chat")
    assert entry["method"] == "POST" and entry["body"]["model"] == ollama_server.model
    assert [(m["role"], m["content"]) for m in entry["body"]["messages"]] == \
        [(m["role"], m["content"]) for m in history]
    assert entry["body"]["options"]["num_predict"] == 4
    short = oll.chat(model=ollama_server.model, messages=history[-1:], options={"num_predict": 1})
    assert r.prompt_eval_count > short.prompt_eval_count + 10


def test_ollama_client_disconnect_frees_the_server(ollama_server, oll):
    with _http(ollama_server) as http:
        http.delete("/_debug/generations")
        # raw counting rarely ends by itself: without the disconnect this would run for ~5 s
        body = {"model": ollama_server.model, "prompt": "1, 2, 3, 4, 5, 6, 7,", "raw": True,
                "options": {"num_predict": 600, "temperature": 0}}
        with http.stream("POST", "/api/generate", json=body) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["done"] is False
            assert json.loads(next(lines))["done"] is False
        # leaving the block closed the connection mid-stream
    t = time.monotonic()
    reply = oll.generate(model=ollama_server.model, prompt="Hi", options={"num_predict": 4})
    assert reply.done and time.monotonic() - t < 5.0  # a 600-token generation would take far longer
    [cancelled, ok] = _debug(ollama_server, "generations")
    assert cancelled["status"] == "cancelled" and cancelled["eval_count"] < 100
    assert ok["status"] == "done"


# ------------------------------------------------------------------------------- Ollama server, async client

async def test_ollama_async_client(ollama_server):
    client = ollama.AsyncClient(host=ollama_server.base_url, timeout=60)
    try:
        assert isinstance(await client.list(), ollama.ListResponse)
        assert isinstance(await client.show(ollama_server.model), ollama.ShowResponse)
        assert isinstance(await client.ps(), ollama.ProcessResponse)

        r = await client.chat(model=ollama_server.model, messages=[{"role": "user", "content": "Hi"}],
                              options={"num_predict": N})
        assert isinstance(r, ollama.ChatResponse) and r.message.content
        _assert_final_stats(r, N)

        parts = [p async for p in await client.chat(model=ollama_server.model, stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}],
                                                     options={"num_predict": N})]
        assert parts[-1].message.content == "" and all(not p.done for p in parts[:-1])
        _assert_final_stats(parts[-1], N)

        g = await client.generate(model=ollama_server.model, prompt="Hi", options={"num_predict": N})
        _assert_final_stats(g, N)
        parts = [p async for p in await client.generate(model=ollama_server.model, prompt="Hi", stream=True,
                                                         options={"num_predict": N})]
        _assert_final_stats(parts[-1], N)

        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 404
    finally:
        await client.close()


async def test_ollama_generation_does_not_block_the_server(ollama_server):
    """While one request generates, others are answered at once, and two chats are served one after the other."""
    client = ollama.AsyncClient(host=ollama_server.base_url, timeout=60)
    try:
        async def chat():
            return await client.chat(model=ollama_server.model, messages=[{"role": "user", "content": LONG_PROMPT}],
                                     options={"num_predict": 64, "temperature": 0})

        busy = asyncio.gather(chat(), chat())
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=ollama_server.url, trust_env=False) as http:
            t = time.monotonic()
            assert (await http.get("/api/version")).status_code == 200
            assert time.monotonic() - t < 1.0
        assert not busy.done()  # answered while both chats were still queued/generating
        a, b = await busy
        assert a.done and b.done and a.eval_count > 0 and b.eval_count > 0
    finally:
        await client.close()


# ------------------------------------------------------------------------------------------------ network guard

def test_non_loopback_connections_are_blocked(no_external_network):
    guard = no_external_network
    before = len(guard.blocked)
    t = time.monotonic()
    with pytest.raises(guard.error):
        socket.create_connection(("10.255.255.1", 9), timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(guard.error):
            s.connect(("10.255.255.1", 9))
        with pytest.raises(guard.error):
            s.connect_ex(("10.255.255.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(guard.error):
            s.sendto(b"x", ("10.255.255.1", 9))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        with pytest.raises(guard.error):
            s.connect(("2001:db8::1", 9, 0, 0))
    with pytest.raises(guard.lookup_error):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://10.255.255.1:9/", trust_env=False, timeout=5)
    assert time.monotonic() - t < 1.0  # refused before anything was sent, not timed out
    assert len(guard.blocked) - before >= 7


async def test_non_loopback_blocked_for_asyncio(no_external_network):
    with pytest.raises(no_external_network.error):
        await asyncio.wait_for(asyncio.open_connection("10.255.255.1", 9), timeout=5)


def test_loopback_and_unix_sockets_still_work():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"ping")
        assert b.recv(4) == b"ping"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=5):
            pass
        with socket.create_connection(("localhost", srv.getsockname()[1]), timeout=5):
            pass
