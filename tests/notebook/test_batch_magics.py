"""``%%oblix --over DF [--schema SPEC] [--into NAME]`` in a real IPython shell (in-test backend: fast, exact)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from batch.test_batch import FakeBackend
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from oblix_nb import runtime
from oblix_nb.notebook import state
from oblix_nb.structured import SchemaError, schema_from_text


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIX_HOME", str(tmp_path / "home"))
    shell = InteractiveShell.instance()
    state.reset()
    shell.run_line_magic("load_ext", "oblix_nb")
    yield shell
    client = state.peek_client()
    if client is not None:
        runtime.run(client.shutdown())
        client.sessions.close()
    shell.run_line_magic("unload_ext", "oblix_nb")
    for name in ("oblix_result", "reviews", "labels", "mood", "spec_var", "out"):
        shell.user_ns.pop(name, None)
    state.reset()


def run(shell, cell):
    with capture_output() as cap:
        result = shell.run_cell(cell, store_history=False)
    return result, cap


def fake(reply=None) -> FakeBackend:
    backend = FakeBackend(reply=reply)
    state.get_client()._models[backend.model_id] = backend
    return backend


def test_over_runs_the_cell_per_row_into_a_variable(ip):
    backend = fake()
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["good", "bad"]}, index=["r9", "r9"])
    ip.user_ns["mood"] = "grumpy"
    result, cap = run(ip, "%%oblix --over reviews --into out\nAs a {mood} critic: {text} {{text}}")
    assert result.success, result.error_in_exec
    out = ip.user_ns["out"]
    assert out.index.equals(ip.user_ns["reviews"].index)
    assert out["response"].tolist() == ["echo: As a grumpy critic: good {text}", "echo: As a grumpy critic: bad {text}"]
    assert "2 rows -> out (0 from the store, 0 with errors)" in cap.stdout
    assert result.result is out  # shown as the cell's value
    result, cap = run(ip, "%%oblix --over reviews --into out\nAs a {mood} critic: {text} {{text}}")
    assert backend.calls == 2 and ip.user_ns["out"]["cached"].all()


def test_over_with_schema_forms(ip):
    fake(reply=lambda messages: json.dumps({"label": "pos", "score": 0.5}))
    ip.user_ns["reviews"] = pd.Series(["nice", "meh"], name="text")
    result, _ = run(ip, "%%oblix --over reviews --schema 'label pos|neg, score float'\nRate: {text}")
    assert result.success, result.error_in_exec
    out = ip.user_ns["oblix_result"]
    assert out["label"].dtype == "category" and out["score"].tolist() == [0.5, 0.5]
    ip.user_ns["spec_var"] = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    result, _ = run(ip, "%%oblix --over reviews --schema spec_var --into labels\nRate: {value}")
    assert result.success and ip.user_ns["labels"]["label"].tolist() == ["pos", "pos"]


def test_over_usage_errors(ip):
    fake()
    ip.user_ns["reviews"] = pd.DataFrame({"text": ["a"]})
    for cell in ["%%oblix --over missing\n{text}", "%%oblix --over reviews --schema 'a b c'\n{text}",
                 "%%oblix --over reviews\nno field here", "%%oblix --over reviews --var x\n{text}",
                 "%%oblix --into out\nplain prompt", "%%oblix --over reviews --into 9x\n{text}"]:
        result, cap = run(ip, cell)
        assert isinstance(result.error_in_exec, UsageError), (cell, result.error_in_exec)


def test_schema_from_text():
    assert schema_from_text("a, b int").properties["b"] == {"type": "integer"}
    assert schema_from_text('{"type": "object", "properties": {"x": {"type": "number"}}}').columns() == \
        {"x": "float64"}
    assert schema_from_text("s", {"s": "x bool"}).properties["x"] == {"type": "boolean"}
    for bad in ["", "{not json", "a ???"]:
        with pytest.raises(SchemaError):
            schema_from_text(bad)


def test_single_prompt_schema(ip):
    fake(reply=lambda messages: '{"label": "pos"}')
    result, _ = run(ip, "%%oblix --schema 'label pos|neg' --no-stream\nRate: nice")
    assert result.success, result.error_in_exec
    assert ip.user_ns["oblix_last"].response["parsed"] == {"label": "pos"}
    result, _ = run(ip, "%%oblix --schema 'label x y z'\nRate: nice")
    assert isinstance(result.error_in_exec, UsageError)
