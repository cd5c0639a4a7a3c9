"""Figures of the studies beyond the paper: scaling strategies, a coefficient fit, a proxy's rank agreement.

Each takes the table its study writes (``ablation.csv``, ``fit.csv``, ``fidelity.csv``), so a figure can be
redrawn from the files alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._plots import finish_figure, new_axes

__all__ = ["plot_coefficient_fit", "plot_rank_agreement", "plot_scaling_strategies"]

_STRATEGY_STYLE = {"compound": ("#d62728", "o"), "depth": ("#1f77b4", "s"), "width": ("#2ca02c", "^"),
                   "resolution": ("#9467bd", "D"), "stage_ratio": ("#ff7f0e", "v")}


def plot_scaling_strategies(table: pd.DataFrame, path: str | Path | None = None, ax=None,
                            formats: Sequence[str] = ("png", "svg"), title: str = ""):
    """Top-1 vs MACs, one line per strategy from the shared base, seed spread as error bars (EfficientNet's
    Figure 3 layout). ``table``: columns strategy, macs, top1_mean, top1_std (the base has strategy "base")."""
    own = ax is None
    ax = new_axes((7, 4.8)) if own else ax
    base = table[table["strategy"] == "base"]
    for strategy, group in table[table["strategy"] != "base"].groupby("strategy", sort=False):
        group = pd.concat([base, group]).sort_values("macs")
        colour, marker = _STRATEGY_STYLE.get(str(strategy), ("#7f7f7f", "x"))
        ax.errorbar(group["macs"], group["top1_mean"], yerr=group["top1_std"].fillna(0), color=colour,
                    marker=marker, capsize=3, linewidth=1.6, markersize=5, label=str(strategy).replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (proxy resolution)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title or "Scaling one axis vs compound scaling, matched MACs")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right")
    return finish_figure(ax, path, formats, close=own)


def plot_coefficient_fit(table: pd.DataFrame, path: str | Path | None = None, ax=None,
                         formats: Sequence[str] = ("png", "svg"), title: str = ""):
    """Each (alpha, beta) grid point coloured by its member's top-1 (gamma follows from the constraint); the
    paper's triple and the best one ringed. ``table``: columns alpha, beta, gamma, top1, is_paper, is_best."""
    own = ax is None
    ax = new_axes((6.5, 5)) if own else ax
    grid = table[~table["is_paper"].astype(bool)]
    points = ax.scatter(grid["alpha"], grid["beta"], c=grid["top1"], cmap="viridis", s=70, edgecolors="none")
    ax.figure.colorbar(points, ax=ax, label="validation top-1 (%)")
    for _, row in table.iterrows():
        if row["is_paper"] or row["is_best"]:
            label = "paper" if row["is_paper"] else "best"
            ax.scatter([row["alpha"]], [row["beta"]], s=170, facecolors="none",
                       edgecolors="#d62728" if row["is_paper"] else "black", linewidths=1.6)
            ax.annotate(f"{label} ({row['alpha']:g}, {row['beta']:g}, {row['gamma']:g}) {row['top1']:.1f}%",
                        (row["alpha"], row["beta"]), textcoords="offset points", xytext=(8, 6), fontsize=8)
    ax.set_xlabel("alpha (depth per unit phi)")
    ax.set_ylabel("beta (width per unit phi)")
    ax.set_title(title or "Coefficients at phi = 1 (gamma from alpha * beta^1.5 * gamma^2 = target)")
    ax.grid(True, alpha=0.25)
    return finish_figure(ax, path, formats, close=own)


def plot_rank_agreement(table: pd.DataFrame, path: str | Path | None = None, ax=None,
                        formats: Sequence[str] = ("png", "svg"), title: str = ""):
    """Reference top-1 against cheap-proxy top-1, one colour per family, with the identity of ranks implied
    by a monotone trend. ``table``: columns family, name, cheap_top1, reference_top1."""
    from ._plots import _COLOURS, _FALLBACK

    own = ax is None
    ax = new_axes((6.5, 5)) if own else ax
    for i, (family, group) in enumerate(table.groupby("family", sort=True)):
        colour = _COLOURS.get(str(family), _FALLBACK[i % len(_FALLBACK)])
        ax.scatter(group["cheap_top1"], group["reference_top1"], color=colour, s=36, label=str(family))
        for _, row in group.iterrows():
            ax.annotate(str(row["name"]).replace("cmt ", ""), (row["cheap_top1"], row["reference_top1"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour)
    both = np.concatenate([table["cheap_top1"].to_numpy(float), table["reference_top1"].to_numpy(float)])
    if len(both):
        ax.set_xlim(np.nanmin(both) - 2, np.nanmax(both) + 2)
    ax.set_xlabel("cheap proxy top-1 (%)")
    ax.set_ylabel("reference protocol top-1 (%)")
    ax.set_title(title or "Does the cheap proxy rank models as the reference does?")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="lower right")
    return finish_figure(ax, path, formats, close=own)
