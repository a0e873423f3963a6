"""A dashboard of the session store's requests as matplotlib figures (matplotlib imported only here).

:func:`dashboard` draws four figures from the store's stats tables (aggregates in SQL; distributions from an
evenly thinned sample of at most ``max_points`` replies):

- ``ttft_by_model``: time to first token per model, horizontal box plots (long model ids wrap on the y axis);
- ``ttft_vs_input``: time to first token against input tokens, one colour per model, with each model's median
  per input-size bin as a line; log axes where the data spans two decades or more;
- ``tokens_and_cost``: tokens and cost per day, stacked by model (days without requests stay on the axis);
- ``routes``: replies per day by route (local / cloud / no reply), with the fallback rate on a second axis.

Readability rules every figure follows: tick labels never overlap (dates are located and formatted by
matplotlib's concise date formatter; model ids are wrapped and put on horizontal axes or in legends), every
colour has a legend entry, every axis label carries its unit, the figure's colours are set explicitly for the
chosen ``theme`` ("light" or "dark") with every series at least 3:1 against the background, and in a notebook
each figure follows the page's theme (both renderings in one output; the page shows its own: see
:func:`dashboard`).
Beyond ``max_models`` models, the least used are drawn together as "other (N models)".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

    from .sessions.base import SessionStoreBase

THEMES: dict[str, dict[RcKeyType, Any]] = {
    "light": {"figure.facecolor": "#ffffff", "axes.facecolor": "#ffffff", "savefig.facecolor": "#ffffff",
              "text.color": "#1a1a1a", "axes.labelcolor": "#1a1a1a", "axes.edgecolor": "#555555",
              "xtick.color": "#1a1a1a", "ytick.color": "#1a1a1a", "grid.color": "#d0d0d0",
              "legend.facecolor": "#ffffff", "legend.edgecolor": "#bbbbbb", "axes.titlecolor": "#1a1a1a"},
    "dark": {"figure.facecolor": "#1e1e1e", "axes.facecolor": "#1e1e1e", "savefig.facecolor": "#1e1e1e",
             "text.color": "#e6e6e6", "axes.labelcolor": "#e6e6e6", "axes.edgecolor": "#9a9a9a",
             "xtick.color": "#e6e6e6", "ytick.color": "#e6e6e6", "grid.color": "#444444",
             "legend.facecolor": "#2a2a2a", "legend.edgecolor": "#666666", "axes.titlecolor": "#e6e6e6"},
}
# One palette per theme, hue for hue (a model keeps its hue in both): every colour at least 3:1 against its
# theme's background (WCAG 1.4.11 for graphics): light ones on #ffffff, dark ones on #1e1e1e.
PALETTES = {
    "light": ["#1f77b4", "#c75d00", "#2a8a2a", "#d62728", "#9467bd", "#8c564b", "#c2399c", "#7a7a00", "#0f7f8c",
              "#3b5998", "#a0522d", "#4f7f3f", "#b03060", "#6a4c93", "#7d6b5d", "#b8418c", "#6b6b1f", "#2c6f80"],
    "dark": ["#5aa9e6", "#ff7f0e", "#3cb44b", "#f05a5b", "#b292d9", "#c49c94", "#e377c2", "#bcbd22", "#17becf",
             "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#d8b9ae", "#f7b6d2", "#dbdb8d", "#9edae5"],
}
OTHER_COLOURS = {"light": "#767676", "dark": "#9a9a9a"}
ROUTE_COLOURS_BY_THEME = {"light": {"local": "#2a8a2a", "cloud": "#1f77b4", None: "#d62728"},
                          "dark": {"local": "#3cb44b", "cloud": "#5aa9e6", None: "#f05a5b"}}
PALETTE = PALETTES["light"]  # the light theme's (kept for callers of earlier versions)
OTHER_COLOUR = OTHER_COLOURS["light"]
ROUTE_COLOURS = ROUTE_COLOURS_BY_THEME["light"]
ROUTE_LABELS = {"local": "local", "cloud": "cloud", None: "no reply, or no route recorded"}
LABEL_WIDTH = 28   # characters per line of a model id on an axis
LEGEND_WIDTH = 36  # ... and in a legend


@dataclass
class Dashboard:
    """The dashboard's figures by name (``ttft_by_model``, ``ttft_vs_input``, ``tokens_and_cost``,
    ``routes``); also iterable and indexable by name. ``alternates``: the same figures in the other theme
    (drawn when the dashboard follows the page: see :func:`dashboard`)."""
    figures: dict = field(default_factory=dict)
    alternates: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Figure:
        return self.figures[name]

    def __iter__(self):
        return iter(self.figures.values())

    def __len__(self) -> int:
        return len(self.figures)

    def __repr__(self) -> str:
        return f"<Dashboard: {', '.join(self.figures)}>"

    def close(self) -> None:
        """Close every figure (frees them from pyplot)."""
        import matplotlib.pyplot as plt

        for fig in list(self.figures.values()) + list(self.alternates.values()):
            plt.close(fig)


def wrap(label: Any, width: int = LABEL_WIDTH) -> str:
    """A model id (or other label) on lines of at most ``width`` characters, broken after a separator
    (``:``, ``/``, ``-``, ``_``, ``.``) where possible, else mid-word."""
    text = "(none)" if label is None else str(label)
    lines, line = [], ""
    for piece in re.findall(r"[^:/\-_.]+[:/\-_.]*|[:/\-_.]+", text):
        while len(piece) > width:  # a piece longer than a line: split it
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join(lines + [line] if line else lines)


def label(name: Any, width: int = LABEL_WIDTH) -> str:
    """:func:`wrap` for a matplotlib text: every ``$`` escaped, so a model id such as ``openai:gpt-$x^{$`` is
    drawn literally instead of being parsed as (broken) mathtext, which raises when the figure is drawn."""
    return wrap(name, width).replace("$", r"\$")


def dashboard(client_or_store: Any, since: Any = None, until: Any = None, filter_metadata: dict | None = None,
              theme: str = "light", max_points: int = 20_000, max_models: int = 10,
              follow_page: bool = True) -> Dashboard:
    """Draw the four figures for the store of ``client_or_store`` (an ``OblixClient`` or a ``SessionStore``).

    ``since``/``until``/``filter_metadata`` as in ``client.stats()``. ``theme``: "light" or "dark", the
    figures' own colours (set explicitly: what ``savefig`` writes and what a frontend that shows only PNG
    gets). ``follow_page`` (default): each figure is also drawn in the other theme, and shown in a notebook
    as both renderings of which the page shows the one matching its theme (JupyterLab's / Notebook 7's
    light or dark theme, else ``prefers-color-scheme``); ``theme`` is the rendering where the page does not
    say. ``follow_page=False``: shown as drawn, in ``theme``. Figures are created with pyplot, so a
    notebook shows them; the returned :class:`Dashboard` holds them by name.
    """
    import matplotlib.pyplot as plt

    from .sessions import stats as stats_module

    if theme not in THEMES:
        raise ValueError(f"theme must be one of {sorted(THEMES)}, not {theme!r}")
    store: SessionStoreBase = getattr(client_or_store, "sessions", client_or_store)
    lo, hi = stats_module.window(since, until)
    sample = store.stats_sample(lo, hi, filter_metadata, limit=max_points)
    by_day_model = store.stats_totals(("day", "model_id"), lo, hi, filter_metadata)
    by_day_route = store.stats_totals(("day", "route"), lo, hi, filter_metadata)
    daily = stats_module.stats_frame(store.stats("day", lo, hi, filter_metadata), "day", lo, hi)
    totals: dict = {}
    for row in by_day_model:
        totals[row["model_id"]] = totals.get(row["model_id"], 0) + row["requests"]
    ranked = sorted(totals, key=lambda m: (-totals[m], str(m)))
    shown = ranked if len(ranked) <= max_models else ranked[:max_models - 1]
    others = [m for m in ranked if m not in shown]
    other_label = f"other ({len(others)} models)" if others else None

    def group(model):
        return model if model in shown else other_label

    order = shown + ([other_label] if others else [])

    def draw(name: str, maker=plt) -> dict:
        palette = PALETTES[name]
        colour_of = {m: palette[i % len(palette)] for i, m in enumerate(shown)}
        if others:
            colour_of[other_label] = OTHER_COLOURS[name]
        with plt.rc_context({**THEMES[name], "axes.grid": True, "grid.linewidth": 0.6,
                             "figure.constrained_layout.use": True}):
            return {
                "ttft_by_model": _ttft_by_model(maker, sample, order, group, palette),
                "ttft_vs_input": _ttft_vs_input(maker, sample, order, group, colour_of),
                "tokens_and_cost": _tokens_and_cost(maker, by_day_model, daily, order, group, colour_of),
                "routes": _routes(maker, by_day_route, daily, name),
            }

    figures = draw(theme)
    alternates: dict = {}
    if follow_page:
        other = "dark" if theme == "light" else "light"
        alternates = draw(other, _Detached)  # not pyplot's: the inline backend must not show them on their own
        for key, fig in figures.items():
            pair = {theme: fig, other: alternates[key]}
            fig._ipython_display_ = _PageThemed(pair, theme)  # IPython's display() shows both renderings
    return Dashboard(figures, alternates)


class _Detached:
    """``plt.subplots`` for figures pyplot does not manage (drawn for display only, never shown alone)."""

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)


class _PageThemed:
    """``_ipython_display_`` of a dashboard figure: one output holding its light and dark renderings (PNG),
    of which the page shows the one matching its theme. JupyterLab and Notebook 7 say theirs on ``<body>``
    (``data-jp-theme-light``); other pages through ``prefers-color-scheme`` or a ``.dark`` class (marimo).
    The bundle's ``image/png`` is the ``fallback`` theme's, for frontends (and untrusted notebooks) that
    show no HTML."""

    def __init__(self, pair: dict, fallback: str):
        self.pair, self.fallback = pair, fallback

    def bundle(self) -> dict:
        import base64
        import io
        import uuid

        pngs = {}
        for name, fig in self.pair.items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
            pngs[name] = buffer.getvalue()
        label = self.pair[self.fallback].get_label() or "figure"
        box = f"oblix-plot-{uuid.uuid4().hex[:12]}"
        other = "dark" if self.fallback == "light" else "light"
        show, hide = "display:block!important", "display:none!important"
        style = (f".{box} .oblix-plot-{other}{{display:none}}"
                 f"@media (prefers-color-scheme: dark){{.{box} .oblix-plot-dark{{display:block}}"
                 f".{box} .oblix-plot-light{{display:none}}}}"
                 f"@media (prefers-color-scheme: light){{.{box} .oblix-plot-light{{display:block}}"
                 f".{box} .oblix-plot-dark{{display:none}}}}"
                 f".dark .{box} .oblix-plot-dark,.dark-theme .{box} .oblix-plot-dark{{{show}}}"
                 f".dark .{box} .oblix-plot-light,.dark-theme .{box} .oblix-plot-light{{{hide}}}"
                 f"body[data-jp-theme-light=false] .{box} .oblix-plot-dark{{{show}}}"
                 f"body[data-jp-theme-light=false] .{box} .oblix-plot-light{{{hide}}}"
                 f"body[data-jp-theme-light=true] .{box} .oblix-plot-light{{{show}}}"
                 f"body[data-jp-theme-light=true] .{box} .oblix-plot-dark{{{hide}}}")
        images = "".join(
            f'<img class="oblix-plot-{name}" alt="{label} ({name} theme)" style="max-width:100%;height:auto" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
            for name, data in pngs.items())
        return {"text/html": f'<div class="oblix-plot {box}"><style>{style}</style>{images}</div>',
                "image/png": pngs[self.fallback],
                "text/plain": f"<Figure {label}: light and dark renderings; the page shows its theme's>"}

    def __call__(self) -> None:
        from IPython.display import publish_display_data

        publish_display_data(self.bundle())


def _legend(fig, handles: list, title: str) -> None:
    """One legend for the figure, outside the axes on the right (constrained layout makes room); the figure
    grows taller when the legend needs it, so no entry is cut off."""
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", title=title,
               title_fontsize="small")
    lines = sum(str(h.get_label()).count("\n") + 1 for h in handles) + title.count("\n") + 1
    fig.set_figheight(max(fig.get_figheight(), 0.6 + 0.2 * lines + 0.06 * len(handles)))


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this window", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _spans_decades(values, decades: float = 2.0) -> bool:
    positive = [v for v in values if v is not None and v > 0]
    return len(positive) > 1 and math.log10(max(positive) / min(positive)) >= decades


def _ttft_by_model(plt, sample: list[dict], order: list, group, palette: list) -> Figure:
    per_model: dict = {name: [] for name in order}
    for row in sample:
        if row["ttft"] is not None:
            per_model[group(row["model_id"])].append(row["ttft"])
    per_model = {m: v for m, v in per_model.items() if v}
    labels = [label(m) for m in per_model]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(9, max(2.6, 1.2 + 0.34 * max(lines, len(labels)) + 0.1 * len(labels))))
    fig.set_label("ttft_by_model")
    ax.set_title("Time to first token per model")
    if not per_model:
        _no_data(ax, "replies with a time to first token")
        return fig
    data = list(per_model.values())[::-1]  # first (most used) model on top
    import matplotlib

    horizontal = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2])) >= (3, 10)
                  else {"vert": False})
    ax.boxplot(data, **horizontal, whis=(5, 95), widths=0.6, patch_artist=True, showfliers=True,
               flierprops={"marker": ".", "markersize": 3, "alpha": 0.5,
                           "markerfacecolor": palette[0], "markeredgecolor": palette[0]},
               medianprops={"color": palette[1], "linewidth": 2},
               whiskerprops={"color": palette[0]}, capprops={"color": palette[0]},
               boxprops={"facecolor": palette[0] + "55", "edgecolor": palette[0]})
    ax.set_yticks(range(1, len(data) + 1), labels[::-1])
    log = _spans_decades([v for values in data for v in values])
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("time to first token (s)" + (", log scale" if log else ""))
    ax.set_ylabel("model")
    ax.grid(axis="y", visible=False)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=palette[0] + "55", edgecolor=palette[0], label="middle 50 % of replies"),
               Line2D([], [], color=palette[1], linewidth=2, label="median"),
               Line2D([], [], color=palette[0], label="5th-95th percentile"),
               Line2D([], [], color=palette[0], marker=".", linestyle="", label="beyond them")]
    _legend(fig, handles, f"{sum(len(d) for d in data):,} replies")
    return fig


def _ttft_vs_input(plt, sample: list[dict], order: list, group, colour_of: dict) -> Figure:
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 5))
    fig.set_label("ttft_vs_input")
    ax.set_title("Time to first token as prompts grow")
    points: dict = {}
    for row in sample:
        if row["ttft"] is not None and row["input_tokens"] is not None and row["input_tokens"] > 0:
            points.setdefault(group(row["model_id"]), []).append((row["input_tokens"], row["ttft"]))
    if not points:
        _no_data(ax, "replies with input tokens and a time to first token")
        return fig
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    log_x, log_y = _spans_decades(xs), _spans_decades(ys)
    edges = (np.logspace(np.log10(min(xs)), np.log10(max(xs)) + 1e-9, 9) if log_x
             else np.linspace(min(xs), max(xs) + 1e-9, 9))
    handles = []
    for name in order:
        if name not in points:
            continue
        x, y = np.array(points[name], dtype=float).T
        colour = colour_of[name]
        ax.scatter(x, y, s=9, alpha=0.35, color=colour, linewidths=0)
        bins = np.digitize(x, edges)
        centres, medians = [], []
        for b in sorted(set(bins)):
            chosen = bins == b
            if chosen.sum() >= 3:
                centres.append(float(np.median(x[chosen])))
                medians.append(float(np.median(y[chosen])))
        handles.append(ax.plot(centres, medians, marker="o", markersize=4, color=colour, linewidth=1.8,
                               label=f"{label(name, LEGEND_WIDTH)} (n={len(x):,})")[0])
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("input tokens (prompt + history)" + (", log scale" if log_x else ""))
    ax.set_ylabel("time to first token (s)" + (", log scale" if log_y else ""))
    _legend(fig, handles, "model (dots: replies,\nline: median per size bin)")
    return fig


def _day_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=True))


def _stacked_limits(ax) -> None:
    """Stacked bars leave zero-height bars on top whose sticky bottom edges would pin the y limit to the
    tallest stack (cutting it flush at the frame): ignore sticky edges, keep 0 as the floor."""
    ax.use_sticky_edges = False
    ax.autoscale_view()
    ax.set_ylim(bottom=0)


def _days(daily) -> list:
    return [ts.to_pydatetime().replace(tzinfo=None) for ts in daily.index]


def _tokens_and_cost(plt, rows: list[dict], daily, order: list, group, colour_of: dict) -> Figure:
    import numpy as np

    fig, (ax_tokens, ax_cost) = plt.subplots(2, 1, figsize=(9, 6.2), sharex=True)
    fig.set_label("tokens_and_cost")
    ax_tokens.set_title("Tokens and cost per day, by model (UTC days)")
    if daily.empty or not daily["requests"].any():
        _no_data(ax_tokens, "requests")
        _no_data(ax_cost, "costs")
        return fig
    days = _days(daily)
    index = {d.strftime("%Y-%m-%d"): i for i, d in enumerate(days)}
    tokens = {name: np.zeros(len(days)) for name in order}
    cost = {name: np.zeros(len(days)) for name in order}
    for row in rows:
        i = index.get(row["day"])
        if i is None:
            continue
        name = group(row["model_id"])
        tokens[name][i] += row["input_tokens"] + row["output_tokens"]
        cost[name][i] += row["cost_usd"] or 0.0
    width = 0.8 if len(days) > 1 else 0.5
    bottom_t, bottom_c = np.zeros(len(days)), np.zeros(len(days))
    handles = []
    for name in order:
        text = label(name, LEGEND_WIDTH)
        handles.append(ax_tokens.bar(days, tokens[name], width=width, bottom=bottom_t, color=colour_of[name],
                                     label=text))
        ax_cost.bar(days, cost[name], width=width, bottom=bottom_c, color=colour_of[name], label=text)
        bottom_t += tokens[name]
        bottom_c += cost[name]
    from matplotlib.ticker import EngFormatter

    ax_tokens.yaxis.set_major_formatter(EngFormatter(sep=""))  # 1.5M, not an offset "1e6"
    _stacked_limits(ax_tokens)
    _stacked_limits(ax_cost)
    ax_tokens.set_ylabel("tokens (input + output)")
    ax_cost.set_ylabel("cost (USD)")
    ax_cost.set_xlabel("day (UTC)")
    unknown = int(daily["cost_unknown"].sum())
    ax_cost.set_title(f"cost: sum of known costs; {unknown:,} replies of unknown cost not included" if unknown
                      else "cost: every reply's cost is known", loc="left", fontsize="small")
    if not bottom_c.any():
        ax_cost.set_ylim(0, 1)
    _day_axis(ax_cost)
    _legend(fig, handles[::-1], "model")  # top entry = top of the stacks
    return fig


def _routes(plt, rows: list[dict], daily, theme: str) -> Figure:
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4.2))
    fig.set_label("routes")
    ax.set_title("Route mix and fallback rate per day (UTC days)")
    if daily.empty or not daily["requests"].any():
        _no_data(ax, "requests")
        return fig
    days = _days(daily)
    index = {d.strftime("%Y-%m-%d"): i for i, d in enumerate(days)}
    route_colours = ROUTE_COLOURS_BY_THEME[theme]
    counts = {route: np.zeros(len(days)) for route in route_colours}
    for row in rows:
        i = index.get(row["day"])
        if i is not None:
            counts[row["route"] if row["route"] in route_colours else None][i] += row["requests"]
    replies = sum(counts.values())
    unanswered = daily["requests"].to_numpy() - replies  # prompts without any reply
    counts[None] = counts[None] + np.clip(unanswered, 0, None)
    width = 0.8 if len(days) > 1 else 0.5
    bottom = np.zeros(len(days))
    handles = []
    for route, colour in route_colours.items():
        if route is not None or counts[route].any():
            handles.append(ax.bar(days, counts[route], width=width, bottom=bottom, color=colour,
                                  label=ROUTE_LABELS[route]))
            bottom += counts[route]
    _stacked_limits(ax)
    ax.set_ylabel("requests per day")
    ax.set_xlabel("day (UTC)")
    rate_ax = ax.twinx()
    answered = np.where(replies > 0, replies, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = 100 * daily["fallbacks"].to_numpy() / answered
    (line,) = rate_ax.plot(days, rate, color=PALETTES[theme][4], marker="o", markersize=4, linewidth=1.8,
                           label="fallback rate (% of replies)")
    rate_ax.set_ylabel("fallback rate (% of replies)")
    rate_ax.set_ylim(0, max(5.0, float(np.nanmax(rate)) * 1.2) if np.isfinite(rate).any() else 5.0)
    rate_ax.grid(False)
    _day_axis(ax)
    _legend(fig, handles[::-1] + [line], "requests by route")
    return fig
