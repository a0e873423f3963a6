"""The execution engine as its own module (issue 17): the import graph has no circle, modules stay small, batch and
cluster use only public methods of the client, and ``Engine``'s public entry points behave as execute() does.

The backend here is a scripted stand-in (it tests the engine's logic, not a model); the real-model paths are
covered by test_execute.py / test_reference_execute.py, which go through the same ``Engine.run``.
"""
from __future__ import annotations

import ast
import asyncio
import builtins
from pathlib import Path

import pytest

from oblix_nb import NoModelHookedError, OblixClient, SessionNotFoundError, StructuredOutputError, runtime
from oblix_nb.execution import ExecutionStream, Request
from oblix_nb.models.base import ModelBackend, ModelType, Usage

PACKAGE = Path(__file__).resolve().parents[2] / "oblix_nb"


# ------------------------------------------------------------------------------------------- the module graph
def module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` from every import statement (module level or inside a
    function, TYPE_CHECKING blocks included): what a reader sees, not only what runs at import time."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                candidates = subs if len(subs) == len(node.names) else [*subs, target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in candidates if c in modules and c != name)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_circle():
    graph = module_graph()
    # The walk sees the imports that matter (so an empty answer is not an empty graph).
    assert "oblix_nb.execution" in graph["oblix_nb.client"] and "oblix_nb.terminal" in graph["oblix_nb.client"]
    assert "oblix_nb.execution" in graph["oblix_nb.batch"] and "oblix_nb.batch" in graph["oblix_nb.cluster"]
    assert circles(graph) == []


@pytest.mark.parametrize("module", ["execution", "terminal", "batch", "cluster", "routing", "streaming",
                                    "budget"])
def test_the_engine_side_never_imports_the_client(module):
    assert "oblix_nb.client" not in module_graph()[f"oblix_nb.{module}"]


def test_package_modules_stay_under_700_lines():
    # The package's top-level modules (the sub-packages have their own owners and limits).
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.glob("*.py")}
    assert {"client.py", "execution.py", "terminal.py", "batch.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > 700} == {}


def private_client_uses(path: Path) -> list[str]:
    """``client._x`` / ``self.client._x`` / ``self._client._x`` in a module (dunders aside)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id == "client" or \
                isinstance(base, ast.Attribute) and base.attr in ("client", "_client"):
            out.append(f"{path.name}:{node.lineno} .{node.attr}")
    return sorted(out)


def test_the_private_use_finder_sees_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(client, self):\n    client._route(1)\n    self.client._params\n    client.models\n")
    assert private_client_uses(sample) == ["sample.py:2 ._route", "sample.py:3 ._params"]


@pytest.mark.parametrize("module", ["batch.py", "cluster.py", "terminal.py", "execution.py"])
def test_batch_cluster_and_engine_use_no_private_member_of_the_client(module):
    assert private_client_uses(PACKAGE / module) == []


# ------------------------------------------------------------------------------------------- the engine
class Scripted(ModelBackend):
    """Replies with ``replies`` in turn (the last one repeats); records what it was sent."""

    model_type = ModelType.OPENAI

    def __init__(self, name="scripted", *, target="local", replies=("hello there",)):
        super().__init__(name, target=target, context_window=4096)
        self.replies = list(replies)
        self.sent: list[list[dict]] = []

    async def connect(self):
        pass

    async def stream(self, messages, params):
        self.sent.append(messages)
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        for word in text.split(" "):
            yield word + " "
        yield Usage(5, len(text.split(" ")), "server", "server", "stop")


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


def hook(client: OblixClient, *backends: ModelBackend) -> None:
    for backend in backends:
        client._models[backend.model_id] = backend


def test_params_are_checked_and_default_from_the_client(client):
    engine = client.engine
    client.default_max_tokens = 24
    params = engine.params(temperature=0.5, options={"top_p": 0.9, "seed": None, "model_id": "x"})
    assert (params.max_tokens, params.temperature, params.options) == (24, 0.5, {"top_p": 0.9})
    assert engine.params(max_tokens=8).max_tokens == 8
    for bad in ({"max_tokens": 0}, {"max_tokens": True}, {"max_tokens": 2.5}, {"temperature": -1},
                {"temperature": "hot"}):
        with pytest.raises(ValueError):
            engine.params(**bad)


async def test_build_request_checks_its_input_like_execute(client):
    engine = client.engine
    sid = await client.create_and_use_session("s")
    request = engine.build_request("Hi", max_tokens=4, options={"system": "Be brief.", "top_k": 5})
    assert isinstance(request, Request) and request.session_id == sid and request.request_id
    assert request.system == "Be brief." and request.params.options == {"top_k": 5}
    assert engine.build_request("Hi", request_id="r-1", session_id=sid).request_id == "r-1"
    client.set_model_alias("fast", "openai:scripted")
    assert engine.build_request("Hi", options={"model_id": "fast"}).model_id == "openai:scripted"
    with pytest.raises(ValueError):
        engine.build_request("   ")
    with pytest.raises(TypeError, match="unexpected keyword"):
        engine.build_request("Hi", options={"temprature": 0})
    with pytest.raises(TypeError, match="system must be a string"):
        engine.build_request("Hi", options={"system": 3})
    with pytest.raises(SessionNotFoundError):
        engine.build_request("Hi", session_id="no-such-session")
    with pytest.raises(NoModelHookedError):
        engine.build_request("Hi", options={"model_id": "unknown-alias"})


async def test_route_reads_the_models_hooked_at_call_time(client):
    engine = client.engine  # made before any model is hooked
    with pytest.raises(NoModelHookedError, match="no model is hooked"):
        await engine.route()
    local, cloud = Scripted("a"), Scripted("b", target="cloud")
    hook(client, local, cloud)
    decision, checks = await engine.route()
    assert decision.model_id == local.model_id and checks == []
    decision, _ = await engine.route(cloud.model_id)
    assert decision.model_id == cloud.model_id
    with pytest.raises(NoModelHookedError, match="not hooked"):
        await engine.route("openai:missing")


async def test_run_stores_the_exchange_and_store_reply_false_stores_nothing(client):
    hook(client, Scripted())
    sid = await client.create_session("s")
    engine = client.engine
    response = await runtime.to_loop(engine.run(engine.build_request("Hi", session_id=sid, max_tokens=4)))
    assert response["response"].strip() and response["session_id"] == sid
    assert [m["role"] for m in client.sessions.messages(sid)] == ["user", "assistant"]

    request = engine.build_request("Again", session_id=sid, max_tokens=4, options={"system": "Be brief."})
    response = await runtime.to_loop(engine.run(request, store_reply=False))
    assert response["response"].strip()
    assert len(client.sessions.messages(sid)) == 2  # neither the prompt, its system message nor the reply
    assert [r["replies"] for r in client.usage().to_dict("records")] == [2]  # usage is logged either way


async def test_run_parse_retries_an_invalid_reply_once(client):
    backend = Scripted(replies=["not json", '{"label": "ok"}'])
    hook(client, backend)
    engine = client.engine
    request = engine.build_request("Classify", options={"schema": "label"})
    response = await runtime.to_loop(engine.run(request, parse=True, store_reply=False))
    assert response["parsed"] == {"label": "ok"} and len(backend.sent) == 2
    # Without a session the retry carries the first exchange itself.
    assert [m["role"] for m in backend.sent[1] if m["role"] != "system"] == ["user", "assistant", "user"]

    backend.replies = ["still not json"]
    with pytest.raises(StructuredOutputError, match="even after one retry"):
        await runtime.to_loop(engine.run(engine.build_request("Classify", options={"schema": "label"}),
                                         parse=True))
    unparsed = await runtime.to_loop(engine.run(engine.build_request("Classify", options={"schema": "label"})))
    assert "parsed" not in unparsed  # parse=False: the caller validates (map() does)


async def test_engine_reads_a_swapped_store(client, tmp_path):
    from oblix_nb.sessions import SessionStore

    hook(client, Scripted())
    engine = client.engine
    first = client.sessions
    client.sessions = SessionStore(tmp_path / "other.db")
    try:
        sid = await client.create_session("other")
        await runtime.to_loop(engine.run(engine.build_request("Hi", session_id=sid, max_tokens=4)))
        assert len(client.sessions.messages(sid)) == 2 and not first.exists(sid)
        assert engine.sessions is client.sessions
    finally:
        client.sessions.close()
        client.sessions = first


async def test_stream_goes_through_the_engine(client):
    hook(client, Scripted(replies=["one two three"]))
    stream = client.stream("Count", max_tokens=4)
    assert isinstance(stream, ExecutionStream)
    pieces = [piece async for piece in stream]
    assert "".join(pieces) == stream.response["response"] and len(pieces) == 3


def test_model_specs_is_a_public_copy(client):
    from oblix_nb.cluster import ModelSpec

    spec = ModelSpec.of(ModelType.OPENAI, "m", None, {"timeout": 5.0})
    client._hook_specs["openai:m"] = spec
    specs = client.model_specs
    assert specs == {"openai:m": spec}
    specs.clear()
    assert client.model_specs == {"openai:m": spec}


def test_a_worker_client_is_built_by_the_factory_it_is_given(tmp_path, monkeypatch):
    from oblix_nb import cluster

    class MyClient(OblixClient):
        pass

    monkeypatch.setattr(cluster, "_clients", {})
    spec = cluster.ClientSpec(database_url=f"sqlite:{tmp_path / 'w.db'}", author="worker", default_max_tokens=7)
    built = cluster.worker_client(spec, MyClient)
    try:
        assert type(built) is MyClient and built.default_max_tokens == 7 and built.sessions.author == "worker"
        assert cluster.worker_client(spec, MyClient) is built  # once per process and spec
    finally:
        built.sessions.close()


def test_terminal_chat_needs_only_an_execute_method(monkeypatch, capsys):
    from oblix_nb import client as client_module
    from oblix_nb import terminal

    assert client_module.CHAT_EXIT_WORDS is terminal.CHAT_EXIT_WORDS  # still importable from the client

    class Stub:
        def __init__(self):
            self.calls = []

        async def execute(self, prompt, **kwargs):
            self.calls.append((prompt, kwargs))
            await asyncio.sleep(0)
            return {}

    answers = iter(["second", "quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    stub = Stub()
    assert terminal.terminal_chat(stub, "first", "sid-1", {"max_tokens": 3}) == {"session_id": "sid-1"}
    assert stub.calls == [("first", {"session_id": "sid-1", "max_tokens": 3}),
                          ("second", {"session_id": "sid-1", "max_tokens": 3})]
    assert "chat ended" in capsys.readouterr().err
