"""client evaluation (oblix_nb.evaluation): metrics, balanced few-shot examples, offline cascade simulation,
held-out threshold suggestion, the plot; evaluate() end to end on the embedded SmolLM2 (and a cascade into
llama_cpp.server). Metrics are checked against hand-computed values; model runs assert structure only."""
from __future__ import annotations

import enum
import math

import pandas as pd
import pytest

from oblix_nb.evaluation import (
    accuracy,
    evaluate,
    evaluate_frames,
    exact_match,
    few_shot_examples,
    labels_needed,
    macro_f1,
    per_label,
    plot_evaluation,
    simulate_cascade,
    suggest_threshold,
    token_f1,
)

# ---------------------------------------------------------------------------------------------- metrics

def test_accuracy_normalises_case_space_enums_and_counts_missing_as_wrong():
    class L(enum.Enum):
        A = "Doc"

    truth = ["doc", "Python ", L.A, "bug", "bug"]
    pred = ["DOC", "python", "doc", None, float("nan")]
    assert accuracy(truth, pred) == pytest.approx(3 / 5)
    assert exact_match(["New  York"], ["new york"]) == 1.0
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_macro_f1_and_per_label_match_hand_computation():
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    table = per_label(truth, pred)
    # a: P=2/2 R=2/3 ; b: P=1/2 R=1/2 ; c: P=1/2 R=1/1
    assert table.loc["a", "recall"] == pytest.approx(2 / 3) and table.loc["a", "precision"] == 1.0
    assert table.loc["c", "precision"] == pytest.approx(0.5) and table.loc["c", "recall"] == 1.0
    assert list(table["support"]) == [3, 2, 1]
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert macro_f1(truth, pred) == pytest.approx(sum(f1) / 3)
    # a label only ever predicted counts (F1 0), as scikit-learn's macro average does
    assert macro_f1(["a", "a"], ["a", "z"]) == pytest.approx((2 * 1 * 0.5 / 1.5 + 0) / 2)


def test_token_f1():
    assert token_f1(["the cat sat"], ["the cat"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1(["x"], ["y"]) == 0.0 and token_f1([""], [""]) == 1.0 and token_f1(["A b"], ["b a"]) == 1.0


def test_labels_needed():
    assert labels_needed(0.9, 0.05) == math.ceil(1.96 ** 2 * 0.09 / 0.0025)
    assert labels_needed(0.5, 0.1) == math.ceil(1.96 ** 2 * 0.25 / 0.01)
    assert labels_needed(1.0) >= 1


# ---------------------------------------------------------------------------------------------- few-shot

def test_few_shot_examples_balanced_by_label_and_reproducible():
    ex = pd.DataFrame({"text": [f"t{i}" for i in range(12)], "y": ["a"] * 8 + ["b"] * 3 + ["c"]})
    for k, want in [(4, {"a": 2, "b": 1, "c": 1}), (6, {"a": 3, "b": 2, "c": 1}), (9, {"a": 5, "b": 3, "c": 1}), (3, {"a": 1, "b": 1, "c": 1}),
                    (2, {"a": 1, "b": 1})]:
        shots = few_shot_examples(ex, "y", k, seed=1)
        assert len(shots) == k and shots["y"].value_counts().to_dict() == want
    assert few_shot_examples(ex, "y", 5, seed=3).index.tolist() == few_shot_examples(ex, "y", 5, seed=3).index.tolist()
    assert len(few_shot_examples(ex, "y", 50)) == 12
    with pytest.raises(ValueError, match="truth column"):
        few_shot_examples(ex, "label", 2)
    with pytest.raises(ValueError, match="positive integer"):
        few_shot_examples(ex, "y", 0)
    with pytest.raises(TypeError):
        few_shot_examples([{"y": "a"}], "y", 1)


# ---------------------------------------------------------------------------------------------- cascades

def _answers(pred, conf, cost=0.0, latency=1.0, error=None):
    n = len(pred)
    return {"pred": pred, "confidence": conf, "error": [error] * n if not isinstance(error, list) else error,
            "cost": [cost] * n, "latency": [latency] * n}


def test_simulate_cascade_escalates_low_nan_and_failed_rows():
    first = _answers(["a", "b", "a", None], [0.9, 0.4, float("nan"), 0.99], cost=0.0, latency=0.1,
                     error=[None, None, None, "ModelCallError: x"])
    second = _answers(["x", "y", "z", "w"], [0.5] * 4, cost=0.01, latency=1.0)
    sim = simulate_cascade([first, second], 0.5)
    assert sim["pred"] == ["a", "y", "z", "w"] and sim["escalated"] == [False, True, True, True]
    assert sim["cost"] == pytest.approx([0.0, 0.01, 0.01, 0.01]) and sim["latency"] == pytest.approx([0.1, 1.1, 1.1, 1.1])
    assert simulate_cascade([first, second], 0.0)["pred"][:2] == ["a", "b"]
    third = _answers(["p", "q", "r", "s"], [1.0] * 4)
    sim3 = simulate_cascade([first, second, third], 0.6)  # second's 0.5 < 0.6: everything escalated reaches third
    assert sim3["pred"] == ["a", "q", "r", "s"] and sim3["stage"] == [0, 2, 2, 2]


def test_suggest_threshold_on_a_held_out_split():
    n = 40
    truth = ["a"] * n
    conf = [i / n for i in range(n)]
    first = _answers(["a" if c >= 0.5 else "b" for c in conf], conf)  # right exactly when confident
    second = _answers(["a"] * n, [1.0] * n, cost=0.01)
    s = suggest_threshold(truth, [first, second], 1.0, candidates=[0.25, 0.75], holdout=0.5, seed=0)
    assert s["threshold"] == 0.5 and s["calibration_accuracy"] == 1.0  # the lowest threshold that is always right
    assert s["n_calibration"] == 20 and s["n_heldout"] == 20 and s["meets_target"]
    assert s["heldout_accuracy"] == 1.0 and s["heldout_escalated_share"] == 0.5
    s = suggest_threshold(truth, [first, second], 0.95, holdout=0.5, seed=0)
    assert s["threshold"] < 0.5 and s["calibration_accuracy"] >= 0.95  # one calibration error is allowed
    assert s["meets_target"] == (s["heldout_accuracy"] >= 0.95) and s["heldout_escalated_share"] < 0.5
    assert s["labels_needed"] == labels_needed(0.95)
    bad = _answers(["b"] * n, [0.9] * n)
    s = suggest_threshold(truth, [first, bad], 0.99)
    assert s["threshold"] is None and "reason" in s and s["best_calibration_accuracy"] < 0.99
    with pytest.raises(ValueError):
        suggest_threshold(truth, [first, second], 1.5)


def _frame(pred, conf, cost, latency, field="label", **extra):
    n = len(pred)
    return pd.DataFrame({field: pred, "confidence": conf, "cost_usd": [cost] * n, "latency_s": [latency] * n,
                         "error": [None] * n, "cached": [False] * n, **extra})


def test_evaluate_frames_rows_per_model_and_threshold():
    truth = ["a", "b", "a", "b"]
    local = _frame(["a", "b", "b", "a"], [0.9, 0.8, 0.3, 0.2], 0.0, 0.1)
    cloud = _frame(["a", "b", "a", "b"], [0.99] * 4, 0.002, 1.0)
    df = evaluate_frames(truth, [{"model": "local", "frame": local, "wall_s": 0.4},
                                 {"model": "cloud", "frame": cloud, "wall_s": 4.0}],
                         field="label", cascade=["local", "cloud"], thresholds=[0.5, 0.95, 0.1],
                         target_accuracy=0.9, holdout=0.5)
    assert list(df["model"]) == ["local", "cloud"] + ["local -> cloud"] * 3
    assert df["threshold"].iloc[2:].tolist() == [0.1, 0.5, 0.95] and df["threshold"].iloc[:2].isna().all()
    row = df.iloc[3]  # t = 0.5: rows 2, 3 escalate
    assert row["accuracy"] == 1.0 and row["escalated_share"] == 0.5 and row["cost_usd"] == pytest.approx(0.004)
    assert row["rows_per_s"] == pytest.approx(1 / (1 / 10 + 0.5 * 1.0))
    assert df.iloc[0]["accuracy"] == 0.5 and df.iloc[0]["rows_per_s"] == pytest.approx(10.0)
    assert df.iloc[0]["macro_f1"] == pytest.approx(0.5) and math.isnan(df.iloc[0]["token_f1"])
    assert df.iloc[2]["escalated_share"] == 0.0 and df.iloc[4]["escalated_share"] == 1.0
    assert df.attrs["suggestion"]["n_calibration"] == 2 and "rows" in df.attrs
    # a live cascade's frame (escalated column from map(cascade=...)) plugs into the same table
    live = _frame(["a", "b", "a", "b"], [0.9] * 4, 0.001, 0.5, escalated=[False, False, True, True])
    df = evaluate_frames(truth, [{"model": "local -> cloud (live)", "frame": live}], field="label")
    assert df.iloc[0]["escalated_share"] == 0.5 and math.isnan(df.iloc[0]["rows_per_s"])
    # free text: exact match and token F1
    text = pd.DataFrame({"response": ["the cat", "a dog"]})
    df = evaluate_frames(["the cat", "the dog"], [{"model": "m", "frame": text}], field=None, kind="text")
    assert df.iloc[0]["accuracy"] == 0.5 and df.iloc[0]["token_f1"] == pytest.approx(0.75)
    assert math.isnan(df.iloc[0]["macro_f1"]) and math.isnan(df.iloc[0]["cost_usd"])


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_plot_evaluation_both_themes(theme):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from oblix_nb.plots import THEMES

    truth = ["a", "b", "a", "b"]
    local = _frame(["a", "b", "b", "a"], [0.9, 0.8, 0.3, 0.2], 0.0, 0.1)
    cloud = _frame(["a", "b", "a", "b"], [0.99] * 4, float("nan"), 1.0)
    df = evaluate_frames(truth, [{"model": "local", "frame": local, "wall_s": 1},
                                 {"model": "cloud", "frame": cloud, "wall_s": 1}],
                         field="label", cascade=["local", "cloud"], thresholds=[0.5, 0.9])
    fig = plot_evaluation(df, theme=theme)
    ax = fig.axes[0]
    assert to_hex(fig.get_facecolor()) == THEMES[theme]["figure.facecolor"]
    assert to_hex(ax.xaxis.label.get_color()) == THEMES[theme]["axes.labelcolor"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3 and any("cost unknown" in t for t in labels)
    assert sum(1 for t in ax.texts if t.get_text().startswith("t=")) == 2
    assert "USD" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    with pytest.raises(ValueError, match="theme"):
        plot_evaluation(df, theme="blue")
    with pytest.raises(ValueError):
        plot_evaluation(pd.DataFrame({"x": [1]}))


# ---------------------------------------------------------------------------------------------- evaluate()

LABELLED = pd.DataFrame({"text": ["I love it, wonderful!", "Terrible, I hate it.", "Best purchase ever.",
                                  "Awful and broken."],
                         "gold": ["positive", "negative", "positive", "negative"]}, index=[10, 11, 12, 13])
EXAMPLES = pd.DataFrame({"text": ["So happy with this.", "Very bad quality.", "Amazing!", "Disappointing."],
                         "gold": ["positive", "negative", "positive", "negative"]})


@pytest.fixture
async def client(tmp_path):
    from oblix_nb import OblixClient

    c = OblixClient(home=tmp_path)
    yield c
    await c.shutdown()


async def test_evaluate_rejects_bad_input_before_any_call(client):
    from oblix_nb.errors import NoModelHookedError

    with pytest.raises(ValueError, match="truth"):
        await evaluate(client, LABELLED, "{text}", truth="label", schema="label positive|negative")
    with pytest.raises(TypeError):
        await evaluate(client, LABELLED.to_dict("records"), "{text}", truth="gold")
    with pytest.raises(ValueError, match="method"):
        await evaluate(client, LABELLED, "{text}", truth="gold", schema="gold positive|negative", method="vote")
    with pytest.raises(ValueError, match="enum"):
        await evaluate(client, LABELLED, "{text}", truth="gold", method="score")
    with pytest.raises(ValueError, match="thresholds"):
        await evaluate(client, LABELLED, "{text}", truth="gold", schema="gold positive|negative", thresholds=[2])
    with pytest.raises(NoModelHookedError):
        await evaluate(client, LABELLED, "{text}", truth="gold", schema="gold positive|negative")
    with pytest.raises(ValueError, match="no rows"):
        await evaluate(client, LABELLED.iloc[:0], "{text}", truth="gold")


@pytest.mark.slow
async def test_evaluate_embedded_generate_vs_score_with_and_without_examples(client):
    from oblix_nb import ModelType

    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    df = await evaluate(client, LABELLED, "Sentiment of: {text}", truth="gold", schema="gold positive|negative",
                        method=["generate", "score"], examples=EXAMPLES, k=2, max_tokens=16)
    assert len(df) == 4 and set(zip(df["method"], df["shots"])) == {("generate", 0), ("generate", 2),
                                                                     ("score", 0), ("score", 2)}
    assert (df["n"] == 4).all() and df["accuracy"].between(0, 1).all() and df["macro_f1"].between(0, 1).all()
    assert (df["coverage"] == 1.0).all() and (df["escalated_share"] == 0).all()
    assert (df["cost_estimate_usd"] == 0).all()  # a local model costs 0
    assert df["mean_confidence"].between(0, 1).all() and (df["latency_p50_s"] > 0).all()
    rows = df.attrs["rows"]
    gen, score = rows["llamacpp:smollm2-135m|generate|0"], rows["llamacpp:smollm2-135m|score|0"]
    assert set(gen) | set(score) <= {"positive", "negative"} and len(gen) == len(score) == 4
    again = await evaluate(client, LABELLED, "Sentiment of: {text}", truth="gold", schema="gold positive|negative",
                           max_tokens=16)
    assert again.iloc[0]["cached_share"] == 1.0 and math.isnan(again.iloc[0]["rows_per_s"])
    assert again.iloc[0]["accuracy"] == df[(df["method"] == "generate") & (df["shots"] == 0)].iloc[0]["accuracy"]


@pytest.mark.slow
async def test_evaluate_cascade_into_llama_cpp_server(client, openai_server):
    from oblix_nb import ModelType

    await client.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    await client.hook_model(ModelType.OPENAI, openai_server.model, base_url=openai_server.base_url)
    cloud = f"openai:{openai_server.model}"
    client.set_price(cloud, input=1.0, output=2.0)
    df = await evaluate(client, LABELLED, "Sentiment of: {text}", truth="gold", schema="gold positive|negative",
                        cascade=["llamacpp:smollm2-135m", cloud], thresholds=[0.0, 0.7, 1.0], max_tokens=16,
                        target_accuracy=0.5)
    assert list(df["threshold"].iloc[2:]) == [0.0, 0.7, 1.0]
    cascade = df.iloc[2:]
    assert cascade.iloc[0]["escalated_share"] == 0.0 and cascade.iloc[2]["escalated_share"] == 1.0
    assert cascade["escalated_share"].is_monotonic_increasing and cascade["cost_usd"].is_monotonic_increasing
    assert cascade.iloc[2]["accuracy"] == df.iloc[1]["accuracy"]  # everything escalated = the second model
    assert cascade.iloc[0]["accuracy"] == df.iloc[0]["accuracy"]
    assert df.iloc[1]["cost_usd"] > 0 and df.iloc[0]["cost_usd"] == 0
    s = df.attrs["suggestion"]
    assert s["n_calibration"] + s["n_heldout"] == 4 and s["labels_needed"] > 0
