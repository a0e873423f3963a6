"""ModelType.CLAUDE against the suite's Anthropic Messages-API server on loopback (tests/servers/anthropic_compat.py,
SmolLM2-135M behind Claude-looking names), with the official ``anthropic`` SDK as the client.

Also checks the server itself against the SDK's own types. Never asserts model wording.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

anthropic = pytest.importorskip("anthropic")

from oblix_nb import BudgetExceededError, ModelCallError, ModelType, ModelUnavailableError, OblixClient  # noqa: E402
from oblix_nb.localserver import free_port  # noqa: E402
from oblix_nb.models.base import GenerationParams  # noqa: E402
from oblix_nb.models.claude import ClaudeBackend, finish_reason, to_messages_api  # noqa: E402
from oblix_nb.pricing import table_price  # noqa: E402

SMALL = 12
HAIKU = "claude-haiku-4-5"


def _requests(server, path="/v1/messages") -> list:
    """What the server received (``path=None``: every path)."""
    params = {"path": path} if path else {}
    return httpx.get(server.url + "/_debug/requests", params=params, trust_env=False).json()


def _fail(server, **spec) -> None:
    httpx.post(server.url + "/_control/fail", json=spec, trust_env=False).raise_for_status()


@pytest.fixture
def clear(anthropic_server):
    httpx.delete(anthropic_server.url + "/_debug/requests", trust_env=False)
    httpx.delete(anthropic_server.url + "/_control/fail", trust_env=False)
    yield anthropic_server
    httpx.delete(anthropic_server.url + "/_control/fail", trust_env=False)


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


async def hook_claude(client, server, name=HAIKU, **kwargs):
    await client.hook_model(ModelType.CLAUDE, name, base_url=server.base_url, api_key=server.api_key, **kwargs)
    return f"claude:{name}"


async def hook_local(client, openai_server):
    """llama_cpp.server as the local side (an OpenAI-compatible server the user runs on their machine)."""
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url, target="local")
    return f"openai:{openai_server.model}"


# ------------------------------------------------------------------------------------- the server, by the SDK

def test_server_sse_sequence_validates_with_sdk_types(clear):
    """The raw SSE stream, event by event, parses with the SDK's own event models, in Anthropic's order."""
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RawMessageStreamEvent)
    headers = {"x-api-key": clear.api_key, "anthropic-version": "2023-06-01"}
    body = {"model": HAIKU, "max_tokens": SMALL, "stream": True, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello."}]}
    names, events = [], []
    with httpx.stream("POST", clear.url + "/v1/messages", json=body, headers=headers, trust_env=False,
                      timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("request-id")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                names.append(name)
                if name == "ping":  # not a message event: the SDK skips it
                    assert data == {"type": "ping"}
                    continue
                event = adapter.validate_python(data)
                assert event.type == name
                events.append(event)
    core = [n for n in names if n != "ping"]
    assert core[:2] == ["message_start", "content_block_start"] and core[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(core[2:-3]) == {"content_block_delta"}
    start, delta = events[0], [e for e in events if e.type == "message_delta"][0]
    assert start.message.usage.input_tokens > 0 and start.message.usage.output_tokens >= 0
    assert 0 < delta.usage.output_tokens <= SMALL and delta.delta.stop_reason in {"end_turn", "max_tokens"}
    assert _requests(clear)[-1]["auth"] == "x-api-key"


def test_server_errors_have_anthropic_shape(clear):
    sdk = anthropic.Anthropic(base_url=clear.base_url, api_key=clear.api_key, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        anthropic.Anthropic(base_url=clear.base_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.NotFoundError) as unknown:
        sdk.messages.create(model="claude-nope", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as system_role:
        sdk.messages.create(model=HAIKU, max_tokens=4, messages=[{"role": "system", "content": "x"}])
    _fail(clear, status=529)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        sdk.messages.create(model=HAIKU, max_tokens=4, messages=[{"role": "user", "content": "x"}])
    for exc, kind in ((bad_key, "authentication_error"), (unknown, "not_found_error"),
                      (system_role, "invalid_request_error"), (overloaded, "overloaded_error")):
        assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == kind
    assert overloaded.value.status_code == 529
    count = sdk.messages.count_tokens(model=HAIKU, messages=[{"role": "user", "content": "Hello there"}])
    assert count.input_tokens > 0
    sdk.close()


# ------------------------------------------------------------------------------------- pure request mapping

def test_messages_api_mapping():
    system, turns = to_messages_api([
        {"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "orphan"},
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": ""},
        {"role": "system", "content": "Use SI units."}, {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"}])
    assert system == "Be brief.\n\nUse SI units."
    assert turns == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"},
                     {"role": "user", "content": "d"}]
    _, cached = to_messages_api([{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"},
                                 {"role": "user", "content": "d"}], prompt_cache=True)
    assert cached[1]["content"] == [{"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}]
    assert cached[2]["content"] == "d"
    assert [finish_reason(r) for r in ("end_turn", "stop_sequence", "max_tokens", "tool_use", "refusal", None)] \
        == ["stop", "stop", "length", "tool_calls", "content_filter", None]


def test_payload_always_has_max_tokens_and_api_ranges(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    backend = ClaudeBackend(HAIKU, base_url="http://127.0.0.1:9/v1/", api_key="sk-ant-secret-xyz")
    assert backend.endpoint == "http://127.0.0.1:9"  # the SDK adds /v1 itself
    params = GenerationParams(None, 1.7, {"stop": "END", "seed": 3, "top_k": 5})
    payload = backend._payload([{"role": "user", "content": "hi"}], params)
    assert payload["max_tokens"] == 4096 and payload["stop_sequences"] == ["END"] and "seed" not in payload
    backend.max_output_tokens = 1024
    assert backend._payload([{"role": "user", "content": "hi"}], GenerationParams())["max_tokens"] == 1024
    assert "secret" not in repr(backend) + json.dumps(backend.describe())


@pytest.mark.parametrize("mode", ["keyword", "extra_body", "none"])
def test_sampling_follows_what_the_sdk_can_send(monkeypatch, mode):
    """The three SDK generations (a fake mode: the installed SDK is checked below): keywords (anthropic < 1),
    extra_body (1.x, API 2023-06-01), nothing (2.x, API 2026-10-21); what is not sent is reported."""
    from oblix_nb.models import claude

    monkeypatch.setattr(claude, "sdk_sampling", lambda: mode)
    backend = ClaudeBackend(HAIKU, base_url="http://127.0.0.1:9", api_key="k")
    params = GenerationParams(None, 1.7, {"top_k": 5, "top_p": 0.5, "seed": 3, "stop": "x", "repeat_penalty": 1.1})
    payload = backend._payload([{"role": "user", "content": "hi"}], params)
    sampling = {"temperature": 1.0, "top_p": 0.5, "top_k": 5}  # temperature clamped to the API's [0, 1]
    with pytest.warns(UserWarning, match="not applied"):
        missing = backend.options_not_applied(params)
    if mode == "keyword":
        assert {k: payload[k] for k in sampling} == sampling and "extra_body" not in payload
        assert missing == ("seed", "repeat_penalty")
    elif mode == "extra_body":
        assert payload["extra_body"] == sampling and not set(sampling) & set(payload)
        assert missing == ("seed", "repeat_penalty")
    else:
        assert not (set(sampling) | {"extra_body"}) & set(payload)
        assert missing == ("temperature", "top_p", "top_k", "seed", "repeat_penalty")
    assert backend.options_not_applied(GenerationParams(None, None, {"stop": "x"})) == ()


@pytest.mark.parametrize("params", [
    GenerationParams(), GenerationParams(7, 0.0), GenerationParams(7, 0.3, {"top_p": 0.9, "top_k": 3}),
    GenerationParams(7, 2.0, {"stop": ["a", "b"], "seed": 1, "presence_penalty": 0.1, "frequency_penalty": 0.2,
                              "repeat_penalty": 1.2, "top_k": 4})])
@pytest.mark.parametrize("prompt_cache", [False, True])
def test_every_keyword_exists_in_the_installed_sdk_signature(params, prompt_cache):
    """Whatever the call, the backend passes messages.create only keywords the installed SDK declares."""
    import inspect

    from anthropic.resources.messages import AsyncMessages, Messages

    backend = ClaudeBackend(HAIKU, base_url="http://127.0.0.1:9", api_key="k", prompt_cache=prompt_cache)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    keywords = set(backend._payload(messages, params)) | {"stream"}
    for create in (AsyncMessages.create, Messages.create):
        declared = inspect.signature(create).parameters
        assert keywords <= set(declared), keywords - set(declared)


async def test_sampling_options_not_applied_are_reported(clear):
    """Issue 20 item 1: temperature/top_k with the installed SDK: no TypeError, no 400 -- the server (which
    rejects them under anthropic-version 2026-10-21, as the API does) gets none, and the usage lists them."""
    from oblix_nb.models.claude import sdk_sampling

    backend = ClaudeBackend(HAIKU, base_url=clear.base_url, api_key=clear.api_key)
    try:
        params = GenerationParams(SMALL, 0.0, {"top_k": 5, "seed": 1})
        with pytest.warns(UserWarning, match="temperature, top_k, seed not applied"):
            text, usage = await backend.complete([{"role": "user", "content": "Hi."}], params)
        items = [i async for i in backend.stream([{"role": "user", "content": "Hi."}], params)]
    finally:
        await backend.aclose()
    assert sdk_sampling() == "none"  # anthropic 2.x, what the claude extra installs
    final = items[-1]
    assert usage.options_not_applied == final.options_not_applied == ("temperature", "top_k", "seed")
    assert usage.output_tokens > 0 and final.output_tokens > 0 and final.finish_reason in {"stop", "length"}
    for seen in _requests(clear)[-2:]:
        assert seen["anthropic_version"] >= "2026-10-21" and not {"temperature", "top_k", "top_p"} & set(seen["body"])


async def test_execute_with_temperature_works(client, clear):
    """The issue's call: execute("Hi.", temperature=0) on Claude answers (it raised TypeError before)."""
    mid = await hook_claude(client, clear)
    with pytest.warns(UserWarning, match="temperature not applied"):
        r = await client.execute("Hi.", temperature=0, max_tokens=SMALL, sink=lambda t: None)
    assert r["model_id"] == mid and r["metrics"]["output_tokens"] > 0


async def test_sdk_failure_falls_back(client, clear, openai_server, monkeypatch):
    """An exception the SDK raises before sending anything (here: a keyword it does not take, as anthropic 2.x
    did for temperature) is a backend failure: routing falls back to the next model."""
    claude = await hook_claude(client, clear)
    local = await hook_local(client, openai_server)
    backend = client.models[claude]
    real = backend._payload
    monkeypatch.setattr(backend, "_payload", lambda m, p: {**real(m, p), "temperature": 0.0})
    r = await client.execute("Say hi.", max_tokens=SMALL, model_id=claude, sink=lambda t: None)
    assert r["model_id"] == local and "TypeError" in r["routing_decision"]["fallback_from"] + \
        r["routing_decision"]["reason"]


def test_key_required_for_the_real_endpoint(monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        ClaudeBackend(HAIKU)


# ------------------------------------------------------------------------------------- hooking

async def test_hook_is_free_and_reads_env(client, clear, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", clear.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", clear.base_url)
    assert await client.hook_model(ModelType.CLAUDE, HAIKU) is True
    backend = client.models[f"claude:{HAIKU}"]
    assert backend.endpoint == clear.base_url and backend.target == "cloud" and backend.verified
    assert backend.context_window == 2048  # from the Models API's max_input_tokens
    seen = _requests(clear, path=None)
    assert seen and all(r["method"] == "GET" and r["path"].startswith("/v1/models") for r in seen)
    assert clear.api_key not in repr(client) + repr(backend) + json.dumps(backend.describe())


async def test_hook_failures_are_clear(client, clear):
    with pytest.raises(ModelUnavailableError, match="rejected the API key"):
        await client.hook_model(ModelType.CLAUDE, HAIKU, base_url=clear.base_url, api_key="sk-ant-wrong")
    with pytest.raises(ModelUnavailableError, match="claude-9"):
        await client.hook_model(ModelType.CLAUDE, "claude-9", base_url=clear.base_url, api_key=clear.api_key)
    with pytest.raises(ModelUnavailableError, match="did not answer"):
        await client.hook_model(ModelType.CLAUDE, HAIKU, base_url=f"http://127.0.0.1:{free_port()}",
                                api_key="k")
    assert client.models == {} and _requests(clear) == []


# ------------------------------------------------------------------------------------- calls

@pytest.mark.parametrize("stream", [True, False])
async def test_execute_streams_with_server_usage_and_cost(client, clear, stream):
    mid = await hook_claude(client, clear)
    sid = await client.create_and_use_session("claude")
    client.append_message(sid, "system", "Answer in one short sentence.")
    chunks = []
    r = await client.execute("Name a colour.", max_tokens=SMALL, stream=stream, sink=chunks.append)
    m = r["metrics"]
    assert r["model_id"] == mid and r["response"] and r["routing_decision"]["target"] == "cloud"
    if stream:  # every text delta the server sent reached the sink as its own chunk (however short the reply)
        assert len(chunks) == _requests(clear)[-1]["text_deltas"] >= 1 and "".join(chunks) == r["response"]
    assert m["usage_source"] == {"input": "server", "output": "server"}
    assert m["input_tokens"] > 0 and 0 < m["output_tokens"] <= SMALL
    assert m["finish_reason"] in {"stop", "length"}
    body = _requests(clear)[-1]["body"]
    assert body["system"] == "Answer in one short sentence." and body["max_tokens"] == SMALL
    assert [t["role"] for t in body["messages"]] == ["user"] and body.get("stream", False) is stream
    price = table_price(HAIKU)
    assert m["cost_source"] == "table"
    assert m["cost_usd"] == pytest.approx(price.cost(m["input_tokens"], m["output_tokens"]))
    stored = client.load_session(sid)["messages"][-1]
    assert stored["metrics"]["cost_usd"] == m["cost_usd"]
    df = client.messages_df(sid)
    assert df["cost_usd"].dtype == "Float64"
    assert df.loc[df.role == "assistant", "cost_usd"].iloc[0] == pytest.approx(m["cost_usd"])
    assert df.loc[df.role == "user", "cost_usd"].isna().all()
    assert client.sessions_df()["cost_usd"].iloc[0] == pytest.approx(m["cost_usd"])
    usage = client.usage(by="model")
    row = usage[usage.model_id == mid].iloc[0]
    assert row["replies"] == 1 and row["output_tokens"] == m["output_tokens"]
    assert row["cost_usd"] == pytest.approx(m["cost_usd"])


async def test_max_tokens_maps_to_length(client, clear):
    await hook_claude(client, clear)
    r = await client.execute("Write a long essay about the sea.", max_tokens=2, sink=lambda t: None)
    assert r["metrics"]["finish_reason"] == "length" and r["metrics"]["output_tokens"] == 2


async def test_stop_sequence_cuts_and_maps_to_stop(client, clear):
    await hook_claude(client, clear)
    r = await client.execute("Write two sentences about the sea.", max_tokens=SMALL, stop=[" ", "e"],
                             sink=lambda t: None)
    assert r["metrics"]["finish_reason"] == "stop"
    assert " " not in r["response"].strip() and "e" not in r["response"]
    assert _requests(clear)[-1]["body"]["stop_sequences"] == [" ", "e"]


async def test_prompt_cache_tokens_are_counted_and_priced(client, clear):
    await hook_claude(client, clear, prompt_cache=True)
    await client.create_and_use_session("cache")
    turns = [await client.execute(p, max_tokens=SMALL, sink=lambda t: None)
             for p in ("My name is Ada and I sail a small boat called Petrel on the North Sea every summer.",
                       "What is my boat called?", "And where do I sail?")]
    first, second, third = (t["metrics"] for t in turns)
    assert "cache_read_tokens" not in first or not first["cache_read_tokens"]
    assert second["cache_write_tokens"] > 0 and second["cache_read_tokens"] == 0
    assert third["cache_read_tokens"] > 0  # the prefix cached by the second turn
    price = table_price(HAIKU)
    for m in (second, third):
        assert m["cost_usd"] == pytest.approx(price.cost(m["input_tokens"], m["output_tokens"],
                                                         m["cache_read_tokens"], m["cache_write_tokens"]))
    body = _requests(clear)[-1]["body"]
    assert body["messages"][-2]["content"][0]["cache_control"] == {"type": "ephemeral"}


# ------------------------------------------------------------------------------------- failures and fallback

@pytest.mark.parametrize("status,stage", [(529, "http"), (429, "http"), (500, "http"), (529, "stream")])
async def test_overloaded_before_first_token_falls_back(client, clear, openai_server, status, stage):
    claude = await hook_claude(client, clear)
    local = await hook_local(client, openai_server)
    _fail(clear, status=status, stage=stage)
    r = await client.execute("Say hi.", max_tokens=SMALL, model_id=claude, sink=lambda t: None)
    decision = r["routing_decision"]
    assert r["model_id"] == local and decision["target"] == "local"
    assert decision["fallback_from"].startswith(claude) and str(status if stage == "http" else "Overloaded") in \
        decision["fallback_from"] + decision["reason"]
    assert r["metrics"]["cost_usd"] == 0.0 and r["metrics"]["cost_source"] == "local"


async def test_bad_request_does_not_fall_back(client, clear, openai_server):
    claude = await hook_claude(client, clear)
    await hook_local(client, openai_server)
    _fail(clear, status=400, type="invalid_request_error", message="prompt is too long")
    with pytest.raises(ModelCallError, match="prompt is too long"):
        await client.execute("Say hi.", max_tokens=SMALL, model_id=claude, sink=lambda t: None)


async def test_error_after_first_token_keeps_partial(client, clear):
    await hook_claude(client, clear)
    sid = await client.create_and_use_session("cut")
    _fail(clear, status=529, stage="after_text", after=2)
    with pytest.raises(ModelCallError) as info:
        await client.execute("Count from one to twenty.", max_tokens=SMALL, sink=lambda t: None)
    assert info.value.partial
    reply = client.load_session(sid)["messages"][-1]
    assert reply["partial"] is True and reply["content"] == info.value.partial
    assert reply["metrics"]["cost_usd"] is None  # the provider never reported usage: no exact cost
    assert reply["metrics"]["cost_estimate_usd"] > 0


# ------------------------------------------------------------------------------------- budgets

async def test_budget_routes_local_then_refuses(client, clear, openai_server, tmp_path):
    claude = await hook_claude(client, clear)
    local = await hook_local(client, openai_server)
    first = await client.execute("Say hi.", max_tokens=SMALL, model_id=claude, sink=lambda t: None)
    spent = first["metrics"]["cost_usd"]
    assert spent > 0
    # $0.0002 left: a call of 64 output tokens at $5/M could exceed it, one of 12 could not.
    status = client.set_budget(spent + 0.0002, per="day")
    assert status["spent_usd"] == pytest.approx(spent) and status["remaining_usd"] == pytest.approx(0.0002)
    assert any(a.name == "budget" for a in client.agents)
    before = len(_requests(clear))
    routed = await client.execute("Say hi again.", max_tokens=64, model_id=claude, sink=lambda t: None)
    assert routed["model_id"] == local and routed["routing_decision"]["target"] == "local"
    assert "over budget" in routed["routing_decision"]["reason"] and "worst case" in \
        routed["routing_decision"]["reason"]
    assert any(c["agent"] == "budget" for c in routed["agent_checks"])
    # A small max_tokens fits what is left: the cloud may still be used.
    fits = await client.execute("Say hi.", max_tokens=SMALL, model_id=claude, sink=lambda t: None)
    assert fits["model_id"] == claude
    # Without a local model the over-budget call is refused, and nothing reaches the server.
    await client.unhook_model(local)
    calls = len(_requests(clear))
    with pytest.raises(BudgetExceededError) as refused:
        await client.execute("One more?", max_tokens=4000, sink=lambda t: None)
    assert refused.value.model_id == claude and refused.value.worst_case_usd > refused.value.budget["remaining_usd"]
    assert "no local model is hooked" in str(refused.value)
    assert len(_requests(clear)) == calls == before + 1
    # The budget and the spend are in the store: another kernel sees both.
    code = ("import json, sys; from oblix_nb import OblixClient; "
            "print(json.dumps(OblixClient(home=sys.argv[1]).budget_status()))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
    out = subprocess.run([sys.executable, "-c", code, str(client.home)], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    other = json.loads(out)
    assert other[0]["per"] == "day" and other[0]["usd"] == pytest.approx(spent + 0.0002)
    assert other[0]["spent_usd"] == pytest.approx(spent + fits["metrics"]["cost_usd"])


# ------------------------------------------------------------------------------------- hook logic on other servers

def _scripted(routes: dict):
    """An SDK client whose requests are answered by ``routes`` {(method, path): (status, json)}; records them.
    (A fast fake for the hook logic alone: which free endpoints are tried, in which order.)"""
    httpx2 = pytest.importorskip("httpx2")
    seen = []

    def handler(request):
        key = (request.method, request.url.path)
        seen.append(key)
        status, body = routes.get(key, (404, {"detail": "Not Found"}))
        return httpx2.Response(status, json=body)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="k", max_retries=0, http_client=http), seen


async def _hook(routes: dict):
    backend = ClaudeBackend(HAIKU, base_url="http://127.0.0.1:9", api_key="k")
    await backend._client.close()
    backend._client, seen = _scripted(routes)
    try:
        await backend.connect()
    finally:
        await backend.aclose()
    return backend, seen


async def test_hook_on_servers_without_the_model_route():
    listing = {"data": [{"id": HAIKU, "object": "model"}], "has_more": False}  # OpenAI-style, as LiteLLM lists
    backend, seen = await _hook({("GET", "/v1/models"): (200, listing)})
    assert backend.verified and seen == [("GET", f"/v1/models/{HAIKU}"), ("GET", "/v1/models")]
    backend, seen = await _hook({("POST", "/v1/messages/count_tokens"): (200, {"input_tokens": 3})})
    assert backend.verified and seen[-1] == ("POST", "/v1/messages/count_tokens")
    backend, seen = await _hook({})  # only /v1/messages: hooked (it answered), unverified, nothing billed
    assert not backend.verified and ("POST", "/v1/messages") not in seen
    with pytest.raises(ModelUnavailableError, match="does not list"):
        await _hook({("GET", "/v1/models"): (200, {"data": [{"id": "claude-other"}], "has_more": False})})
    not_found = (404, {"type": "error", "error": {"type": "not_found_error", "message": f"model: {HAIKU}"}})
    with pytest.raises(ModelUnavailableError, match="does not know"):
        await _hook({("POST", "/v1/messages/count_tokens"): not_found})
    with pytest.raises(ModelUnavailableError, match="HTTP 500"):
        await _hook({("GET", f"/v1/models/{HAIKU}"): (500, {"type": "error", "error": {"type": "api_error",
                                                                                          "message": "boom"}})})


def test_local_servers_do_not_inherit_provider_keys(monkeypatch):
    from oblix_nb.localserver import LocalServer

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    code = "import os; print(sorted(k for k in os.environ if k.endswith(('_API_KEY', '_AUTH_TOKEN'))))"
    server = LocalServer([sys.executable, "-c", code], port=free_port(), keep_log=True, watch_parent=False)
    try:
        server._proc.wait(30)
        assert "leak" not in server.log_path.read_text() and "ANTHROPIC_API_KEY" not in server.log_path.read_text()
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)


async def test_stopped_stream_keeps_the_server_input_count(client, clear):
    """A Claude reply stopped after its first text keeps the input count message_start reported (not None)."""
    import asyncio

    await hook_claude(client, clear)
    sid = await client.create_and_use_session("stop")
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    seen: list[str] = []

    def sink(text):  # on the package's loop thread
        seen.append(text)
        if len(seen) == 2:
            loop.call_soon_threadsafe(got.set)

    task = asyncio.create_task(client.execute("Count from one to fifty.", max_tokens=200, sink=sink))
    await asyncio.wait_for(got.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply = client.load_session(sid)["messages"][-1]
    m = reply["metrics"]
    assert reply["partial"] is True and m["finish_reason"] == "interrupted"
    assert m["usage_source"]["input"] == "server" and m["input_tokens"] > 0
    count = anthropic.Anthropic(base_url=clear.base_url, api_key=clear.api_key).messages.count_tokens(
        model=HAIKU, messages=[{"role": "user", "content": "Count from one to fifty."}])
    assert m["input_tokens"] == count.input_tokens
    assert m["output_tokens"] >= len(seen) >= 2
