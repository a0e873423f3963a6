"""Per-answer confidence (oblix_nb.confidence): option scoring for enum fields, free-text confidence, each backend's
log-probabilities. Unit tests on fakes for the arithmetic; the embedded SmolLM2 checked against an independent
llama.cpp computation; llama_cpp.server (top_logprobs) and the suite's Ollama-API server (no logprobs: NaN) for
real."""
from __future__ import annotations

import enum
import json
import math
import typing

import pytest

from oblix_nb import confidence as C
from oblix_nb.models.base import GenerationParams, LogprobsUnavailable, ModelBackend, ModelType, TokenLogprob, Usage
from oblix_nb.structured import compile_schema, enum_fields

# ---------------------------------------------------------------------------------------------- fakes

class FakeExact(ModelBackend):
    """Scores continuations from a table {text: logprob per character}; records what it was asked."""
    model_type = ModelType.LLAMACPP
    logprob_method = "exact"

    def __init__(self, table: dict):
        super().__init__("fake")
        self.table = table
        self.calls: list = []

    async def connect(self):
        pass

    async def stream(self, messages, params):  # pragma: no cover - not used
        yield Usage()

    async def score_continuations(self, messages, prefix, continuations):
        self.calls.append((prefix, list(continuations)))
        return [[self.table.get(c, -20.0)] for c in continuations]


class FakeNone(FakeExact):
    logprob_method = None

    async def complete(self, messages, params):
        return '{"label": "b"}', Usage()


class FakeTop(FakeExact):
    logprob_method = "top_logprobs"

    def __init__(self, tokens):
        super().__init__({})
        self.tokens = tokens

    async def complete_with_logprobs(self, messages, params, top_logprobs=20):
        return "".join(t.text for t in self.tokens), Usage(), self.tokens


# ---------------------------------------------------------------------------------------------- arithmetic

def test_normalise_softmax_and_edge_cases():
    p = C.normalise({"a": math.log(0.2), "b": math.log(0.6), "c": math.log(0.2)})
    assert p == pytest.approx({"a": 0.2, "b": 0.6, "c": 0.2})
    p = C.normalise({"a": -1000.0, "b": -1001.0})  # no underflow to 0/0
    assert p["a"] == pytest.approx(1 / (1 + math.exp(-1))) and sum(p.values()) == pytest.approx(1)
    assert C.normalise({"a": -math.inf, "b": 0.0}) == {"a": 0.0, "b": 1.0}
    assert C.normalise({"a": -math.inf}) == {} and C.normalise({}) == {}
    assert C.normalise({"a": float("nan"), "b": -2.0}) == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize("reply,name,expected", [
    ('{"label": "pos"}', "label", '{"label": '),
    ('{"label":"pos"}', "label", '{"label":'),
    ('{\n  "label" :\n   "pos"\n}', "label", '{\n  "label" :\n   '),
    ('{"a": {"label": "x"}, "b": [1, "}"], "label": "neg"}', "label", '{"a": {"label": "x"}, "b": [1, "}"], "label": '),
    ('{"q\\"label": "x", "label": "y"}', "label", '{"q\\"label": "x", "label": '),
    ('Sure: {"score": 1.5, "label": "y"}', "label", 'Sure: {"score": 1.5, "label": '),
    ('"pos"', None, ''),
])
def test_value_start_finds_the_top_level_member(reply, name, expected):
    at = C.value_start(reply, name)
    assert at is not None and reply[:at] == expected


@pytest.mark.parametrize("reply", ['{"other": "x"}', 'no json here', '["label", "x"]', '{"label" "x"}', ''])
def test_value_start_none_without_that_member(reply):
    assert C.value_start(reply, "label") is None


def test_synthetic_prefix_is_json_dumps_style():
    assert C.synthetic_prefix("label") == '{"label": '
    assert C.synthetic_prefix("b", {"a": "x", "n": 2}) == '{"a": "x", "n": 2, "b": '
    assert C.synthetic_prefix(None) == ""
    full = C.synthetic_prefix("b", {"a": "é"}) + json.dumps("v") + "}"
    assert json.loads(full) == {"a": "é", "b": "v"}


class Colour(str, enum.Enum):
    red = "red"
    blue = "blue"


class Ticket(__import__("pydantic").BaseModel):
    kind: typing.Literal["bug", "doc", "question"]
    colour: Colour
    maybe: Colour | None = None
    title: str
    n: int


@pytest.mark.parametrize("schema,expected", [
    ("label a|b|c, score float", {"label": ["a", "b", "c"]}),
    ("x a|b?, y str, z c|d", {"x": ["a", "b"], "z": ["c", "d"]}),
    ({"type": "object", "properties": {"s": {"type": "string", "enum": ["u", "v"]}, "k": {"enum": [1, 2]},
                                       "c": {"const": "only"}}}, {"s": ["u", "v"], "c": ["only"]}),
    (Ticket, {"kind": ["bug", "doc", "question"], "colour": ["red", "blue"], "maybe": ["red", "blue"]}),
    ({"type": "string", "enum": ["yes", "no"]}, {None: ["yes", "no"]}),
    ("title, n int", {}),
])
def test_enum_fields_every_schema_form(schema, expected):
    assert enum_fields(schema) == expected


def test_confidence_columns():
    assert C.confidence_columns(None) == ["confidence"]
    assert C.confidence_columns("label a|b, score float") == ["confidence"]
    assert C.confidence_columns("title, n int") == ["confidence"]
    assert C.confidence_columns(Ticket) == ["kind_confidence", "colour_confidence", "maybe_confidence"]


def test_text_confidence_is_the_geometric_mean():
    assert C.text_confidence([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)
    assert C.text_confidence([TokenLogprob("a", math.log(0.9))]) == pytest.approx(0.9)
    assert math.isnan(C.text_confidence([]))


# ---------------------------------------------------------------------------------------------- top_logprobs path

def _tok(text, p, top=()):
    return TokenLogprob(text, math.log(p), [(t, math.log(q)) for t, q in top])


def test_path_logprobs_generated_path_is_exact_alternatives_bounded():
    # '{"label":"' then 'pos' 'itive' '"}'; at 'pos' the server also listed 'neg' (0.2) and 'neu' (0.05).
    tokens = [_tok('{"', 0.9), _tok("label", 0.8), _tok('":"', 0.7),
              _tok("pos", 0.6, [("pos", 0.6), ("neg", 0.2), ("neu", 0.05)]),
              _tok("itive", 0.9, [("itive", 0.9), ("t", 0.05)]), _tok('"}', 0.95, [('"}', 0.95), ('",', 0.02)])]
    text = "".join(t.text for t in tokens)
    start = C.value_start(text, "label")
    assert text[start] == '"'  # the value starts inside the token '":"'
    lp = C.path_logprobs(tokens, start, ["positive", "negative", "neutral", "pos", "other"])
    # The token holding the value's opening quote ('":"', 0.7) is a factor every option shares.
    # "positive" ends with '"': both '"}' (generated) and the listed '",' close it.
    assert lp["positive"] == pytest.approx(math.log(0.7 * 0.6 * 0.9 * (0.95 + 0.02)))
    assert lp["negative"] == pytest.approx(math.log(0.7 * 0.2))
    assert lp["neutral"] == pytest.approx(math.log(0.7 * 0.05))
    # "pos" follows the path through 'pos', then needs '"' where only 'itive' and 't' are listed: bounded by the
    # smallest listed probability there.
    assert lp["pos"] == pytest.approx(math.log(0.7 * 0.6 * 0.05))
    assert lp["other"] == pytest.approx(math.log(0.7 * 0.05))  # unlisted at 'pos': the smallest listed there
    probs = C.normalise(lp)
    assert max(probs, key=probs.get) == "positive" and sum(probs.values()) == pytest.approx(1)


def test_path_logprobs_options_sharing_tokens_and_multi_token_alternatives():
    # value tokens: '"' 'new' ' york' '"' ; alternatives at 'new': 'new' (0.5), 'paris' (0.3)
    tokens = [_tok('{"city": ', 1.0), _tok('"', 1.0),
              _tok("new", 0.5, [("new", 0.5), ("paris", 0.3)]),
              _tok(" york", 0.8, [(" york", 0.8), (" delhi", 0.15)]), _tok('"', 0.99), _tok("}", 1.0)]
    text = "".join(t.text for t in tokens)
    lp = C.path_logprobs(tokens, C.value_start(text, "city"), ["new york", "new delhi", "paris", "rome"])
    assert lp["new york"] == pytest.approx(math.log(0.5 * 0.8 * 0.99))
    assert lp["new delhi"] == pytest.approx(math.log(0.5 * 0.15))
    assert lp["paris"] == pytest.approx(math.log(0.3))
    assert lp["rome"] == pytest.approx(math.log(0.3))  # bound: smallest listed where it leaves the path
    assert C.path_logprobs(tokens, 10_000, ["x"]) == {"x": -math.inf}


# ---------------------------------------------------------------------------------------------- score_field / choose

async def test_score_field_exact_continues_the_reply_or_a_synthetic_start():
    b = FakeExact({'"a"': math.log(0.1), '"b"': math.log(0.3), '"c"': math.log(0.1)})
    s = await C.score_field(b, [], "label", ["a", "b", "c"], reply='{"n": 1, "label": "a"}')
    assert b.calls[-1] == ('{"n": 1, "label": ', ['"a"', '"b"', '"c"'])
    assert (s.label, s.method) == ("b", "exact") and s.confidence == pytest.approx(0.6)
    assert sum(s.probs.values()) == pytest.approx(1)
    await C.score_field(b, [], "label", ["a", "b"])
    assert b.calls[-1][0] == '{"label": '


async def test_no_logprobs_gives_nan_and_the_generated_label():
    s = await C.score_field(FakeNone({}), [], "label", ["a", "b"], reply='{"label": "b"}')
    assert s.label == "b" and math.isnan(s.confidence) and s.probs == {} and s.method == "none"
    s = await C.score_field(FakeTop([]), [], "label", ["a", "b"], reply='{"label": "a"}')  # no tokens given
    assert s.label == "a" and math.isnan(s.confidence)
    value, scores = await C.choose(FakeNone({}), [], "label a|b")
    assert value == {"label": "b"} and math.isnan(scores["label"].confidence)
    assert await C.reply_confidence(FakeNone({}), [], '{"label": "b"}', "label a|b") == {"confidence": pytest.approx(
        float("nan"), nan_ok=True)}


async def test_choose_exact_picks_fields_in_order_without_generating():
    table = {'"bug"': -0.1, '"doc"': -3.0, '"question"': -2.0, '"red"': -2.0, '"blue"': -0.2}
    b = FakeExact(table)
    value, scores = await C.choose(b, [], "kind bug|doc|question, colour red|blue")
    assert value == {"kind": "bug", "colour": "blue"}
    assert [c[0] for c in b.calls] == ['{"kind": ', '{"kind": "bug", "colour": ']
    assert set(scores) == {"kind", "colour"} and all(0 < s.confidence <= 1 for s in scores.values())
    root_value, root = await C.choose(b, [], {"type": "string", "enum": ["red", "blue"]})
    assert root_value == "blue" and b.calls[-1][0] == ""
    with pytest.raises(ValueError, match="enum field"):
        await C.choose(b, [], "title, n int")


async def test_choose_top_logprobs_generates_once_and_reads_the_path():
    tokens = [_tok('{"label": ', 1.0), _tok('"', 1.0), _tok("b", 0.7, [("b", 0.7), ("a", 0.2)]), _tok('"}', 1.0)]
    value, scores = await C.choose(FakeTop(tokens), [], "label a|b|c")
    s = scores["label"]
    assert value == {"label": "b"} and s.method == "top_logprobs"
    assert s.probs["b"] > s.probs["a"] >= s.probs["c"] > 0 and sum(s.probs.values()) == pytest.approx(1)


async def test_reply_confidence_columns_per_enum_field():
    b = FakeExact({'"bug"': -0.1, '"doc"': -3.0, '"question"': -3.0, '"red"': -1.0, '"blue"': -1.0})
    out = await C.reply_confidence(b, [], '{"kind": "bug", "colour": "red", "maybe": null, "title": "t", "n": 1}',
                                   Ticket)
    assert set(out) == {"kind_confidence", "colour_confidence", "maybe_confidence"}
    assert out["colour_confidence"] == pytest.approx(0.5)
    free = await C.reply_confidence(FakeTop([]), [], "hello", None, tokens=[_tok("he", 0.5), _tok("llo", 0.5)])
    assert free == {"confidence": pytest.approx(0.5)}


def test_claude_has_no_logprobs():
    pytest.importorskip("anthropic")
    from oblix_nb.models.claude import ClaudeBackend

    b = ClaudeBackend("claude-haiku-4-5", base_url="http://127.0.0.1:9", api_key="k")
    assert b.logprob_method is None and not b.supports_logprobs


# ---------------------------------------------------------------------------------------------- real backends

SCHEMA = compile_schema("label positive|negative|neutral")
MESSAGES = [{"role": "system", "content": SCHEMA.instruction()},
            {"role": "user", "content": "Sentiment of: I love this movie, it was wonderful!"}]


@pytest.fixture(scope="module")
async def embedded(gguf_path):
    pytest.importorskip("llama_cpp")
    from oblix_nb.models.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(str(gguf_path), n_threads=2)
    await b.connect()
    yield b
    await b.aclose()


@pytest.mark.slow
async def test_embedded_scores_match_an_independent_llama_cpp_computation(embedded, gguf_path):
    import llama_cpp
    import numpy as np

    options = ["positive", "negative", "neutral"]
    prefix = '{"label": '
    first = await embedded.score_continuations(MESSAGES, prefix, [json.dumps(o) for o in options])
    await embedded.complete(MESSAGES, GenerationParams(max_tokens=8, temperature=0.0))  # moves the KV cache on
    again = await embedded.score_continuations(MESSAGES, prefix, [json.dumps(o) for o in options])
    assert again == first  # the KV-cache reuse gives the same numbers

    prompt, special = embedded._render_chat(MESSAGES)
    ref = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    try:
        base = ref.tokenize((prompt + prefix).encode(), add_bos=not special, special=True)
        for option, got in zip(options, first):
            full = ref.tokenize((prompt + prefix + json.dumps(option)).encode(), add_bos=not special, special=True)
            ref.reset()
            ref.eval(full)
            start = next(i for i, (x, y) in enumerate(zip(base + [-1], full)) if x != y)
            want = []
            for i in range(start, len(full)):
                row = ref.scores[i - 1].astype(np.float64)
                want.append(row[full[i]] - row.max() - np.log(np.exp(row - row.max()).sum()))
            assert len(got) == len(want) >= 2 and got == pytest.approx(want, abs=1e-3)
    finally:
        ref.close()


@pytest.mark.slow
async def test_embedded_choose_and_free_text(embedded):
    value, scores = await C.choose(embedded, MESSAGES, SCHEMA)
    s = scores["label"]
    assert value["label"] in {"positive", "negative", "neutral"} and s.method == "exact"
    assert s.confidence == pytest.approx(max(s.probs.values())) and sum(s.probs.values()) == pytest.approx(1)
    text, usage, tokens = await embedded.complete_with_logprobs([{"role": "user", "content": "Say hi."}],
                                                                GenerationParams(max_tokens=12, temperature=0.0))
    assert text and len(tokens) >= 1 and all(t.logprob <= 0 for t in tokens)
    conf = await C.reply_confidence(embedded, [{"role": "user", "content": "Say hi."}], text)
    assert 0 < conf["confidence"] <= 1 and conf["confidence"] == pytest.approx(C.text_confidence(tokens))


@pytest.mark.slow
async def test_llama_cpp_server_top_logprobs(openai_server):
    from oblix_nb.models.openai import OpenAIBackend

    b = OpenAIBackend(openai_server.model, base_url=openai_server.base_url)
    await b.connect()
    try:
        params = GenerationParams(max_tokens=24, temperature=0.0, schema=SCHEMA.json_schema)
        text, usage, tokens = await b.complete_with_logprobs(MESSAGES, params, top_logprobs=5)
        assert "".join(t.text for t in tokens) == text and usage.output_tokens
        assert all(t.logprob <= 1e-6 and t.top for t in tokens)  # up to 5 alternatives asked (the server may add one)
        value, scores = await C.choose(b, MESSAGES, SCHEMA, max_tokens=24)
        s = scores["label"]
        assert s.method == "top_logprobs" and value["label"] == s.label in s.probs
        assert sum(s.probs.values()) == pytest.approx(1) and 0 < s.confidence <= 1
    finally:
        await b.aclose()


@pytest.mark.slow
async def test_ollama_without_logprobs_gives_nan(ollama_server):
    from oblix_nb.models.ollama import OllamaBackend

    b = OllamaBackend(ollama_server.model, ollama_server.url)
    await b.connect()
    try:
        with pytest.raises(LogprobsUnavailable):
            await b.complete_with_logprobs(MESSAGES, GenerationParams(max_tokens=8, temperature=0.0))
        value, scores = await C.choose(b, MESSAGES, SCHEMA, max_tokens=24)
        assert value["label"] in {"positive", "negative", "neutral"}
        assert math.isnan(scores["label"].confidence) and scores["label"].method == "none"
    finally:
        await b.aclose()


async def test_server_ignoring_logprobs_is_answered_once_with_nan():
    class Ignoring(FakeTop):
        completes = 0

        async def complete_with_logprobs(self, messages, params, top_logprobs=20):
            raise LogprobsUnavailable("no logprobs sent", reply=('{"label": "c"}', Usage()))

        async def complete(self, messages, params):
            self.completes += 1
            return '{"label": "a"}', Usage()

    b = Ignoring([])
    value, scores = await C.choose(b, [], "label a|b|c")
    assert value == {"label": "c"} and b.completes == 0 and math.isnan(scores["label"].confidence)


@pytest.mark.slow
async def test_embedded_prompt_longer_than_the_context_gives_nan(gguf_path):
    pytest.importorskip("llama_cpp")
    from oblix_nb.models.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(str(gguf_path), n_ctx=64, n_threads=1)
    await b.connect()
    try:
        long = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(LogprobsUnavailable, match="n_ctx"):
            await b.score_continuations(long, "", ['"a"'])
        s = await C.score_field(b, long, "label", ["a", "b"], reply='{"label": "b"}')
        assert s.label == "b" and math.isnan(s.confidence)
    finally:
        await b.aclose()
