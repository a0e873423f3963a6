"""client.plot_stats(): the figures exist, are titled, labelled with units, every colour has a legend entry,
no tick labels overlap (measured with their window extents), nothing is cut off, and both themes read."""
from __future__ import annotations

import itertools
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from sessions.test_stats import SHAPES, generate, load  # noqa: E402

from oblix_nb import OblixClient  # noqa: E402
from oblix_nb.plots import THEMES, wrap  # noqa: E402

FIGURES = ["ttft_by_model", "ttft_vs_input", "tokens_and_cost", "routes"]
UNITS = ("(s)", "(USD)", "tokens", "(UTC)", "requests", "(%", "model")


@pytest.fixture
def client(tmp_home):
    c = OblixClient(home=tmp_home)
    yield c
    c.sessions.close()


def overlaps(a, b, tolerance: float = 0.5) -> bool:
    return (a.x0 + tolerance < b.x1 and b.x0 + tolerance < a.x1 and
            a.y0 + tolerance < b.y1 and b.y0 + tolerance < a.y1)


def visible_tick_labels(axis, renderer):
    """(text, window extent) of the tick labels matplotlib draws: ticks inside the view interval only."""
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        if not lo <= tick.get_loc() <= hi:
            continue
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text().strip():
                box = label.get_window_extent(renderer)
                if box.width > 0:
                    labels.append((label.get_text(), box))
    return labels


def luminance(colour) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def check_figure(name, fig, theme):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes, name
    titles = [ax.get_title() for ax in axes if ax.get_title()]
    assert titles, f"{name}: no title"
    has_data = not any(t.get_text().startswith("no ") for ax in axes for t in ax.texts)
    texts = []
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = visible_tick_labels(axis, renderer)
            for (t1, b1), (t2, b2) in itertools.combinations(labels, 2):
                assert not overlaps(b1, b2), f"{name}: tick labels {t1!r} and {t2!r} overlap"
            texts += labels
        if has_data:
            # every axis that shows values says what they are and in what unit
            if ax.get_xaxis().get_visible() and ax.get_xticklabels() and any(
                    t.get_text() for t in ax.get_xticklabels()) and ax.get_xlabel():
                assert any(u in ax.get_xlabel() for u in UNITS), f"{name}: x label {ax.get_xlabel()!r} has no unit"
            if ax.get_ylabel():
                assert any(u in ax.get_ylabel() for u in UNITS), f"{name}: y label {ax.get_ylabel()!r} has no unit"
    if has_data:
        labelled = [ax for ax in axes if ax.get_ylabel()]
        assert labelled, f"{name}: no y label"
        assert any(ax.get_xlabel() for ax in axes), f"{name}: no x label"
        legends = fig.legends + [ax.get_legend() for ax in axes if ax.get_legend()]
        assert legends, f"{name}: no legend"
        entries = [t.get_text() for legend in legends for t in legend.get_texts()]
        assert entries and all(entries), name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1, f"{name}: legend cut off"
            assert figure_box.y0 - 1 <= box.y0 and box.y1 <= figure_box.y1 + 1, f"{name}: legend cut off"
            for ax in axes:
                assert not overlaps(box, ax.get_window_extent(renderer), 1.0), f"{name}: legend covers the plot"
            for text, tick_box in texts:
                assert not overlaps(box, tick_box), f"{name}: legend covers tick label {text!r}"
        # every colour drawn as bars or lines is in a legend
        legend_colours = set()
        for legend in legends:
            for handle in legend.legend_handles:
                for getter in ("get_facecolor", "get_color"):
                    if hasattr(handle, getter):
                        colour = getter == "get_color" and handle.get_color() or handle.get_facecolor()
                        legend_colours.add(tuple(round(c, 3) for c in to_rgb(colour)))
        for ax in axes:
            for patch in ax.patches:
                if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() > 0 \
                        and patch.get_width() > 0:
                    colour = tuple(round(c, 3) for c in to_rgb(patch.get_facecolor()))
                    assert colour in legend_colours, f"{name}: bar colour {colour} has no legend entry"
            for line in ax.lines:
                if line.get_label() and not line.get_label().startswith("_") and len(line.get_xdata()):
                    colour = tuple(round(c, 3) for c in to_rgb(line.get_color()))
                    assert colour in legend_colours, f"{name}: line colour {colour} has no legend entry"
    # nothing drawn outside the figure
    for text, box in texts:
        assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1, f"{name}: {text!r} cut off"
        assert box.y0 >= figure_box.y0 - 1 and box.y1 <= figure_box.y1 + 1, f"{name}: {text!r} cut off"
    # the theme's colours are set explicitly and contrast
    face = fig.get_facecolor()
    assert to_rgb(face) == to_rgb(THEMES[theme]["figure.facecolor"])
    for ax in axes:
        for text in [ax.title, ax.xaxis.label, ax.yaxis.label]:
            if text.get_text():
                assert abs(luminance(text.get_color()) - luminance(face)) > 0.5, f"{name}: low contrast"


@pytest.mark.parametrize("shape, theme", [("few models", "light"), ("many models, long ids, empty days", "light"),
                                          ("many models, long ids, empty days", "dark"), ("one reply", "dark")])
def test_dashboard_figures_are_readable(client, shape, theme):
    sessions, _ = generate(21, **SHAPES[shape])
    load(client, sessions)
    dashboard = client.plot_stats(theme=theme)
    try:
        assert list(dashboard.figures) == FIGURES
        for name, fig in dashboard.figures.items():
            check_figure(name, fig, theme)
        if shape.startswith("many"):
            legend = dashboard["tokens_and_cost"].legends[0]
            entries = [t.get_text() for t in legend.get_texts()]
            assert len(entries) == 10 and entries[0] == "other (17 models)"  # 26 models: 9 + other, on top
            assert all(max(len(line) for line in e.split("\n")) <= 40 for e in entries)
            # long ids wrap on the box plot's axis, none is cut
            ticks = [t.get_text() for t in dashboard["ttft_by_model"].axes[0].get_yticklabels()]
            assert any("\n" in t for t in ticks)
    finally:
        dashboard.close()


def test_empty_store_and_window_without_data(client):
    for kwargs in ({}, {"since": "2001-01-01", "until": "2001-01-03"}):
        dashboard = client.plot_stats(**kwargs)
        try:
            assert list(dashboard.figures) == FIGURES
            for name, fig in dashboard.figures.items():
                check_figure(name, fig, "light")
        finally:
            dashboard.close()
    with pytest.raises(ValueError, match="theme"):
        client.plot_stats(theme="solarized")


def test_log_axes_when_the_data_spans_decades(client):
    sid = client.sessions.create()
    client.sessions.append_messages(sid, [
        {"role": "assistant", "content": "a", "model_id": "m",
         "metrics": {"time_to_first_token": 0.01 * 1.5 ** i, "input_tokens": 2 ** i}} for i in range(20)])
    dashboard = client.plot_stats()
    try:
        ax = dashboard["ttft_vs_input"].axes[0]
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "log" in ax.get_xlabel()
        assert dashboard["ttft_by_model"].axes[0].get_xscale() == "log"
    finally:
        dashboard.close()


def test_linear_axes_when_the_data_does_not_span_decades(client):
    sid = client.sessions.create()
    client.sessions.append_messages(sid, [
        {"role": "assistant", "content": "a", "model_id": "m",
         "metrics": {"time_to_first_token": 0.2 + 0.01 * i, "input_tokens": 100 + 10 * i}} for i in range(20)])
    dashboard = client.plot_stats()
    try:
        ax = dashboard["ttft_vs_input"].axes[0]
        assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
        assert "log" not in ax.get_xlabel()
    finally:
        dashboard.close()


def test_wrap_keeps_every_character():
    for text in ["openai:org-3/a-rather-long-fine-tuned-model-identifier-v3.21-instruct", "x" * 90,
                 "llamacpp:smollm2-135m", "a:b"]:
        wrapped = wrap(text, 20)
        assert wrapped.replace("\n", "") == text
        assert max(len(line) for line in wrapped.split("\n")) <= 20


def test_matplotlib_is_imported_only_when_plotting(tmp_home):
    code = ("import sys; from oblix_nb import OblixClient; c = OblixClient(home=sys.argv[1]); "
            "import pandas; c.stats(); assert 'matplotlib' not in sys.modules, 'stats imported matplotlib'; "
            "c.plot_stats(); assert 'matplotlib' in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_home)], check=True, timeout=120,
                   env={**__import__("os").environ, "MPLBACKEND": "Agg"})
