"""Per-answer confidence: how sure the model is of *this* answer, from its own token probabilities.

**Enum fields** (``"label a|b|c"``, a JSON Schema ``enum``, a pydantic ``Literal``/``Enum``): every option is
scored as the continuation of the assistant's reply at the field's value (``{"label": ``, then the option as a JSON
string, closing quote included so that ``"pos"`` and ``"positive"`` are told apart), and the scores are normalised
over the options. The field's ``confidence`` is the chosen option's normalised probability (0-1); ``probs`` holds
every option's. How each backend scores (``ModelBackend.logprob_method``):

* ``"exact"`` -- the embedded llama.cpp: each option's log-likelihood is computed exactly by teacher forcing (the
  prompt is evaluated once, reusing the KV cache; then each option's tokens in one batch). With the same messages
  as constrained generation, the normalised probabilities are exactly the distribution that grammar-constrained
  sampling at temperature 1 draws the field's value from.
* ``"top_logprobs"`` -- OpenAI-compatible servers (OpenAI; ``llama_cpp.server``, whose ``--logits_all`` is on by
  default) and Ollama 0.12.11+: one generation with ``logprobs`` and the top 20 alternatives per token. The
  generated option's probability is exact along its path; another option's is read where it leaves that path (the
  alternative's probability, counting whatever follows as certain: an upper bound), and an option not among the
  listed alternatives gets the smallest listed probability (also an upper bound). So the confidence is never
  over-stated by these bounds.
* ``None`` -- Claude (the Messages API gives no log-probabilities), or a server that refuses or ignores
  ``logprobs`` (the suite's Ollama-API server, Ollama before 0.12.11): confidence is **NaN**, the label is the
  generated one.

**Free text** (no schema, or a schema without enum fields): the confidence is the geometric mean of the reply's
token probabilities, ``exp(mean log p)`` (NaN where the backend gives none).

Entry points: :func:`score_field` / :func:`score_answer` (confidence of a given or generated reply),
:func:`choose` (answer an enum schema by option scoring instead of generation), :func:`text_confidence`,
:func:`confidence_columns` (the names ``map()`` gives these: ``confidence``, or ``<field>_confidence`` per enum
field when there are several) and :func:`reply_confidence` (one call for the execution engine: the confidence
values of one reply, by column).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .models.base import GenerationParams, LogprobsUnavailable, ModelBackend, TokenLogprob

__all__ = ["OptionScores", "normalise", "score_field", "score_answer", "choose", "text_confidence",
           "confidence_columns", "reply_confidence", "path_logprobs", "value_start", "LogprobsUnavailable"]

NAN = float("nan")
TOP_LOGPROBS = 20  # alternatives asked for per generated token (OpenAI's maximum)


@dataclass
class OptionScores:
    """One enum field's answer: the ``label`` chosen (the most likely option, or the generated value when the
    backend gives no log-probabilities), its ``confidence`` (0-1, NaN if unknown), every option's normalised
    probability (``probs``; empty if unknown), and the ``method`` ("exact", "top_logprobs" or "none")."""
    label: str | None
    confidence: float
    probs: dict = field(default_factory=dict)
    method: str = "none"
    field: str | None = None

    def as_dict(self) -> dict:
        return {"field": self.field, "label": self.label, "confidence": self.confidence, "probs": dict(self.probs),
                "method": self.method}


def normalise(logps: dict) -> dict:
    """``{option: log-likelihood}`` as probabilities summing to 1 (softmax). Options at -inf get 0; all at -inf
    (or none given): ``{}``."""
    finite = {k: v for k, v in logps.items() if v is not None and not math.isnan(v) and v != -math.inf}
    if not finite:
        return {}
    top = max(finite.values())
    weights = {k: math.exp(finite[k] - top) if k in finite else 0.0 for k in logps}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def _decide(logps: dict, method: str, name: str | None, fallback: str | None = None) -> OptionScores:
    probs = normalise(logps)
    if not probs:
        return OptionScores(fallback, NAN, {}, "none", name)
    label = max(probs, key=lambda k: probs[k])  # first option wins a tie (schema order)
    return OptionScores(label, probs[label], probs, method, name)


# ---------------------------------------------------------------------------------------------- reply text

def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def value_start(reply: str, name: str | None) -> int | None:
    """Where the value of top-level property ``name`` starts in the JSON object ``reply`` (``None``: the root
    value), or None if the reply has no such member (or is not a JSON object there)."""
    decoder = json.JSONDecoder()
    start = next((i for i, ch in enumerate(reply) if ch in "{[\""), None)
    if start is None:
        return None
    if name is None:
        return start
    if reply[start] != "{":
        return None
    i = _skip_ws(reply, start + 1)
    try:
        while i < len(reply) and reply[i] != "}":
            key, i = decoder.raw_decode(reply, i)
            i = _skip_ws(reply, i)
            if i >= len(reply) or reply[i] != ":":
                return None
            i = _skip_ws(reply, i + 1)
            if key == name:
                return i
            _, i = decoder.raw_decode(reply, i)
            i = _skip_ws(reply, i)
            if i < len(reply) and reply[i] == ",":
                i = _skip_ws(reply, i + 1)
    except ValueError:
        return None
    return None


def synthetic_prefix(name: str | None, before: dict | None = None) -> str:
    """The start of a reply up to the value of ``name``, written as ``json.dumps`` would (the fields in
    ``before`` first): what option scoring continues when there is no generated reply to continue."""
    if name is None:
        return ""
    head = json.dumps(dict(before or {}), ensure_ascii=False)[:-1]
    return head + (", " if before else "") + json.dumps(name, ensure_ascii=False) + ": "


def _option_text(option: str) -> str:
    return json.dumps(option, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- top_logprobs

def path_logprobs(tokens: Sequence[TokenLogprob], start: int, options: Sequence[str]) -> dict:
    """``{option: log-probability}`` of each option's JSON text at character ``start`` of the generated text
    (the tokens' texts joined), from the generated tokens and their listed alternatives (see the module
    docstring: exact for the generated path, upper bounds elsewhere). -inf when no token covers ``start``."""
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok.text)
    first = next((i for i, (o, t) in enumerate(zip(offsets, tokens)) if o <= start < o + len(t.text)), None)
    if first is None:
        return {o: -math.inf for o in options}
    out = {}
    for option in options:
        target = _option_text(option)
        total = 0.0
        path = 0.0       # log-probability of the generated tokens before position i
        consumed = 0     # characters of target matched by them
        bound = None     # the smallest listed log-probability where the option left the path
        for i in range(first, len(tokens)):
            tok = tokens[i]
            head = tok.text[:start - offsets[i]] if i == first else ""
            rest = target[consumed:]
            alternatives = {}
            for text, lp in tok.top:
                if text != tok.text and text not in alternatives:
                    alternatives[text] = lp
            for text, lp in alternatives.items():
                if not text.startswith(head):
                    continue
                piece = text[len(head):]
                if piece and (rest.startswith(piece) or piece.startswith(rest)):
                    total += math.exp(path + lp)  # what follows this alternative counted as certain
            piece = tok.text[len(head):]
            if piece and piece.startswith(rest):
                total += math.exp(path + tok.logprob)
                break
            if piece and rest.startswith(piece):
                path += tok.logprob
                consumed += len(piece)
                continue
            listed = [lp for _, lp in tok.top] + [tok.logprob]
            bound = path + min(listed)
            break
        if total == 0.0 and bound is not None:
            total = math.exp(bound)
        out[option] = math.log(total) if total > 0 else -math.inf
    return out


def text_confidence(tokens: Sequence) -> float:
    """The geometric mean of the tokens' probabilities, ``exp(mean log p)``; NaN for no tokens. ``tokens``:
    :class:`TokenLogprob` objects or plain log-probabilities."""
    lps = [t.logprob if isinstance(t, TokenLogprob) else float(t) for t in tokens]
    lps = [lp for lp in lps if not math.isnan(lp)]
    if not lps:
        return NAN
    return math.exp(sum(lps) / len(lps))


# ---------------------------------------------------------------------------------------------- scoring

def _enum_fields(schema: Any) -> dict:
    from .structured import enum_fields

    return enum_fields(schema)


def _generated_value(reply: str | None, name: str | None) -> str | None:
    if not reply:
        return None
    try:
        from .structured import extract_json

        value = extract_json(reply)
    except Exception:  # noqa: BLE001 - an unreadable reply has no generated value
        return None
    if name is not None:
        value = value.get(name) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _params(schema_json: dict | None, max_tokens: int | None) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, schema=schema_json)


async def score_field(backend: ModelBackend, messages: list[dict], name: str | None, options: Sequence[str], *,
                      reply: str | None = None, tokens: Sequence[TokenLogprob] | None = None) -> OptionScores:
    """Confidence of enum field ``name`` (None: the root value) with ``options``, for the reply to ``messages``.

    ``reply``: the generated reply text, if any (an exact backend continues it at the field; without one, a
    ``json.dumps``-style start ``{"name": ``). ``tokens``: that reply's tokens with log-probabilities, for a
    top_logprobs backend (without them: NaN, as nothing is generated here). Never raises for a backend without
    log-probabilities: the result is then NaN with the generated label.
    """
    options = list(dict.fromkeys(options))
    fallback = _generated_value(reply, name)
    method = getattr(backend, "logprob_method", None)
    try:
        if method == "exact":
            at = value_start(reply, name) if reply else None
            prefix = reply[:at] if reply and at is not None else synthetic_prefix(name)
            scored = await backend.score_continuations(messages, prefix, [_option_text(o) for o in options])
            return _decide({o: sum(lps) for o, lps in zip(options, scored)}, "exact", name, fallback)
        if method == "top_logprobs" and tokens:
            text = "".join(t.text for t in tokens)
            at = value_start(text, name)
            if at is None:
                return OptionScores(fallback, NAN, {}, "none", name)
            return _decide(path_logprobs(tokens, at, options), "top_logprobs", name, fallback)
    except LogprobsUnavailable:
        pass
    return OptionScores(fallback, NAN, {}, "none", name)


async def score_answer(backend: ModelBackend, messages: list[dict], schema: Any, *, reply: str | None = None,
                       tokens: Sequence[TokenLogprob] | None = None) -> dict:
    """``{field: OptionScores}`` for every enum field of ``schema`` (see :func:`score_field`)."""
    return {name: await score_field(backend, messages, name, options, reply=reply, tokens=tokens)
            for name, options in _enum_fields(schema).items()}


async def choose(backend: ModelBackend, messages: list[dict], schema: Any, *,
                 max_tokens: int | None = 64) -> tuple[dict, dict]:
    """Answer an enum schema by **option scoring**: ``(value, {field: OptionScores})``.

    Exact backends pick each enum field's most likely option, field after field, without generating (the other
    fields are generated afterwards only if the schema has any: then the reply is generated with the chosen
    labels in place of the model's). top_logprobs backends generate once (temperature 0, schema enforced) with
    log-probabilities and take each field's most likely option. Others generate and report NaN. ``messages``
    should hold the schema instruction (``compile_schema(schema).instruction()``) as ``map()`` sends it.
    """
    from .structured import compile_schema

    compiled = compile_schema(schema)
    fields = _enum_fields(compiled)
    if not fields:
        raise ValueError("choose() needs a schema with at least one enum field (e.g. 'label a|b|c')")
    method = getattr(backend, "logprob_method", None)
    only_enums = set(fields) == set(compiled.properties) or (None in fields)
    scores: dict = {}
    if method == "exact" and only_enums:
        try:
            chosen: dict = {}
            for name, options in fields.items():
                prefix = synthetic_prefix(name, chosen)
                scored = await backend.score_continuations(messages, prefix, [_option_text(o) for o in options])
                scores[name] = _decide({o: sum(lps) for o, lps in zip(options, scored)}, "exact", name)
                if name is None:
                    return scores[name].label, scores
                chosen[name] = scores[name].label
            return chosen, scores
        except LogprobsUnavailable:
            pass
    params = _params(compiled.json_schema, max_tokens)
    tokens = None
    try:
        if method == "top_logprobs":
            reply, _usage, tokens = await backend.complete_with_logprobs(messages, params, TOP_LOGPROBS)
        else:
            reply, _usage = await backend.complete(messages, params)
    except LogprobsUnavailable as exc:  # answered anyway (logprobs ignored): that reply; else ask without them
        reply, _usage = exc.reply if exc.reply is not None else await backend.complete(messages, params)
    from .structured import extract_json

    try:
        value = extract_json(reply)
    except Exception:  # noqa: BLE001 - the labels below still come from scoring where possible
        value = {} if None not in fields else None
    scores = await score_answer(backend, messages, compiled, reply=reply, tokens=tokens)
    if None in fields:
        return scores[None].label if scores[None].label is not None else value, scores
    value = dict(value) if isinstance(value, dict) else {}
    for name, s in scores.items():
        if s.label is not None:
            value[name] = s.label
    return value, scores


def confidence_columns(schema: Any = None) -> list:
    """The confidence columns ``map()`` adds: ``["confidence"]`` (free text, one enum field, or no enum field)
    or ``["<field>_confidence", ...]`` (one per enum field, when there are several)."""
    if schema is None:
        return ["confidence"]
    fields = [f for f in _enum_fields(schema) if f is not None]
    return [f"{f}_confidence" for f in fields] if len(fields) > 1 else ["confidence"]


async def reply_confidence(backend: ModelBackend, messages: list[dict], reply: str, schema: Any = None, *,
                           tokens: Sequence[TokenLogprob] | None = None) -> dict:
    """The confidence values of one reply, by column name (:func:`confidence_columns`): what the execution
    engine puts in ``execute(schema=...)``'s response and ``map()``'s frame.

    ``messages``: what the model was sent (system instruction included). ``tokens``: the reply's tokens with
    log-probabilities if the call asked for them (``backend.complete_with_logprobs``): needed for top_logprobs
    backends, whose confidence is NaN without them. Exact backends score the reply here (KV cache reused).
    """
    columns = confidence_columns(schema)
    fields = _enum_fields(schema) if schema is not None else {}
    if fields:
        scores = await score_answer(backend, messages, schema, reply=reply, tokens=tokens)
        if len(columns) == 1 and columns[0] == "confidence":
            return {"confidence": next(iter(scores.values())).confidence}
        return {f"{name}_confidence": s.confidence for name, s in scores.items()}
    if tokens:
        return {"confidence": text_confidence(tokens)}
    if getattr(backend, "logprob_method", None) == "exact" and reply:
        try:
            [lps] = await backend.score_continuations(messages, "", [reply])
            return {"confidence": text_confidence(lps)}
        except LogprobsUnavailable:
            pass
    return {"confidence": NAN}
