"""Accuracy-vs-MACs fronts as a figure: computed first (`front_plot_info`), drawn second (`plot_fronts`).

Every point is an architecture's mean over its seeds, drawn with an error bar from its worst to its best
seed (min..max: with two or three seeds a standard deviation is itself a guess, the range is what was
seen). A point with one seed has a bar of zero length. The legend names the rung the numbers come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ._fronts import pareto_front
from ._seeds import aggregate_seeds

__all__ = ["FamilyCurve", "FrontPlotInfo", "finish_figure", "front_plot_info", "new_axes", "plot_fronts"]

_COLOURS = {"cmt": "#d62728", "cmt_compound": "#d62728", "cmt_free": "#ff7f0e", "deit": "#1f77b4",
            "efficientnet": "#2ca02c"}
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


SPREAD_NOTE = "bars: min..max over seeds"


@dataclass(frozen=True)
class FamilyCurve:
    """One family's front and other points: seed means, with each point's lowest and highest seed."""

    family: str
    colour: str
    front_costs: list[float]
    front_metrics: list[float]
    front_labels: list[str]
    other_costs: list[float] = field(default_factory=list)
    other_metrics: list[float] = field(default_factory=list)
    front_low: list[float] = field(default_factory=list)
    front_high: list[float] = field(default_factory=list)
    front_seeds: list[int] = field(default_factory=list)
    other_low: list[float] = field(default_factory=list)
    other_high: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class FrontPlotInfo:
    """Everything the figure shows, as data (tests assert on this, not on pixels)."""

    curves: list[FamilyCurve]
    cost_label: str
    metric_label: str
    title: str
    rungs: list[str] = field(default_factory=list)
    spread_note: str = SPREAD_NOTE

    @property
    def legend_title(self) -> str:
        """What the legend says beside the families: the rung(s) shown and what the bars are."""
        rung = f"rung: {', '.join(self.rungs)}; " if self.rungs else ""
        return rung + self.spread_note


def front_plot_info(df: pd.DataFrame, cost: str = "macs", metric: str = "top1", title: str = "",
                    label_all_front_points: bool = True) -> FrontPlotInfo:
    """The fronts through seed means, each point's min..max over seeds, and the rung, as data."""
    df = aggregate_seeds(df, metric)
    fronts = pareto_front(df, cost, metric)
    usable = df[df[cost].notna() & df[metric].notna()]
    if "state" in usable.columns:
        usable = usable[usable["state"].astype(str) == "complete"]
    curves = []
    for i, family in enumerate(sorted(usable["family"].unique())):
        front = fronts[fronts["family"] == family].sort_values(cost)
        rest = usable[(usable["family"] == family) & ~usable.index.isin(front.index)]
        curves.append(FamilyCurve(
            family=family, colour=_COLOURS.get(family, _FALLBACK[i % len(_FALLBACK)]),
            front_costs=front[cost].astype(float).tolist(), front_metrics=front[metric].astype(float).tolist(),
            front_labels=front["name"].astype(str).tolist() if label_all_front_points else [],
            other_costs=rest[cost].astype(float).tolist(), other_metrics=rest[metric].astype(float).tolist(),
            front_low=front[f"{metric}_min"].astype(float).tolist(),
            front_high=front[f"{metric}_max"].astype(float).tolist(),
            front_seeds=front["n_seeds"].astype(int).tolist(),
            other_low=rest[f"{metric}_min"].astype(float).tolist(),
            other_high=rest[f"{metric}_max"].astype(float).tolist(),
        ))
    cost_label = "MACs (multiply-adds, the papers' \"FLOPs\")" if cost == "macs" else cost
    rungs = sorted(usable["rung"].astype(str).unique()) if "rung" in usable.columns else []
    return FrontPlotInfo(curves, cost_label, "top-1 (%)" if metric == "top1" else metric, title, rungs)


def _bars(metrics: list[float], low: list[float], high: list[float]) -> list[list[float]]:
    """matplotlib's asymmetric yerr: distances below and above each mean."""
    return [[m - lo for m, lo in zip(metrics, low)], [hi - m for m, hi in zip(metrics, high)]]


def plot_fronts(df: pd.DataFrame | FrontPlotInfo, ax=None, path: str | Path | None = None,
                formats: Sequence[str] = ("png", "svg"), title: str = ""):
    """Draw the fronts (log MACs axis, one colour per family, fronts as step lines through seed means, each
    point's min..max over seeds as an error bar, dominated points faint, front points labelled, the rung in
    the legend's title). With ``path`` (no suffix), also saves ``path.png`` and ``path.svg``. Returns the axes."""
    info = df if isinstance(df, FrontPlotInfo) else front_plot_info(df, title=title)
    own = ax is None
    ax = new_axes() if own else ax
    for curve in info.curves:
        if curve.other_low:
            ax.errorbar(curve.other_costs, curve.other_metrics, yerr=_bars(curve.other_metrics, curve.other_low,
                        curve.other_high), fmt="none", ecolor=curve.colour, alpha=0.25, linewidth=0.8)
        if curve.front_low:
            ax.errorbar(curve.front_costs, curve.front_metrics, yerr=_bars(curve.front_metrics, curve.front_low,
                        curve.front_high), fmt="none", ecolor=curve.colour, capsize=2.5, linewidth=1.0, zorder=2)
        ax.scatter(curve.other_costs, curve.other_metrics, color=curve.colour, alpha=0.25, s=18, linewidths=0)
        ax.step(curve.front_costs, curve.front_metrics, where="post", color=curve.colour, linewidth=1.8,
                label=curve.family)
        ax.scatter(curve.front_costs, curve.front_metrics, color=curve.colour, s=30, zorder=3)
        for x, y, label in zip(curve.front_costs, curve.front_metrics, curve.front_labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=curve.colour)
    ax.set_xscale("log")
    ax.set_xlabel(info.cost_label)
    ax.set_ylabel(info.metric_label)
    if info.title:
        ax.set_title(info.title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", title=info.legend_title, title_fontsize=8)
    return finish_figure(ax, path, formats, close=own)


def new_axes(figsize: tuple[float, float] = (7.5, 5)):
    """A fresh figure's axes on the non-interactive backend (scripts, CI and headless notebooks alike)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)[1]


def finish_figure(ax, path: str | Path | None, formats: Sequence[str] = ("png", "svg"), close: bool = True):
    """Save ``ax``'s figure as ``path.<fmt>`` for each format (when ``path`` is given); close it if we own it."""
    if path is not None:
        figure = ax.figure
        figure.tight_layout()
        for fmt in formats:
            figure.savefig(Path(f"{path}.{fmt}"), format=fmt)
    if close:
        import matplotlib.pyplot as plt

        plt.close(ax.figure)
    return ax
