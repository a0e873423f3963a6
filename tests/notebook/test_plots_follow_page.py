"""Issue 21 item 6: the dashboard's figures follow the page's theme, and every series reads against its background.

Each figure is drawn in both themes; displayed in a notebook it is one output holding both PNGs and a style that
shows the page's own (JupyterLab / Notebook 7 say it on <body>, other pages by prefers-color-scheme or .dark).
The browser tests (tests/widgets/test_browser_keys.py) check which rendering the page really shows."""
from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.colors import to_rgb
from sessions.test_stats import SHAPES, generate, load

from oblix_nb import (
    OblixClient,
    plots,
)


def contrast(a, b) -> float:
    def lum(c):
        f = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in to_rgb(c)]
        return 0.2126 * f[0] + 0.7152 * f[1] + 0.0722 * f[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture
def client(tmp_home):
    c = OblixClient(home=tmp_home)
    yield c
    c.sessions.close()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_series_colour_is_3_to_1_on_its_background(theme):
    background = plots.THEMES[theme]["axes.facecolor"]
    colours = (plots.PALETTES[theme] + [plots.OTHER_COLOURS[theme]]
               + list(plots.ROUTE_COLOURS_BY_THEME[theme].values()))
    low = {c: round(contrast(c, background), 2) for c in colours if contrast(c, background) < 3}
    assert not low, f"{theme}: series below 3:1 on {background}: {low}"
    assert len(plots.PALETTES["light"]) == len(plots.PALETTES["dark"])


def _series_colours(fig) -> set:
    """The opaque colours of what is drawn as data: lines (where a line is drawn), markers, bars, box edges and
    scatter dots (translucent fills, e.g. the inside of a box, are left out)."""
    from matplotlib.lines import Line2D

    colours = []
    for ax in fig.axes:
        for artist in ax.lines:
            if isinstance(artist, Line2D):
                if artist.get_linestyle() not in ("None", "none", "", " "):
                    colours.append(artist.get_color())
                if artist.get_marker() not in (None, "None", "none", "", " "):
                    colours += [artist.get_markerfacecolor(), artist.get_markeredgecolor()]
        for artist in ax.patches:
            colours.append(artist.get_facecolor())
            if artist.get_linewidth() > 0:
                colours.append(artist.get_edgecolor())
        for artist in ax.collections:
            colours += list(artist.get_facecolor()) + list(artist.get_edgecolor())
    out = set()
    for colour in colours:
        rgba = matplotlib.colors.to_rgba(colour)
        if rgba[3] >= 0.99:
            out.add(matplotlib.colors.to_hex(rgba))
    return out


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_drawn_series_are_3_to_1_in_both_renderings(client, theme):
    sessions, _ = generate(5, **SHAPES["few models"])
    load(client, sessions)
    dashboard = client.plot_stats(theme=theme)
    try:
        assert len(dashboard.alternates) == 4
        other = "dark" if theme == "light" else "light"
        for figures, name in ((dashboard.figures, theme), (dashboard.alternates, other)):
            background = plots.THEMES[name]["axes.facecolor"]
            grid_and_frame = {matplotlib.colors.to_hex(plots.THEMES[name][k]) for k in
                              ("grid.color", "axes.edgecolor", "axes.facecolor", "figure.facecolor", "text.color")}
            for key, fig in figures.items():
                assert matplotlib.colors.to_hex(fig.get_facecolor()) == background
                series = _series_colours(fig) - grid_and_frame
                low = {c: round(contrast(c, background), 2) for c in series if contrast(c, background) < 3}
                assert not low, f"{name} {key}: series below 3:1: {low}"
    finally:
        dashboard.close()


def test_notebook_display_holds_both_renderings_and_follows_the_page(client):
    sessions, _ = generate(3, **SHAPES["few models"])
    load(client, sessions)
    dashboard = client.plot_stats()  # default: light where the page does not say, following the page
    try:
        fig = dashboard["routes"]
        bundle = fig._ipython_display_.bundle()
        html = bundle["text/html"]
        images = re.findall(r'<img class="oblix-plot-(light|dark)"[^>]*src="data:image/png;base64,([^"]+)"', html)
        assert [name for name, _ in images] == ["light", "dark"]
        for _, data in images:
            assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
        assert images[0][1] != images[1][1]
        # the page decides: JupyterLab's body attribute, then prefers-color-scheme / .dark
        assert "body[data-jp-theme-light=false]" in html and "body[data-jp-theme-light=true]" in html
        assert "prefers-color-scheme: dark" in html and ".dark " in html
        assert bundle["image/png"] == base64.b64decode(images[0][1])  # PNG-only frontends: the light one
        assert "light and dark" in bundle["text/plain"]
    finally:
        dashboard.close()


def test_display_goes_through_ipython_and_alternates_are_not_pyplots(client):
    """display(fig) (what %oblix_stats and the inline backend do) publishes the two-theme bundle; the other
    theme's figures are not pyplot's, so the inline backend never shows them on their own."""
    import matplotlib.pyplot as plt
    from IPython.core.formatters import DisplayFormatter

    plt.close("all")
    dashboard = client.plot_stats(theme="dark")
    try:
        assert sorted(plt.get_fignums()) == sorted(f.number for f in dashboard.figures.values())
        assert all(getattr(f, "number", None) not in plt.get_fignums() for f in dashboard.alternates.values())
        published = []
        import IPython.display

        original = IPython.display.publish_display_data
        IPython.display.publish_display_data = lambda data, **kw: published.append(data)
        try:
            handled = DisplayFormatter().ipython_display_formatter(dashboard["ttft_by_model"])
        finally:
            IPython.display.publish_display_data = original
        assert handled and len(published) == 1 and "oblix-plot-dark" in published[0]["text/html"]
    finally:
        dashboard.close()
    assert plt.get_fignums() == []


def test_follow_page_false_draws_one_theme_only(client):
    dashboard = client.plot_stats(theme="dark", follow_page=False)
    try:
        assert dashboard.alternates == {}
        assert not hasattr(dashboard["routes"], "_ipython_display_")
    finally:
        dashboard.close()
