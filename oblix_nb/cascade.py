"""Cascades: the local model where it is good enough, the next model where it is not.

``map(..., cascade=[a, b, ...], min_confidence=0.8)`` and ``execute(..., cascade=[...], min_confidence=...)``
send each row (request) to the first model; a reply whose confidence (:mod:`oblix_nb.confidence`) is below
``min_confidence`` -- or unknown (NaN: the backend gives no log-probabilities), or that fails (an invalid reply
after the retry, a failed call) -- goes to the next model, and so on; the last model's reply is kept as it is.

Every stage is one attempt at exactly that model (no fallback to another tier: a stage that cannot run is the
end of the row's cascade); budgets apply per attempt. A stage that cannot run (over budget, unreachable) keeps
the previous stage's answer and says why in ``cascade_note``. Every attempt is stored (see
:mod:`oblix_nb.batch`), with its cost.

This module holds the argument checks and the confidence of one reply (shared by ``map()`` and ``execute()``),
and the ``execute()`` side of a cascade.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

NAN = float("nan")
CASCADE_COLUMNS = ("escalated", "cascade_note", "cost_usd", "attempt_costs")


def check_cascade(client: Any, cascade: Sequence[str] | None, min_confidence: Any,
                  model_id: str | None = None) -> tuple[list[str] | None, float | None]:
    """``(model ids in order, threshold)``, or ``(None, None)`` without a cascade. ValueError / TypeError /
    NoModelHookedError for bad input (checked before any call)."""
    from .errors import NoModelHookedError

    if cascade is None:
        if min_confidence is not None:
            raise ValueError("min_confidence applies to a cascade: give cascade=[first_model, next_model, ...]")
        return None, None
    if isinstance(cascade, str):
        cascade = [c.strip() for c in cascade.split(",") if c.strip()]
    if not isinstance(cascade, (list, tuple)) or not all(isinstance(m, str) and m for m in cascade):
        raise TypeError(f"cascade must be a list of model ids (or aliases), not {cascade!r}")
    if len(cascade) < 2:
        raise ValueError(f"a cascade needs at least two models, got {list(cascade)}")
    if model_id is not None:
        raise ValueError("give either model_id= or cascade=, not both (the cascade names the models)")
    resolve = getattr(client, "resolve_model_id", lambda m: m)
    ids = [resolve(m) for m in cascade]
    missing = [m for m in ids if m not in client.models]
    if missing:
        raise NoModelHookedError(f"cascade model(s) {missing} are not hooked; hooked: {list(client.models)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a cascade names each model once, got {ids}")
    if min_confidence is None:
        min_confidence = 0.8
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
            or not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be a number between 0 and 1, not {min_confidence!r}")
    return ids, float(min_confidence)


def confident(values: dict, threshold: float) -> bool:
    """True if every confidence value is known and at least ``threshold``."""
    vals = list(values.values())
    return bool(vals) and all(v is not None and not math.isnan(v) and v >= threshold for v in vals)


async def reply_confidence(client: Any, request: Any, response: dict, schema: Any, *,
                           regenerate: bool = False) -> dict:
    """The confidence values (by column, :func:`oblix_nb.confidence.confidence_columns`) of ``response``, the
    reply to ``request`` (whose ``sent`` holds the messages the model saw); NaN where unknown. Never raises for
    a model that gives no log-probabilities.

    Exact backends (embedded llama.cpp) score the reply itself. ``top_logprobs`` backends (OpenAI-compatible
    servers, Ollama 0.12.11+) only give log-probabilities with a generation: with ``regenerate`` (a cascade
    stage that must decide whether to escalate) the messages are answered once more at temperature 0 with
    log-probabilities, and that answer's confidence is taken; without it, NaN."""
    from . import confidence as C

    columns = C.confidence_columns(schema)
    backend = client.models.get(response.get("model_id"))
    messages = getattr(request, "sent", None)
    method = getattr(backend, "logprob_method", None)
    if backend is None or not messages or method is None or (method == "top_logprobs" and not regenerate):
        return {c: NAN for c in columns}
    try:
        tokens = None
        if method == "top_logprobs":
            from .models.base import GenerationParams

            params = GenerationParams(max_tokens=request.params.max_tokens, temperature=0.0,
                                      schema=schema.json_schema if schema is not None else None)
            _text, _usage, tokens = await backend.complete_with_logprobs(messages, params, C.TOP_LOGPROBS)
        return await C.reply_confidence(backend, messages, response["response"], schema, tokens=tokens)
    except C.LogprobsUnavailable:
        return {c: NAN for c in columns}
    except Exception:  # noqa: BLE001 - a failed scoring call leaves the confidence unknown, not the row failed
        return {c: NAN for c in columns}


def attempt_cost(response: dict | None) -> float | None:
    """The USD cost of one reply (exact, else the estimate; 0 for a local model; None if unknown)."""
    if not response:
        return None
    m = response.get("metrics") or {}
    cost = m.get("cost_usd")
    return cost if cost is not None else m.get("cost_estimate_usd")


async def execute_cascade(client: Any, request: Any, stages: list[str], threshold: float, *, sink=None,
                          stream: bool = False) -> dict:
    """``execute(..., cascade=...)``: the response of the model that answered, plus ``confidence`` (or
    ``<field>_confidence`` values), ``escalated``, ``cascade_note`` and ``cascade`` (every attempt: model id,
    confidence, cost, error). Every attempt is stored in the request's session."""
    from .errors import BudgetExceededError, ModelCallError, StructuredOutputError

    engine = client.engine
    attempts: list[dict] = []
    kept: dict | None = None
    kept_conf: dict = {}
    note = None
    for i, model_id in enumerate(stages):
        stage = replace(request, model_id=model_id, fallback=False,
                        request_id=request.request_id if i == 0 else f"{request.request_id}-{i + 1}")
        try:
            response = await engine.run(stage, sink=sink, stream=stream, parse=stage.schema is not None)
        except (BudgetExceededError, ModelCallError, StructuredOutputError) as exc:
            failed = getattr(exc, "response", None) if isinstance(exc, StructuredOutputError) else None
            attempts.append({"model_id": model_id, "confidence": None, "cost_usd": attempt_cost(failed),
                             "error": f"{type(exc).__name__}: {exc}"})
            if kept is not None and isinstance(exc, (BudgetExceededError, ModelCallError)):
                note = f"not escalated to {model_id}: {type(exc).__name__}: {exc}"
                break
            if i == len(stages) - 1:
                raise
            continue
        conf = await reply_confidence(client, stage, response, stage.schema, regenerate=i < len(stages) - 1)
        attempts.append({"model_id": model_id, "confidence": _plain_conf(conf),
                         "cost_usd": attempt_cost(response), "error": None})
        kept, kept_conf = response, conf
        if confident(conf, threshold) or i == len(stages) - 1:
            break
    assert kept is not None, "stages is not empty, and its last stage either answers or raises"
    out = dict(kept)
    out.update(kept_conf)
    out["escalated"] = kept["model_id"] != stages[0]
    out["cascade_note"] = note
    out["cascade"] = attempts
    return out


def _plain_conf(conf: dict) -> Any:
    vals = {k: (None if v is None or math.isnan(v) else float(v)) for k, v in conf.items()}
    return vals.get("confidence") if list(vals) == ["confidence"] else vals


async def execute_request(client: Any, request: Any, sink, stream: bool, cascade: list[str] | None,
                          min_confidence: float | None) -> dict:
    """``execute()``'s run (on the package loop): one model, or a cascade; with a schema, the answer's
    confidence is added to the response."""
    if cascade:
        assert min_confidence is not None, "check_cascade gives a threshold with every cascade"
        return await execute_cascade(client, request, cascade, min_confidence, sink=sink, stream=stream)
    response = await client.engine.run(request, sink=sink, stream=stream, parse=True)
    if request.schema is not None:
        response.update(await reply_confidence(client, request, response, request.schema))
    return response
