"""Evaluation: which model (or cascade, at which confidence threshold) is good enough for a labelled task.

:func:`evaluate` runs a prompt template over a labelled DataFrame with each model through the public
``client.map()`` (so rows are routed, stored, cached and resumable like any map), compares the answers with the
``truth`` column and returns one row per model, per answering method, per few-shot setting and per cascade
threshold:

``model``            a model id, or a cascade ``"a -> b"``
``method``           ``"generate"`` (constrained generation: ``map()``) or ``"score"`` (enum fields chosen by
                     option scoring, :func:`oblix_nb.confidence.choose`)
``shots``            few-shot examples in each prompt (0, or ``k`` when ``examples=`` is given)
``threshold``        for a cascade: rows whose confidence is below it go to the next model (NaN: no cascade)
``n``                rows evaluated
``accuracy``         share of rows whose answer equals the truth (case- and space-insensitive; a failed row is
                     wrong). For free-text fields this is the exact-match rate.
``macro_f1``         enum fields: F1 averaged over the labels found in the truth and the answers
``token_f1``         free-text fields: mean token-overlap F1 (as SQuAD); NaN for enum fields
``coverage``         share of rows with an answer (no error)
``escalated_share``  share of rows answered by a later model of the cascade (0 for a single model)
``cost_usd``         from ``map()``'s token counts and ``client.price_of()`` (local models cost 0; NaN if the
                     price is unknown); ``cost_estimate_usd`` adds an estimate for rows without counts (option
                     scoring, failed rows) from the backend's token estimate
``latency_p50_s``    median per-row latency (a cascade row: the sum over the models it went through)
``rows_per_s``       rows answered per second of wall time (rows read from map's cache are not counted; a
                     cascade's is derived from its models' per-row times and its escalated share)
``mean_confidence``  mean confidence of the answers (NaN where the backend gives no log-probabilities)
``cached_share``     share of rows that ``map()`` took from its cache

The per-row answers are in ``result.attrs["rows"]``; with ``target_accuracy=`` the threshold suggestion is in
``result.attrs["suggestion"]`` (see :func:`suggest_threshold`).

**Cascades are simulated offline**: every model answers every row, then for each threshold a row keeps the first
model's answer if its confidence is at least the threshold, else takes the next model's (and so on). This is
exactly what a live cascade would answer (same rows, same answers at temperature 0) and lets one run price every
threshold. A row whose confidence is NaN (unknown) or whose first answer failed is escalated. The seam for live
cascades: :func:`evaluate_frames` takes per-model result frames (columns: the answer field, ``error``,
``latency_s``, ``input_tokens``, ``output_tokens``, optional ``confidence``/``<field>_confidence``, ``model_id``,
``escalated``); a frame from ``map(..., cascade=...)`` can be passed there as one more entry.

**Confidence** per row comes from the frame's ``confidence`` (or ``<field>_confidence``) column when ``map()``
gives one; otherwise it is computed here for the row's answer (:mod:`oblix_nb.confidence`): exact backends
(embedded llama.cpp) score the answer's options, top_logprobs backends answer once more with log-probabilities
(only when a cascade or thresholds need it), others give NaN.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .evaluation_metrics import (
    _answer_text,
    _norm,
    accuracy,
    exact_match,
    few_shot_block,
    few_shot_examples,
    labels_needed,
    macro_f1,
    per_label,
    simulate_cascade,
    suggest_threshold,
    token_f1,
)

__all__ = ["evaluate", "evaluate_sync", "evaluate_frames", "accuracy", "macro_f1", "per_label", "exact_match",
           "token_f1", "few_shot_examples", "few_shot_block", "simulate_cascade", "suggest_threshold",
           "labels_needed", "plot_evaluation"]

NAN = float("nan")
METHODS = ("generate", "score")


def _renderer(prompt: Any, fields: list[str]) -> Callable[[dict], str]:
    """``row dict -> prompt text`` exactly as ``map()`` renders it (a template string or a callable)."""
    if callable(prompt):
        return prompt
    from .batch import PromptTemplate

    template = PromptTemplate(prompt, fields)
    return lambda row: template.render(tuple(row.get(f) for f in fields))


# ---------------------------------------------------------------------------------------------- summaries

def _column(frame: Any, name: str) -> list:
    if name not in frame.columns:
        return [None] * len(frame)
    out = []
    for v in frame[name].astype(object).tolist():
        out.append(None if _norm(v) is None and not isinstance(v, (dict, list)) else v)
    return out


def _floats(frame: Any, name: str) -> list:
    if name not in frame.columns:
        return [NAN] * len(frame)
    out = []
    for v in frame[name].astype(object).tolist():
        try:
            out.append(NAN if v is None else float(v))
        except (TypeError, ValueError):
            out.append(NAN)
    return out


def _confidence_column(frame: Any, field: str | None) -> str | None:
    for name in ([f"{field}_confidence"] if field else []) + ["confidence"]:
        if name in frame.columns:
            return name
    return None


def _answers(frame: Any, field: str | None) -> dict:
    """One run's per-row results in the form :func:`simulate_cascade` takes."""
    answer_col = field if field is not None and field in frame.columns else \
        ("parsed" if "parsed" in frame.columns else "response")
    conf_col = _confidence_column(frame, field)
    return {"pred": _column(frame, answer_col),
            "confidence": _floats(frame, conf_col) if conf_col else [NAN] * len(frame),
            "error": [e if isinstance(e, str) and e else None for e in _column(frame, "error")],
            "cost": _floats(frame, "cost_usd"), "cost_estimate": _floats(frame, "cost_estimate_usd"),
            "latency": _floats(frame, "latency_s"),
            "cached": [bool(c) for c in _column(frame, "cached")] if "cached" in frame.columns else [False] * len(frame),
            "escalated": [bool(e) for e in _column(frame, "escalated")] if "escalated" in frame.columns
            else [False] * len(frame)}


def _nansum(values: Sequence[float]) -> float:
    if not values or any(math.isnan(v) for v in values):
        return NAN
    return float(sum(values))


def _row(model: str, method: str, shots: int, threshold: float, truth: list, a: dict, kind: str,
         rows_per_s: float) -> dict:
    n = len(truth)
    pred = a["pred"]
    confs = [c for c in a["confidence"] if c is not None and not math.isnan(c)]
    lat = [v for v in a["latency"] if v is not None and not math.isnan(v)]
    answered = [e is None and p is not None for e, p in zip(a["error"], pred)]
    return {"model": model, "method": method, "shots": shots, "threshold": threshold, "n": n,
            "accuracy": accuracy(truth, pred),
            "macro_f1": macro_f1(truth, pred) if kind == "enum" else NAN,
            "token_f1": token_f1(truth, pred) if kind == "text" else NAN,
            "coverage": sum(answered) / n if n else NAN,
            "escalated_share": sum(a["escalated"]) / n if n else NAN,
            "cost_usd": _nansum(a["cost"]),
            "cost_estimate_usd": _nansum([c if not math.isnan(c) else e for c, e in zip(a["cost"], a["cost_estimate"])]),
            "latency_p50_s": statistics.median(lat) if lat else NAN,
            "rows_per_s": rows_per_s,
            "mean_confidence": sum(confs) / len(confs) if confs else NAN,
            "cached_share": sum(a["cached"]) / n if n else NAN}


def _rate(a: dict, wall_s: float | None) -> float:
    fresh = sum(1 for c in a["cached"] if not c)
    if not fresh or not wall_s or wall_s <= 0:
        return NAN
    return fresh / wall_s


def evaluate_frames(truth: Sequence, runs: list[dict], *, field: str | None, kind: str = "enum",
                    cascade: Sequence[str] | None = None, thresholds: Sequence[float] | None = None,
                    target_accuracy: float | None = None, holdout: float = 0.5, seed: int = 0) -> Any:
    """The evaluation table from per-row results, with no model call: the seam :func:`evaluate` and live
    cascades share.

    ``runs``: dicts with ``model``, ``method``, ``shots``, ``frame`` (a result frame on the same rows as
    ``truth``: the answer column -- ``field``, else ``parsed`` or ``response`` --, optional ``error``,
    ``latency_s``, ``cost_usd``, ``cost_estimate_usd``, ``cached``, ``confidence`` or ``<field>_confidence``,
    ``escalated``) and optional ``wall_s`` (seconds the run took). ``cascade``: model ids in cascade order;
    for each (method, shots) whose runs include all of them, one row per threshold is simulated
    (:func:`simulate_cascade`). ``kind``: "enum" or "text" (which metrics apply).
    """
    import pandas as pd

    truth = list(truth)
    rows, per_row = [], {}
    answers: dict = {}
    rates: dict = {}
    for run in runs:
        frame = run["frame"]
        if len(frame) != len(truth):
            raise ValueError(f"the run of {run['model']} has {len(frame)} rows, the truth {len(truth)}")
        a = _answers(frame, field)
        key = (run["model"], run.get("method", "generate"), int(run.get("shots", 0)))
        answers[key] = a
        rates[key] = _rate(a, run.get("wall_s"))
        rows.append(_row(key[0], key[1], key[2], float(run.get("threshold", NAN)), truth, a, kind, rates[key]))
        rows[-1]["cascade_run"] = run.get("cascade_run")
        per_row[f"{key[0]}|{key[1]}|{key[2]}"] = a["pred"]
        per_row[f"{key[0]}|{key[1]}|{key[2]}|confidence"] = a["confidence"]
    suggestions = {}
    if cascade and len(cascade) >= 2:
        variants = sorted({(m, s) for (_, m, s) in answers})
        for method, shots in variants:
            stages = [s for s in (answers.get((model, method, shots)) for model in cascade) if s is not None]
            if len(stages) != len(cascade):  # a model has no answers for this variant
                continue
            name = " -> ".join(cascade)
            for t in sorted({float(t) for t in (thresholds or [])}):
                sim = simulate_cascade(stages, t)
                sim["error"] = [None if p is not None else "no answer" for p in sim["pred"]]
                sim["cached"] = [False] * len(truth)
                reach = [sum(1 for st in sim["stage"] if st >= i) / len(truth) for i in range(len(cascade))]
                per_row_time = [1 / rates[(m, method, shots)] if rates[(m, method, shots)] > 0 else NAN
                                for m in cascade]
                total = sum(r * t_ for r, t_ in zip(reach, per_row_time))
                rate = 1 / total if total and not math.isnan(total) else NAN
                rows.append(_row(name, method, shots, t, truth, sim, kind, rate))
                rows[-1]["cascade_run"] = "simulated"
            if target_accuracy is not None:
                suggestions[(method, shots)] = suggest_threshold(truth, stages, target_accuracy,
                                                                 candidates=thresholds, holdout=holdout, seed=seed)
    result = pd.DataFrame(rows, columns=["model", "method", "shots", "threshold", "n", "accuracy", "macro_f1",
                                         "token_f1", "coverage", "escalated_share", "cost_usd", "cost_estimate_usd",
                                         "latency_p50_s", "rows_per_s", "mean_confidence", "cached_share",
                                         "cascade_run"])
    per_row["truth"] = truth
    result.attrs["rows"] = per_row
    if suggestions:
        result.attrs["suggestions"] = {f"{m}|{s}": v for (m, s), v in suggestions.items()}
        result.attrs["suggestion"] = next(iter(suggestions.values()))
    return result


# ---------------------------------------------------------------------------------------------- evaluate

def _resolve_field(compiled: Any, truth: str, field: str | None) -> tuple[str | None, str, list | None]:
    """(the compared field, "enum"/"text", its options)."""
    from .errors import SchemaError
    from .structured import enum_fields

    if compiled is None:
        if field not in (None, "response"):
            raise ValueError(f"field={field!r} needs a schema; without one the reply text is compared")
        return None, "text", None
    enums = enum_fields(compiled)
    props = list(compiled.properties)
    if field is None:
        if not props:
            field = None
        elif truth in props:
            field = truth
        elif len(enums) >= 1:
            field = next(iter(enums))
        else:
            field = props[0]
    elif props and field not in props:
        raise SchemaError(f"field {field!r} is not a property of the schema; properties: {props}")
    options = enums.get(field)
    return field, ("enum" if options is not None else "text"), options


def _messages(system: str | None, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _price(client: Any, model_id: str) -> dict | None:
    try:
        return client.price_of(model_id)
    except Exception:  # noqa: BLE001 - an unknown price is a NaN cost, not a failed evaluation
        return None


def _cost(price: dict | None, input_tokens: Any, output_tokens: Any) -> float:
    if price is None:
        return NAN
    try:
        i, o = float(input_tokens), float(output_tokens)
    except (TypeError, ValueError):
        return NAN
    if math.isnan(i) or math.isnan(o):
        return NAN
    return (i * price["input"] + o * price["output"]) / 1_000_000


async def _row_confidences(client: Any, model_id: str, messages: list[list[dict]], frame: Any, compiled: Any,
                           field: str | None, options: list | None, kind: str, regenerate: bool,
                           max_tokens: int | None) -> list[float]:
    """Each row's confidence in its answer when ``map()`` gave none (see the module docstring)."""
    from . import confidence as C
    from . import runtime
    from .models.base import GenerationParams, LogprobsUnavailable

    backend = client.models[model_id]
    method = getattr(backend, "logprob_method", None)
    if method is None or (method == "top_logprobs" and not regenerate):
        return [NAN] * len(frame)
    a = _answers(frame, field)
    props = list(compiled.properties) if compiled is not None else []
    records = frame.to_dict("records")
    out = []
    for r, msgs in enumerate(messages):
        pred = a["pred"][r]
        if a["error"][r] is not None or pred is None:
            out.append(NAN)
            continue
        try:
            if kind == "enum":
                assert options is not None  # an "enum" field has its options (_resolve_field)
                if method == "exact":
                    before = {p: _plain(records[r].get(p)) for p in props[:props.index(field)]} if field else {}
                    reply = C.synthetic_prefix(field, before) + json.dumps(pred, ensure_ascii=False)
                    s = await runtime.to_loop(C.score_field(backend, msgs, field, options, reply=reply))
                else:
                    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, schema=compiled.json_schema)
                    _text, _u, toks = await runtime.to_loop(backend.complete_with_logprobs(msgs, params))
                    s = await runtime.to_loop(C.score_field(backend, msgs, field, options, tokens=toks))
                out.append(s.probs.get(pred, NAN) if s.probs else NAN)
            else:
                if compiled is not None:
                    reply = json.dumps({p: _plain(records[r].get(p)) for p in props}, ensure_ascii=False) \
                        if props else json.dumps(_plain(pred), ensure_ascii=False)
                else:
                    reply = str(pred)
                if method == "exact":
                    values = await runtime.to_loop(C.reply_confidence(backend, msgs, reply))
                    out.append(values["confidence"])
                else:
                    params = GenerationParams(max_tokens=max_tokens, temperature=0.0,
                                              schema=compiled.json_schema if compiled is not None else None)
                    _text, _u, toks = await runtime.to_loop(backend.complete_with_logprobs(msgs, params))
                    out.append(C.text_confidence(toks))
        except LogprobsUnavailable:
            out.append(NAN)
        except Exception:  # noqa: BLE001 - a failed confidence call leaves that row's confidence unknown (NaN),
            out.append(NAN)  # which a cascade escalates; the evaluation goes on
    return out


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


async def _run_score(client: Any, model_id: str, messages: list[list[dict]], compiled: Any,
                     field: str | None, max_tokens: int | None, index: Any) -> tuple[Any, float]:
    """Option scoring over every row (no map(): nothing stored): a frame like map()'s, and the wall time."""
    import pandas as pd

    from . import confidence as C
    from . import runtime

    backend = client.models[model_id]
    rows = []
    start = time.perf_counter()
    for msgs in messages:
        t0 = time.perf_counter()
        try:
            value, scores = await runtime.to_loop(C.choose(backend, msgs, compiled, max_tokens=max_tokens or 64))
            s = scores.get(field)
            pred = value.get(field) if isinstance(value, dict) and field is not None else value
            rows.append({"answer": pred, "confidence": s.confidence if s else NAN, "error": None})
        except Exception as exc:  # noqa: BLE001 - a failed row is recorded, as map() does
            rows.append({"answer": None, "confidence": NAN, "error": f"{type(exc).__name__}: {exc}"})
        rows[-1]["latency_s"] = time.perf_counter() - t0
    wall = time.perf_counter() - start
    frame = pd.DataFrame(rows, index=index)
    frame = frame.rename(columns={"answer": field if field is not None else "parsed"})
    frame["model_id"] = model_id
    frame["cached"] = False
    return frame, wall


async def evaluate(client: Any, data: Any, prompt: Any, *, truth: str, schema: Any = None,
                   models: Sequence[str] | None = None, cascade: Sequence[str] | None = None,
                   thresholds: Sequence[float] | None = None, examples: Any = None, k: int = 4,
                   field: str | None = None, method: Any = "generate", system: str | None = None,
                   temperature: float | None = 0.0, max_tokens: int | None = None,
                   target_accuracy: float | None = None, holdout: float = 0.5, seed: int = 0,
                   cache: bool = True, progress: bool = False, cascade_run: str = "simulate", **options: Any):
    """Evaluate ``models`` (and a ``cascade`` of them at each of ``thresholds``) on the labelled ``data``.

    ``data``: a DataFrame holding the prompt's fields and the ``truth`` column (never shown to the model: it is
    dropped before ``map()``). ``prompt``: a ``map()`` template (``"Classify: {text}"``) or callable.
    ``schema``: as in ``map()``; the compared ``field`` defaults to the property named like ``truth``, else the
    first enum field, else the first property (without a schema the reply text is compared). ``models``: hooked
    model ids or aliases (default: the cascade's, else every hooked model). ``cascade``: model ids in order
    (default with ``thresholds`` and several models: ``models``). ``thresholds``: confidences in [0, 1].
    ``examples`` / ``k``: a labelled frame (same fields and ``truth`` column); each model also runs with ``k``
    examples balanced by label put before every prompt (:func:`few_shot_examples`), so the table shows whether
    they help. ``method``: "generate" (``map()``), "score" (option scoring; enum fields only) or both as a list.
    ``target_accuracy``: also suggest a threshold (``result.attrs["suggestion"]``, :func:`suggest_threshold`).
    ``temperature`` (default 0: reproducible), ``max_tokens``, ``system``, ``cache``, ``progress`` and sampling
    options go to ``map()``. ``cascade_run``: "simulate" (default: every model answers every row, each
    threshold is simulated offline) or "live" (one real ``map(cascade=..., min_confidence=t)`` per threshold:
    only escalated rows reach the later models); the ``cascade_run`` column says which ("simulated" / "live").
    Returns the table described in the module docstring.
    """
    import pandas as pd

    from .errors import NoModelHookedError
    from .structured import compile_schema

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame with a truth column, not {type(data).__name__}")
    if not isinstance(truth, str) or truth not in data.columns:
        raise ValueError(f"truth must name a column of data; data has {[str(c) for c in data.columns]}")
    if len(data) == 0:
        raise ValueError("data has no rows to evaluate")
    methods = [method] if isinstance(method, str) else list(method)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"method must be one of {METHODS} or a list of them, not {method!r}")
    compiled = compile_schema(schema) if schema is not None else None
    field, kind, options_ = _resolve_field(compiled, truth, field)
    if "score" in methods and kind != "enum":
        raise ValueError("method='score' chooses among an enum field's options; the compared field "
                         f"{field!r} is not an enum (use a schema like 'label a|b|c')")
    for t in thresholds or ():
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"thresholds must be numbers between 0 and 1, not {t!r}")
    resolve = getattr(client, "resolve_model_id", lambda m: m)
    cascade = [resolve(m) for m in cascade] if cascade else None
    models = [resolve(m) for m in models] if models else (list(cascade) if cascade else list(client.models))
    for m in (cascade or []):
        if m not in models:
            models.append(m)
    missing = [m for m in models if m not in client.models]
    if missing or not models:
        raise NoModelHookedError(f"model(s) {missing} are not hooked; hooked: {list(client.models)}")
    if cascade is None and thresholds and len(models) >= 2:
        cascade = list(models)
    if cascade_run not in ("simulate", "live"):
        raise ValueError(f"cascade_run must be 'simulate' or 'live', not {cascade_run!r}")
    if cascade_run == "live" and (not cascade or not thresholds or target_accuracy is not None):
        raise ValueError("cascade_run='live' runs cascade=[...] at each of thresholds=[...]: give both (a "
                         "target_accuracy suggestion needs the simulation: cascade_run='simulate')")
    if target_accuracy is not None and not cascade:
        raise ValueError("target_accuracy suggests a cascade threshold: give cascade=[...] (or several models "
                         "and thresholds=[...])")

    inputs = data.drop(columns=[truth])
    fields = [str(c) for c in inputs.columns]
    render = _renderer(prompt, fields)
    variants = [(0, "")]
    if examples is not None:
        shots = few_shot_examples(examples, truth, k, seed)
        variants.append((len(shots), few_shot_block(shots, render, truth, field, compiled)))
    user_system = system
    full_system = "\n\n".join(s for s in (system, compiled.instruction() if compiled else None) if s) or None
    records = inputs.to_dict("records")
    runs = []
    for model_id in models:
        price = _price(client, model_id)
        backend = client.models[model_id]
        for n_shots, block in variants:
            prompts = [block + render(row) for row in records]
            messages = [_messages(full_system, p) for p in prompts]
            for how in methods:
                if how == "generate":
                    row_prompt = prompt if not block else (lambda row, _b=block: _b + render(row))
                    start = time.perf_counter()
                    frame = await client.map(inputs, row_prompt, schema=schema, model_id=model_id,
                                             system=user_system, temperature=temperature, max_tokens=max_tokens,
                                             cache=cache, progress=progress, **options)
                    wall = time.perf_counter() - start
                    col = _confidence_column(frame, field)
                    if col is None or frame[col].isna().all():  # map() could not score (no log-probabilities)
                        frame["confidence"] = await _row_confidences(
                            client, model_id, messages, frame, compiled, field, options_, kind,
                            regenerate=bool(cascade and model_id in cascade[:-1]), max_tokens=max_tokens)
                else:
                    frame, wall = await _run_score(client, model_id, messages, compiled, field, max_tokens,
                                                   inputs.index)
                    frame["input_tokens"] = [backend.estimate_tokens((full_system or "") + p) for p in prompts]
                    frame["output_tokens"] = [None] * len(frame)
                a = _answers(frame, field)
                frame["cost_usd"] = [_cost(price, i, o) for i, o in
                                     zip(_floats(frame, "input_tokens"), _floats(frame, "output_tokens"))]
                est = []
                for r, p in enumerate(prompts):
                    answer = _answer_text(a["pred"][r], field, compiled) if a["pred"][r] is not None else ""
                    est.append(_cost(price, backend.estimate_tokens((full_system or "") + p),
                                     backend.estimate_tokens(answer)))
                frame["cost_estimate_usd"] = est
                runs.append({"model": model_id, "method": how, "shots": n_shots, "frame": frame, "wall_s": wall})
    if cascade_run == "live":  # real cascades: one map() per threshold; no simulation
        assert cascade and thresholds, "checked above: cascade_run='live' needs both"
        for t in sorted({float(t) for t in thresholds}):
            start = time.perf_counter()
            frame = await client.map(inputs, prompt, schema=schema, cascade=cascade, min_confidence=t,
                                     system=user_system, temperature=temperature, max_tokens=max_tokens,
                                     cache=cache, progress=progress, **options)
            runs.append({"model": " -> ".join(cascade), "method": "generate", "shots": 0, "frame": frame,
                         "wall_s": time.perf_counter() - start, "threshold": t, "cascade_run": "live"})
        cascade = None
    return evaluate_frames(data[truth].tolist(), runs, field=field, kind=kind, cascade=cascade,
                           thresholds=thresholds, target_accuracy=target_accuracy, holdout=holdout, seed=seed)


def evaluate_sync(client: Any, data: Any, prompt: Any, **kwargs: Any):
    """:func:`evaluate` from synchronous code (a cell, a script): runs on the package's loop."""
    from . import runtime

    if runtime.in_loop_thread():
        raise RuntimeError("evaluate_sync() called from the package's loop thread; await evaluate() instead")
    return runtime.run(evaluate(client, data, prompt, **kwargs))


# ---------------------------------------------------------------------------------------------- plot

def plot_evaluation(result: Any, theme: str = "light", x: str = "cost", ax: Any = None):
    """Accuracy against cost (``x="cost"``: estimated USD per 1,000 rows) or speed (``x="latency"``: p50
    seconds per row), one point per model / method / few-shot setting, and each cascade's thresholds joined by a
    line and labelled. Colours, text and grid are set for ``theme`` ("light" or "dark"), as in
    :mod:`oblix_nb.plots`. Returns the matplotlib Figure."""
    from .plots import PALETTE, THEMES, wrap

    if theme not in THEMES:
        raise ValueError(f"theme must be one of {sorted(THEMES)}, not {theme!r}")
    if x not in ("cost", "latency"):
        raise ValueError(f"x must be 'cost' or 'latency', not {x!r}")
    need = {"model", "method", "shots", "threshold", "accuracy", "cost_estimate_usd", "latency_p50_s", "n"}
    if not hasattr(result, "columns") or not need <= set(result.columns):
        raise ValueError(f"plot_evaluation() takes the table evaluate() returns (columns {sorted(need)})")
    import matplotlib.pyplot as plt

    def xval(row) -> float:
        if x == "cost":
            return row["cost_estimate_usd"] / row["n"] * 1000 if row["n"] else NAN
        return row["latency_p50_s"]

    with plt.rc_context({**THEMES[theme], "axes.grid": True, "grid.linewidth": 0.6, "font.size": 10}):
        if ax is None:
            fig, ax = plt.subplots(figsize=(9.5, 4.8), layout="constrained")
        else:
            fig = ax.figure
        groups: dict = {}
        for _, row in result.iterrows():
            single = math.isnan(row["threshold"]) if isinstance(row["threshold"], float) else False
            name = row["model"] + ("" if row["method"] == "generate" else f" [{row['method']}]") + \
                (f" +{row['shots']} shots" if row["shots"] else "")
            groups.setdefault((name, single), []).append(row)
        text_colour = THEMES[theme]["text.color"]
        unknown = False
        for n, ((name, single), rows) in enumerate(sorted(groups.items(), key=lambda kv: (not kv[0][1], kv[0][0]))):
            colour = PALETTE[n % len(PALETTE)]
            xs = [xval(r) for r in rows]
            missing = any(math.isnan(v) for v in xs)  # price unknown: drawn hollow at 0, said in the legend
            unknown |= missing
            xs = [0.0 if math.isnan(v) else v for v in xs]
            ys = [r["accuracy"] for r in rows]
            label = wrap(("cascade " if not single else "") + name + (" (cost unknown)" if missing else ""), 40)
            face = "none" if missing else colour
            if single:
                ax.scatter(xs, ys, s=60, facecolors=face, marker="o", label=label, zorder=3,
                           edgecolors=colour if missing else text_colour, linewidths=1.2 if missing else 0.6)
            else:
                order = sorted(range(len(rows)), key=lambda i: rows[i]["threshold"])
                ax.plot([xs[i] for i in order], [ys[i] for i in order], color=colour, marker="s", markersize=5,
                        markerfacecolor=face, label=label, zorder=2, linestyle="--" if missing else "-")
                for i in order:
                    ax.annotate(f"t={rows[i]['threshold']:.2f}", (xs[i], ys[i]), textcoords="offset points",
                                xytext=(4, 4), fontsize=8, color=text_colour)
        left, right = ax.get_xlim()
        right = max(right, 1e-6)
        ax.set_xlim(min(left, -0.05 * right), right * 1.1)  # room for the threshold labels
        ax.set_xlabel("cost (USD per 1,000 rows, estimated)" if x == "cost" else "latency p50 (s per row)")
        ax.set_ylabel("accuracy (share of rows)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Accuracy vs " + ("cost" if x == "cost" else "latency") + " per model and threshold")
        if groups:  # beside the axes, never over the points
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="model / cascade",
                      title_fontsize=8, borderaxespad=0.0)
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    return fig
