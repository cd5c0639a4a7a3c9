"""Pareto fronts, hypervolume, and accuracy-at-equal-cost tables.

Conventions: cost (MACs by default) is minimised, the metric (top-1) maximised. Only ``complete``
points with both figures take part. A point is an architecture's mean over its seeds (`aggregate_seeds`,
applied here when the frame still has one row per trial): a front through single draws would reward luck.

Hypervolume is measured in a normalised box so that families are compared on the same one: cost is
divided by the reference cost and the metric is taken above the reference metric, so a front that
reaches zero cost at 100% top-1 would score ``(1 - 0) * (100 - metric_ref)``; the value returned is that
area divided by the box's, between 0 and 1. The default reference point is the same for every family
compared: ``cost_ref = 1.1 x`` the largest cost and ``metric_ref =`` the lowest metric minus 1 point,
over all rows given, so every front point lies strictly inside the box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._seeds import aggregate_seeds

__all__ = ["default_reference_point", "hypervolume", "interpolate_cost", "interpolate_metric", "pareto_front"]


def _usable(df: pd.DataFrame, cost: str, metric: str) -> pd.DataFrame:
    ok = df[cost].notna() & df[metric].notna()
    if "state" in df.columns:
        ok &= df["state"].astype(str) == "complete"
    return df[ok]


def pareto_mask(costs: Sequence[float] | np.ndarray, metrics: Sequence[float] | np.ndarray) -> np.ndarray:
    """True for points no other point dominates (<= cost and >= metric, one strictly); exact ties all stay.
    The one definition of "on the front": the search's summary and progress lines use it too."""
    costs, metrics = np.asarray(costs, dtype=float), np.asarray(metrics, dtype=float)
    keep = np.ones(len(costs), dtype=bool)
    for i in range(len(costs)):
        better_or_equal = (costs <= costs[i]) & (metrics >= metrics[i])
        strictly = (costs < costs[i]) | (metrics > metrics[i])
        keep[i] = not np.any(better_or_equal & strictly)
    return keep


def pareto_front(df: pd.DataFrame, cost: str = "macs", metric: str = "top1", by: str | None = "family") -> pd.DataFrame:
    """The non-dominated points (per ``by`` group, or over all with ``by=None``), cheapest first; seed
    replicates are averaged first, so each row carries ``<metric>_std`` and ``n_seeds``."""
    rows = _usable(aggregate_seeds(df, metric), cost, metric)
    groups = [rows] if by is None else [g for _, g in rows.groupby(by, sort=True)]
    fronts = []
    for group in groups:
        mask = pareto_mask(group[cost].to_numpy(float), group[metric].to_numpy(float))
        fronts.append(group[mask])
    if not fronts:
        return rows.iloc[0:0]
    keys = ([by] if by else []) + [cost]
    return pd.concat(fronts).sort_values(keys, kind="stable")


def default_reference_point(df: pd.DataFrame, cost: str = "macs", metric: str = "top1") -> tuple[float, float]:
    """``(1.1 x max cost, min metric - 1)`` over all usable points (seed means): one box for every family."""
    rows = _usable(aggregate_seeds(df, metric), cost, metric)
    if rows.empty:
        raise ValueError("no complete rows with both cost and metric to compare")
    return 1.1 * float(rows[cost].max()), float(rows[metric].min()) - 1.0


def hypervolume(front: pd.DataFrame | Sequence[tuple[float, float]], reference_point: tuple[float, float],
                cost: str = "macs", metric: str = "top1", metric_max: float = 100.0) -> float:
    """Area dominated by the front inside the normalised box (see the module docstring), between 0 and 1."""
    points = (front[[cost, metric]].to_numpy(float) if isinstance(front, pd.DataFrame)
              else np.asarray(front, dtype=float).reshape(-1, 2))
    cost_ref, metric_ref = reference_point
    if not cost_ref > 0 or not metric_max > metric_ref:
        raise ValueError(f"reference_point={reference_point!r} is not allowed; allowed: cost > 0, "
                         f"metric < {metric_max}")
    inside = points[(points[:, 0] < cost_ref) & (points[:, 1] > metric_ref)]
    if len(inside) == 0:
        return 0.0
    order = np.argsort(inside[:, 0])
    area, best = 0.0, metric_ref
    xs, ys = inside[order, 0] / cost_ref, inside[order, 1]
    # sweep from cheap to expensive: each point adds the strip up to the next cost at its running best metric
    for i, (x, y) in enumerate(zip(xs, ys)):
        best = max(best, y)
        x_next = xs[i + 1] if i + 1 < len(xs) else 1.0
        area += (x_next - x) * (best - metric_ref)
    return area / ((metric_max - metric_ref) * 1.0)


def _front_curve(front: pd.DataFrame, cost: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    front = front.sort_values(cost)
    return front[cost].to_numpy(float), front[metric].to_numpy(float)


def interpolate_metric(front: pd.DataFrame, budget: float, cost: str = "macs", metric: str = "top1") -> float:
    """Top-1 of the front at ``budget`` MACs: linear in log(cost) between front points; NaN outside its range."""
    costs, metrics = _front_curve(front, cost, metric)
    if len(costs) == 0 or budget < costs[0] or budget > costs[-1]:
        return math.nan
    if len(costs) == 1:
        return float(metrics[0])
    return float(np.interp(math.log(budget), np.log(costs), metrics))


def interpolate_cost(front: pd.DataFrame, level: float, cost: str = "macs", metric: str = "top1") -> float:
    """MACs the front needs to reach top-1 ``level``: log-linear between front points, the cheapest point's cost
    when even that one reaches it (the front says no more), NaN when the front never reaches it."""
    costs, metrics = _front_curve(front, cost, metric)
    if len(costs) == 0 or level > metrics.max():
        return math.nan
    if level <= metrics[0]:
        return float(costs[0])
    for i in range(len(costs)):
        if metrics[i] >= level:
            if i == 0 or metrics[i] == metrics[i - 1]:
                return float(costs[i])
            t = (level - metrics[i - 1]) / (metrics[i] - metrics[i - 1])
            return float(math.exp(math.log(costs[i - 1]) + t * (math.log(costs[i]) - math.log(costs[i - 1]))))
    return math.nan
