"""map() inputs that used to break it after the model had answered: odd index labels (NaN, inf, NaT, lone
surrogates ...) and text that cannot be sent or stored (lone surrogates in a cell, the template or system).

Each class is run over many index dtypes / invalid strings on a fast in-test backend (the logic), and once end to
end against the suite's Anthropic Messages-API server on both store engines. Never asserts model text.
"""
from __future__ import annotations

import decimal
import math

import numpy as np
import pandas as pd
import pytest

from oblix_nb import ModelType, OblixClient
from oblix_nb.models.base import ModelBackend, Usage


class EchoBackend(ModelBackend):
    """Replies ``ok <n>`` with server-style usage; counts calls."""

    model_type = ModelType.OPENAI

    def __init__(self):
        super().__init__("echo", target="local", context_window=4096)
        self.calls = 0

    async def connect(self):
        pass

    async def stream(self, messages, params):
        self.calls += 1
        yield f"ok {len(messages[-1]['content'])}"
        yield Usage(5, 2, "server", "server", "stop")


@pytest.fixture
async def client(tmp_path):
    c = OblixClient(home=tmp_path)
    backend = EchoBackend()
    c._models[backend.model_id] = backend
    c.echo = backend
    yield c
    await c.shutdown()


NAN_INDEXES = {
    "float_nan_inf": pd.Index([1.5, math.nan, math.inf, -math.inf]),
    "float32_nan": pd.Index(np.array([np.nan, 1.0, np.inf, 2.0], dtype="float32")),
    "object_missing": pd.Index([None, math.nan, pd.NA, "x"], dtype=object),
    "multi_nan": pd.MultiIndex.from_tuples([(math.nan, "a"), (1.0, "b"), (math.inf, "c"), (2.0, math.nan)]),
    "datetime_nat": pd.DatetimeIndex(["2026-01-01", None, "2026-01-03", None]),
    "timedelta_nat": pd.TimedeltaIndex(["1D", None, "2h", "3s"]),
    "surrogate_labels": pd.Index(["\ud800", "a\udfffb", "\ud83d\ude00", "fine"], dtype=object),
    "decimal_nan": pd.Index([decimal.Decimal("NaN"), decimal.Decimal("1.5"), decimal.Decimal("Infinity"),
                             decimal.Decimal("-0")], dtype=object),
    "complex": pd.Index([complex(math.nan, 1), 1 + 2j, complex(math.inf, 0), 0j]),
    "interval_inf": pd.IntervalIndex.from_tuples([(0.0, 1.0), (1.0, math.inf), (-math.inf, 0.0), (2.0, 3.0)]),
    "categorical_nan": pd.CategoricalIndex(["a", None, "b", "a"]),
    "nullable_float": pd.Index(pd.array([1.0, None, 3.0, 4.5], dtype="Float64")),
}


def same_index(a: pd.Index, b: pd.Index) -> bool:
    return a.equals(b) and [repr(x) for x in a] == [repr(x) for x in b]


@pytest.mark.parametrize("kind", list(NAN_INDEXES))
async def test_any_index_label_is_stored_and_the_map_resumes(client, kind):
    index = NAN_INDEXES[kind]
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(len(index))]}, index=index)
    out = await client.map(frame, "Say {text}", progress=False)
    assert same_index(out.index, index) and out["error"].isna().all(), out["error"].tolist()
    assert out["response"].notna().all() and client.echo.calls == len(index)
    # Every reply is stored, labels as JSON: the next identical map reads them instead of calling again.
    again = await client.map(frame, "Say {text}", progress=False)
    assert again["cached"].all() and client.echo.calls == len(index)
    assert list(again["response"]) == list(out["response"])
    session = client.sessions.get(client.sessions.summaries(limit=1)[0]["id"])
    labels = [m["metrics"]["map"]["index"] for m in session["messages"] if m["role"] == "assistant"]
    assert len(labels) == len(index)
    for label in labels:  # plain JSON: no NaN/inf numbers, text with a UTF-8 form
        flat = label if isinstance(label, list) else [label]
        assert all(not (isinstance(x, float) and not math.isfinite(x)) for x in flat)
        assert all(x.encode("utf-8") for x in flat if isinstance(x, str))


BAD_TEXTS = ["\ud800", "before \udfff after", "\ud83d\ude00 (a pair written as two lone surrogates)",
             "x" * 5000 + "\udc80"]


@pytest.mark.parametrize("bad", BAD_TEXTS)
@pytest.mark.parametrize("shape", ["frame", "series", "strings", "dicts", "callable"])
async def test_a_lone_surrogate_in_one_row_is_that_rows_error(client, bad, shape):
    values = ["first", bad, "third", "fourth\x00with NUL"]  # NUL is ordinary text
    prompt = "Say {text}"
    if shape == "frame":
        # (object columns: pandas' default string dtype cannot even hold a lone surrogate)
        data = pd.DataFrame({"text": pd.Series(values, dtype=object), "other": pd.Series([bad] * 4, dtype=object)})
    elif shape == "series":
        data, prompt = pd.Series(values, name="text", dtype=object), "Say {value}"
    elif shape == "strings":
        data, prompt = values, "Say {value}"
    elif shape == "dicts":
        data = [{"text": v} for v in values]
    else:
        data, prompt = pd.DataFrame({"n": range(4)}), (lambda row: "Say " + values[row["n"]])
    out = await client.map(data, prompt, progress=False)
    assert len(out) == 4 and client.echo.calls == 3
    err = out["error"].iloc[1]
    assert err.startswith("prompt: ValueError") and "lone surrogate" in err
    if shape in ("frame", "dicts"):
        assert "'text'" in err  # names the column it came from
    assert out["response"].iloc[1] is pd.NA or pd.isna(out["response"].iloc[1])
    assert out["error"].drop(out.index[1]).isna().all() and out["response"].drop(out.index[1]).notna().all()
    again = await client.map(data, prompt, progress=False)  # the good rows resume from the store
    assert client.echo.calls == 3 and again["cached"].sum() == 3 and again["error"].iloc[1] == err


@pytest.mark.parametrize("bad", BAD_TEXTS)
async def test_a_lone_surrogate_in_the_template_or_system_is_refused_first(client, bad):
    frame = pd.DataFrame({"text": ["a", "b"]})
    before = client.sessions.summaries()
    with pytest.raises(ValueError, match="prompt template contains a lone surrogate"):
        await client.map(frame, "Say {text} " + bad, progress=False)
    with pytest.raises(ValueError, match="system contains a lone surrogate"):
        await client.map(frame, "Say {text}", system=bad, progress=False)
    assert client.echo.calls == 0 and client.sessions.summaries() == before  # nothing written


async def test_real_model_nan_index_and_surrogate_cell(store_url, tmp_path, anthropic_server):
    """End to end: a float index with NaN/inf and a cell with a lone surrogate, on both store engines."""
    pytest.importorskip("anthropic")
    client = OblixClient(home=tmp_path / "home", database_url=store_url)
    try:
        await client.hook_model(ModelType.CLAUDE, "claude-haiku-4-5", base_url=anthropic_server.base_url,
                                api_key=anthropic_server.api_key)
        frame = pd.DataFrame({"text": ["one", "two \ud800", "three"]}, index=[math.nan, math.inf, -0.5], dtype=object)
        out = await client.map(frame, "Repeat: {text}", max_tokens=8, progress=False)
        assert same_index(out.index, frame.index)
        assert out["error"].isna().tolist() == [True, False, True]
        assert out["output_tokens"].iloc[[0, 2]].gt(0).all() and out["response"].iloc[[0, 2]].notna().all()
        again = await client.map(frame, "Repeat: {text}", max_tokens=8, progress=False)
        assert again["cached"].tolist() == [True, False, True]
        assert list(again["response"].iloc[[0, 2]]) == list(out["response"].iloc[[0, 2]])
    finally:
        await client.shutdown()
