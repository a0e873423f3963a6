"""Evaluation metrics and the offline parts of :mod:`oblix_nb.evaluation`: accuracy, macro-F1, exact match and
token F1, per-label precision/recall, few-shot example selection balanced by label, cascade simulation and the
held-out threshold suggestion. Pure functions over lists (pandas only where a frame is returned); no model calls.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

NAN = float("nan")

# ---------------------------------------------------------------------------------------------- metrics

def _norm(value: Any) -> str | None:
    """A label or answer as compared: text, stripped, case-folded; None for missing values."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    value = getattr(value, "value", value)  # Enum members
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return " ".join(str(value).split()).casefold()


def accuracy(truth: Sequence, pred: Sequence) -> float:
    """Share of positions where ``pred`` equals ``truth`` (normalised; a missing answer is wrong). NaN if empty."""
    pairs = list(zip(truth, pred, strict=True))
    if not pairs:
        return NAN
    return sum(1 for t, p in pairs if _norm(p) is not None and _norm(t) == _norm(p)) / len(pairs)


def per_label(truth: Sequence, pred: Sequence) -> Any:
    """Precision, recall, F1 and support per label (a DataFrame indexed by label, in order of support)."""
    import pandas as pd

    t = [_norm(x) for x in truth]
    p = [_norm(x) for x in pred]
    labels = [lab for lab, _ in Counter(x for x in t if x is not None).most_common()]
    labels += sorted({x for x in p if x is not None} - set(labels))
    rows = []
    for lab in labels:
        tp = sum(1 for a, b in zip(t, p) if a == lab and b == lab)
        fp = sum(1 for a, b in zip(t, p) if a != lab and b == lab)
        fn = sum(1 for a, b in zip(t, p) if a == lab and b != lab)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        rows.append({"label": lab, "precision": prec, "recall": rec, "f1": f1, "support": tp + fn})
    return pd.DataFrame(rows, columns=["label", "precision", "recall", "f1", "support"]).set_index("label")


def macro_f1(truth: Sequence, pred: Sequence) -> float:
    """F1 averaged over the labels present in ``truth`` or ``pred`` (as scikit-learn's ``average="macro"``)."""
    table = per_label(truth, pred)
    return float(table["f1"].mean()) if len(table) else NAN


def exact_match(truth: Sequence, pred: Sequence) -> float:
    """Share of exact matches after normalising case and whitespace (same as :func:`accuracy`)."""
    return accuracy(truth, pred)


_WORD = re.compile(r"\w+", re.UNICODE)


def _token_f1_one(truth: Any, pred: Any) -> float:
    t = _WORD.findall(_norm(truth) or "")
    p = _WORD.findall(_norm(pred) or "")
    if not t and not p:
        return 1.0
    common = sum((Counter(t) & Counter(p)).values())
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(t)
    return 2 * prec * rec / (prec + rec)


def token_f1(truth: Sequence, pred: Sequence) -> float:
    """Mean token-overlap F1 between answers and truths (words, case-folded). NaN if empty."""
    pairs = list(zip(truth, pred, strict=True))
    return sum(_token_f1_one(t, p) for t, p in pairs) / len(pairs) if pairs else NAN


def labels_needed(accuracy_: float, margin: float = 0.05, z: float = 1.96) -> int:
    """Labelled rows needed to know an accuracy near ``accuracy_`` within ``±margin`` (95% by default; normal
    approximation): ``ceil(z² a (1 - a) / margin²)``."""
    a = min(max(float(accuracy_), 0.0), 1.0)
    return max(1, math.ceil(z * z * max(a * (1 - a), 0.01) / (margin * margin)))


# ---------------------------------------------------------------------------------------------- few-shot

def few_shot_examples(examples: Any, truth: str, k: int = 4, seed: int = 0) -> Any:
    """``k`` rows of the labelled frame ``examples``, balanced by label: labels take turns (most frequent label
    first), each contributing its rows in a seeded random order. Fewer than ``k`` rows if the frame is smaller."""
    import pandas as pd

    if not isinstance(examples, pd.DataFrame):
        raise TypeError(f"examples must be a pandas DataFrame with a {truth!r} column, not {type(examples).__name__}")
    if truth not in examples.columns:
        raise ValueError(f"examples has no truth column {truth!r}; it has {list(examples.columns)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    rng = random.Random(seed)
    groups: dict = defaultdict(list)
    for pos, label in enumerate(examples[truth].tolist()):
        if _norm(label) is not None:
            groups[_norm(label)].append(pos)
    order = sorted(groups, key=lambda lab: (-len(groups[lab]), lab))
    for lab in order:
        rng.shuffle(groups[lab])
    picked: list[int] = []
    while len(picked) < k and any(groups[lab] for lab in order):
        for lab in order:
            if groups[lab] and len(picked) < k:
                picked.append(groups[lab].pop())
    rng.shuffle(picked)  # no label always first or last
    return examples.iloc[picked]


def _answer_text(label: Any, field: str | None, schema: Any) -> str:
    """What an example's answer looks like: the JSON the schema asks for (the field alone), or the text."""
    value = getattr(label, "value", label)
    if schema is None:
        return str(value)
    if field is None:
        return json.dumps(value, ensure_ascii=False)
    return json.dumps({field: value}, ensure_ascii=False)


def few_shot_block(shots: Any, render: Callable[[dict], str], truth: str, field: str | None,
                   schema: Any = None) -> str:
    """The text put before each row's prompt: every example's prompt and its answer."""
    parts = ["Here are solved examples:"]
    for n, row in enumerate(shots.to_dict("records"), 1):
        parts.append(f"Example {n}:\n{render(row)}\nAnswer: {_answer_text(row[truth], field, schema)}")
    parts.append("Now answer this one:")
    return "\n\n".join(parts) + "\n\n"


# ---------------------------------------------------------------------------------------------- cascades

def simulate_cascade(answers: list[dict], threshold: float) -> dict:
    """A cascade over per-model per-row results: ``answers[i]`` = ``{"pred", "confidence", "error", "cost",
    "latency"}`` lists of one model (in cascade order). A row keeps model i's answer when its confidence is at
    least ``threshold`` and it did not fail; else it goes to model i + 1; the last model's answer is final.
    Returns per-row lists ``pred``, ``confidence``, ``escalated`` (bool), ``stage`` (model position), ``cost``,
    ``latency``."""
    n = len(answers[0]["pred"])
    out: dict[str, list] = {"pred": [], "confidence": [], "escalated": [], "stage": [], "cost": [],
                             "cost_estimate": [], "latency": []}

    def num(value: Any) -> float:
        return NAN if value is None else float(value)

    for r in range(n):
        cost = estimate = latency = 0.0
        for i, a in enumerate(answers):
            cost += num(a["cost"][r])
            known = num(a["cost"][r])
            estimate += known if not math.isnan(known) else num((a.get("cost_estimate") or a["cost"])[r])
            latency += num(a["latency"][r])
            conf = a["confidence"][r]
            ok = a["error"][r] is None and a["pred"][r] is not None
            last = i == len(answers) - 1
            if last or (ok and conf is not None and not math.isnan(conf) and conf >= threshold):
                out["pred"].append(a["pred"][r])
                out["confidence"].append(conf)
                out["escalated"].append(i > 0)
                out["stage"].append(i)
                out["cost"].append(cost)
                out["cost_estimate"].append(estimate)
                out["latency"].append(latency)
                break
    return out


def suggest_threshold(truth: Sequence, answers: list[dict], target_accuracy: float, *,
                      candidates: Sequence[float] | None = None, holdout: float = 0.5, seed: int = 0,
                      margin: float = 0.05) -> dict:
    """The lowest cascade threshold (fewest escalations) whose accuracy reaches ``target_accuracy`` on a
    calibration split, checked on a held-out split.

    Rows are split at random (``seed``): ``holdout`` of them held out. Candidates: ``candidates`` plus every
    distinct first-model confidence on the calibration rows. Returns ``threshold`` (None if no candidate reaches
    the target on the calibration rows), ``calibration_accuracy``, ``heldout_accuracy``,
    ``heldout_escalated_share``, ``meets_target`` (on the held-out rows), ``n_calibration``, ``n_heldout``, and
    ``labels_needed``: labelled rows needed to measure the target accuracy within ±``margin`` (95%) -- for each
    split, so about twice that in all.
    """
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], not {target_accuracy!r}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be between 0 and 1, not {holdout!r}")
    n = len(truth)
    positions = list(range(n))
    random.Random(seed).shuffle(positions)
    cut = max(1, min(n - 1, round(n * (1 - holdout)))) if n > 1 else n
    calib, held = sorted(positions[:cut]), sorted(positions[cut:])

    def subset(rows: list[int]) -> list[dict]:
        return [{k: [v[r] for r in rows] for k, v in a.items()} for a in answers]

    truth = list(truth)
    first = answers[0]["confidence"]
    grid = {float(t) for t in (candidates or [])}
    grid |= {float(first[r]) for r in calib if first[r] is not None and not math.isnan(first[r])}
    grid.add(0.0)
    best = None
    for t in sorted(grid):
        sim = simulate_cascade(subset(calib), t)
        acc = accuracy([truth[r] for r in calib], sim["pred"])
        if acc >= target_accuracy:
            best = (t, acc)
            break
    result: dict[str, Any] = {"target_accuracy": target_accuracy, "threshold": None, "calibration_accuracy": None,
              "heldout_accuracy": None, "heldout_escalated_share": None, "meets_target": False,
              "n_calibration": len(calib), "n_heldout": len(held),
              "labels_needed": labels_needed(target_accuracy, margin), "margin": margin}
    if best is None:
        top = simulate_cascade(subset(calib), math.inf)
        result["best_calibration_accuracy"] = accuracy([truth[r] for r in calib], top["pred"])
        result["reason"] = "no threshold reaches the target on the calibration rows, even escalating every row"
        return result
    t, acc = best
    result.update(threshold=t, calibration_accuracy=acc)
    if held:
        sim = simulate_cascade(subset(held), t)
        held_acc = accuracy([truth[r] for r in held], sim["pred"])
        result.update(heldout_accuracy=held_acc, heldout_escalated_share=sum(sim["escalated"]) / len(held),
                      meets_target=held_acc >= target_accuracy)
    return result
