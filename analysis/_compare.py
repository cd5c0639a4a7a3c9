"""Families side by side: one row each with front size, hypervolume and its seed interval, accuracy at
equal cost, and cost at equal accuracy (as a ratio to a reference family: "CMT needs 0.5x DeiT's MACs")."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ._fronts import default_reference_point, interpolate_cost, interpolate_metric, pareto_front
from ._noise import Bootstrap, hypervolume_intervals
from ._seeds import aggregate_seeds

__all__ = ["compare_families"]


def compare_families(
    df: pd.DataFrame,
    budgets: Sequence[float] = (),
    levels: Sequence[float] = (),
    reference_family: str | None = None,
    reference_point: tuple[float, float] | None = None,
    cost: str = "macs",
    metric: str = "top1",
    bootstrap: Bootstrap = Bootstrap(),
) -> pd.DataFrame:
    """A row per family: ``front_size``, ``min_seeds`` (fewest seeds behind any front point),
    ``hypervolume`` of the seed means (same box for all) with its bootstrap interval ``hv_low``..``hv_high``,
    top-1 at each MACs budget, MACs to reach each top-1 level, and that cost as a ratio to
    ``reference_family``'s. Seed replicates are averaged first (`aggregate_seeds`).

    >>> table = compare_families(load_results(["runs/cmt", "runs/baselines"]), levels=[80],
    ...                          reference_family="cmt_compound")   # doctest: +SKIP
    >>> noise_statement(table)                                       # doctest: +SKIP
    """
    points = aggregate_seeds(df, metric)
    fronts = pareto_front(points, cost, metric)
    ref_point = reference_point or default_reference_point(points, cost, metric)
    families = sorted(fronts["family"].unique())
    if reference_family is not None and reference_family not in families:
        raise ValueError(f"reference_family={reference_family!r} is not allowed; allowed: {', '.join(families)}")
    volumes = hypervolume_intervals(points, ref_point, bootstrap, cost, metric)
    table = []
    for family in families:
        front = fronts[fronts["family"] == family]
        row = {"family": family, "front_size": len(front), "min_seeds": int(front["n_seeds"].min()),
               **volumes.loc[family].to_dict()}
        for budget in budgets:
            row[f"top1@{_fmt(budget)}"] = interpolate_metric(front, budget, cost, metric)
        for level in levels:
            row[f"macs_for_{level:g}"] = interpolate_cost(front, level, cost, metric)
        table.append(row)
    out = pd.DataFrame(table).set_index("family")
    if reference_family is not None:
        for level in levels:
            column = f"macs_for_{level:g}"
            out[f"x_{reference_family}_for_{level:g}"] = out[column] / out.loc[reference_family, column]
    return out


def _fmt(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"
