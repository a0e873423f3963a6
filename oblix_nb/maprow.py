"""One row of a ``map()``: its stage(s) -- one model, or a cascade's models in turn -- each called (streamed
internally, so the time to first token is real), validated (one retry), scored for confidence, and the row's
exchanges stored in one transaction (the kept answer last). Also the helpers that go with it: the result of a
row (:class:`RowOutcome`), the batch key's parameter normalisation and the misspelled-field check.

Split from :mod:`oblix_nb.batch` (which drives rows, caches and builds the frame); :class:`MapJob` is ``job``.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from ._util import describe_error
from .cascade import CASCADE_COLUMNS, attempt_cost, confident, reply_confidence
from .errors import (
    BudgetExceededError,
    ModelCallError,
    NoModelHookedError,
    OblixError,
    StorageError,
    StructuredOutputError,
)
from .execution import Request, retry_prompt

_BRACES = re.compile(r"\{\{([^{}]+)\}\}|\{([^{}]+)\}")  # {{escaped}} | {name}


def closest_field(name: str, fields: list[str]) -> str | None:
    """The input field ``{name}`` most likely meant (a misspelling or a case slip), or None if none is close."""
    if name in fields:
        return None
    lowered = {f.lower(): f for f in fields}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.8)
    if match:
        return lowered[match[0]]
    if len(name) >= 3:  # one slip in a short name: a typo, a transposition ({nmae} for {name})
        near = [f for low, f in lowered.items() if len(low) >= 3 and _edits(name.lower(), low) <= 1]
        if near:
            return near[0]
    return None


def _edits(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    if abs(len(a) - len(b)) > 1:
        return 2
    prev2: list[int] = []  # the row before prev (read from i = 2 on)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _check_misspelled(text: str, fields: list[str]) -> None:
    """ValueError for a ``{name}`` that is no field but close to one (``{descripton}`` beside a
    ``description`` column): it would be sent literally. Raised before any call, naming the closest column."""
    for m in _BRACES.finditer(text):
        name = m.group(2)
        if name is None or not name.strip().isidentifier():
            continue
        near = closest_field(name.strip(), fields)
        if near is not None and name != near:
            raise ValueError(f"template field {{{name}}} is not a column of the input; did you mean "
                             f"{{{near}}}? (write {{{{{name}}}}} for a literal {{{name}}})")


def _json_label(label: Any) -> Any:
    """An index label as JSON data (tuples of a MultiIndex as lists, timestamps as ISO text)."""
    if isinstance(label, float) and not math.isfinite(label):
        return repr(float(label))  # "nan", "inf", "-inf": JSON has no such numbers (the store refuses them)
    if isinstance(label, str):
        return _valid_text(label)
    if isinstance(label, (int, float, bool)) or label is None:
        return label
    if isinstance(label, tuple):
        return [_json_label(x) for x in label]
    item = getattr(label, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _json_label(item())
        except (TypeError, ValueError):
            pass
    isoformat = getattr(label, "isoformat", None)
    try:
        text = isoformat() if callable(isoformat) else str(label)
    except Exception:  # noqa: BLE001 - a label that cannot say what it is (NaT-like, broken __str__)
        text = repr(label)
    return _valid_text(text) if isinstance(text, str) else _valid_text(repr(label))


def _valid_text(text: str) -> str:
    """``text`` with each lone surrogate (no UTF-8 form: the store refuses it) written as its escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _invalid_text(text: str) -> str | None:
    """None if ``text`` can be sent and stored, else what is wrong with it (a lone surrogate, where)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return f"a lone surrogate {text[exc.start]!r} at index {exc.start} (text must be valid Unicode)"


# ---------------------------------------------------------------------------------------------------- the job

@dataclass
class RowOutcome:
    value: Any               # the reply text, or the parsed (plain) value with a schema; None on error
    model_id: str | None
    route: str | None
    input_tokens: int | None
    output_tokens: int | None
    latency_s: float | None
    error: str | None
    cached: bool
    attempts: int | None = None   # model calls the row took (a retry after an invalid reply counts)
    extra: dict | None = None     # confidence / cascade columns


@dataclass
class _Stage:
    """One model's part in a row (one stage of a cascade, or the row's only call with its retry)."""
    model_id: str | None
    value: Any = None
    response: dict | None = None   # the last reply (None: no reply at all)
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency: float = 0.0
    attempts: int = 0
    cost: float | None = None
    confidence: dict | None = None
    messages: list = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.messages = []

    def summary(self) -> dict:
        conf = {k: (None if v is None or math.isnan(v) else float(v)) for k, v in (self.confidence or {}).items()}
        return {"model_id": self.model_id, "cost_usd": self.cost, "confidence": conf or None, "error": self.error,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "latency_s": round(self.latency, 4), "attempts": self.attempts}


def _norm_param(value: Any) -> Any:
    """A sampling parameter as the batch key holds it: numbers as floats (``0`` and ``0.0`` are one key), a
    tuple as a list, a single stop string as a one-item list."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):  # numpy scalars
        try:
            return _norm_param(item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [_norm_param(v) for v in value]
    return value


def _json_extra(extra: dict) -> dict:
    """The confidence / cascade values of a row as JSON data (NaN as None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in extra.items()}


def _restore_extra(stored: dict, conf_columns: list, cascade: bool) -> dict:
    out = {c: (float("nan") if stored.get(c) is None else stored.get(c)) for c in conf_columns}
    if cascade:
        out.update({k: stored.get(k) for k in CASCADE_COLUMNS})
    return out


async def run_row(job: Any, key: str) -> RowOutcome:
    """One row: its stage(s) -- the model (routed or forced), or the cascade's models in turn until one is
    confident enough -- each called, validated (one retry) and scored; then every exchange of the row is
    stored in one transaction, the kept answer last (so it is the row's last stored reply)."""
    prompt = job.prompts.pop(key)
    stages = job.cascade or [job.model_id]
    done: list[_Stage] = []
    kept: _Stage | None = None
    note: str | None = None
    for i, model_id in enumerate(stages):
        stage = await stage_answer(job, key, prompt, model_id)
        done.append(stage)
        if stage.response is None:  # not called (over budget) or no reply (the call failed)
            if kept is not None:
                note = f"not escalated to {model_id}: {stage.error}"
                break
            continue
        if stage.error is None:
            kept = stage
            if job.cascade is None or i == len(stages) - 1:
                break
            assert stage.confidence is not None, "a cascade scores every valid reply (with_confidence is set)"
            if confident(stage.confidence, job.min_confidence):
                break
        elif kept is not None and i == len(stages) - 1:
            note = f"{model_id}'s reply was invalid: kept {kept.model_id}'s answer"
    last = kept or done[-1]
    input_tokens = sum(s.input_tokens for s in done)
    output_tokens = sum(s.output_tokens for s in done)
    latency = sum(s.latency for s in done)
    attempts = sum(s.attempts for s in done)
    extra: dict = {}
    if job.with_confidence:
        extra.update({c: (last.confidence or {}).get(c) for c in job.conf_columns})
    if job.cascade:
        costs = [s.cost for s in done]
        known = [c for c in costs if c is not None]
        extra.update({"escalated": last.model_id != stages[0] if kept is not None else len(done) > 1,
                      "cascade_note": note, "cost_usd": float(sum(known)) if known else None,
                      "attempt_costs": [s.summary() for s in done]})
    # The row's messages: every stage in order, the kept stage last; its reply carries the row's totals.
    to_store: list[dict] = []
    for s in [s for s in done if s is not kept] + ([kept] if kept is not None else []):
        if s is last and s.messages:
            reply = s.messages[-1]
            reply["metrics"]["map"].update({"latency_s": latency, "input_tokens": input_tokens,
                                            "output_tokens": output_tokens, "attempts": attempts,
                                            "extra": _json_extra(extra)})
        elif s.messages and kept is not None and job.cascade:
            s.messages[-1]["metrics"]["map"]["escalating"] = True  # not the row's answer
        to_store += s.messages
    error = None if kept is not None else last.error
    route = last.response["routing_decision"]["target"] if last.response is not None else None
    model_id = last.response["model_id"] if last.response is not None else None
    value = kept.value if kept is not None else None
    if to_store:
        try:
            job.client.sessions.append_messages(job.session_id, to_store)
        except (OSError, StorageError, OblixError, TypeError, ValueError) as exc:
            # The reply is not dropped: it stays in the result; the error says it is not in the store
            # (so the next call will ask the model again).
            error = "; ".join(e for e in (error, f"reply not stored: {describe_error(exc)}") if e)
            return RowOutcome(value, model_id, route, input_tokens, output_tokens, latency, error, False,
                              attempts, extra)
    if last.response is None:
        return RowOutcome(None, None, None, input_tokens or None, output_tokens or None, latency or None,
                          error, False, attempts, extra)
    return RowOutcome(value, model_id, route, input_tokens, output_tokens, latency, error, False, attempts,
                      extra)


async def stage_answer(job: Any, key: str, prompt: str, model_id: str | None) -> _Stage:
    """One model's answer to the row (routed when ``model_id`` is None): the call, streamed internally (so
    time to first token is real), an invalid structured reply retried once, the answer's confidence."""
    single = job.cascade is None
    stage = _Stage(model_id)
    request = Request(prompt=prompt, params=job.params, request_id=key, session_id=None, model_id=model_id,
                      system=job.system, schema=job.schema, fallback=single, usage_session_id=job.session_id)
    for attempt in (1, 2):
        try:
            # session_id=None (no history) and store_reply=False: the row's exchange is stored by _row.
            response = await job.engine.run(request, store_reply=False, stream=True)
        except (ModelCallError, NoModelHookedError, BudgetExceededError) as exc:
            stage.error = f"{type(exc).__name__}: {exc}"
            break
        stage.attempts += 1
        stage.response = response
        stage.model_id = response["model_id"]
        metrics = response["metrics"]
        stage.input_tokens += metrics.get("input_tokens") or 0
        stage.output_tokens += metrics.get("output_tokens") or 0
        stage.latency += metrics.get("total_latency") or 0.0
        ttft, total = metrics.get("time_to_first_token"), metrics.get("total_latency")
        if ttft is not None and total and metrics.get("output_tokens") and total > ttft:
            job.decode_tokens += metrics["output_tokens"]  # the progress bar's decoding rate
            job.decode_s += total - ttft
        cost = attempt_cost(response)
        stage.cost = None if cost is None and stage.cost is None else (stage.cost or 0.0) + (cost or 0.0)
        text = response["response"]
        stage.error = None
        invalid = None
        if job.schema is None:
            stage.value = text
        else:
            try:
                stage.value = job.schema.as_plain(job.schema.parse(text))
            except StructuredOutputError as exc:
                stage.error, invalid = f"StructuredOutputError: {exc}", exc
        if attempt == 1:
            if job.system and not job._system_stored:
                # What the model saw is stored: the map's system message (system=, the schema's instruction),
                # once per batch session, tagged with the batch so that it binds no other request.
                job._system_stored = True
                stage.messages.append({"role": "system", "content": job.system,
                                       "request_id": "map-" + job.batch_key[:40]})
            stage.messages.append({"role": "user", "content": request.prompt, "request_id": key})
        else:
            stage.messages.append({"role": "user", "content": request.prompt, "request_id": key})
        stage.messages.append(stored_reply(job, key, response, attempt, stage.error, stage.latency,
                                                 stage.input_tokens, stage.output_tokens))
        if stage.error is None or job.schema is None or attempt == 2:
            break
        assert invalid is not None, "stage.error is set here only with the StructuredOutputError"
        request = Request(prompt=retry_prompt(invalid), params=job.params, request_id=key, session_id=None,
                          model_id=model_id, system=job.system, schema=job.schema, fallback=single,
                          prior=[{"role": "user", "content": prompt}, {"role": "assistant", "content": text}],
                          usage_session_id=job.session_id)
    if stage.error is None and stage.response is not None and job.with_confidence:
        last = job.cascade is None or model_id == job.cascade[-1]
        stage.confidence = await reply_confidence(job.client, request, stage.response, job.schema,
                                                  regenerate=not last)
    return stage


def stored_reply(job: Any, key: str, response: dict, attempt: int, error: str | None, latency: float,
                  input_tokens: int, output_tokens: int) -> dict:
    positions = job.pending.get(key) or []
    first = positions[0] if positions else None
    metrics = dict(response["metrics"])
    metrics["map"] = {"row": first, "index": _json_label(job._labels[first]) if first is not None else None,
                      "attempt": attempt, "attempts": attempt, "error": error, "latency_s": latency,
                      "input_tokens": input_tokens, "output_tokens": output_tokens}
    return {"role": "assistant", "content": response["response"], "request_id": key,
            "model_id": response["model_id"], "metrics": metrics, "routing": response["routing_decision"]}

