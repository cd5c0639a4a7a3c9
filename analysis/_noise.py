"""How much of a gap between two fronts is seed noise: a bootstrap interval on each family's hypervolume.

Each resample redraws, for every architecture, its seeds with replacement and takes their mean (an
architecture with one seed keeps its value: there is nothing to redraw); the family's hypervolume is then
recomputed in the same reference box. The interval is the percentile interval of those hypervolumes.
Two families whose intervals overlap are within noise of each other: the seeds cannot tell their fronts
apart. numpy only, seeded, so a report is reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from scaling import check_int

from ._fronts import _usable, default_reference_point, hypervolume
from ._seeds import aggregate_seeds

__all__ = ["Bootstrap", "hypervolume_intervals", "noise_statement", "within_noise"]


@dataclass(frozen=True)
class Bootstrap:
    """How a hypervolume interval is drawn: number of resamples, interval level, and the RNG seed.

    >>> Bootstrap(resamples=2000, level=0.9, seed=1)
    Bootstrap(resamples=2000, level=0.9, seed=1)
    """

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("resamples", self.resamples)
        if not 0 < self.level < 1:
            raise ValueError(f"level={self.level!r} is not allowed; allowed: a number in (0, 1)")


def _resampled_metrics(seeds: list[tuple[float, ...]], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, points) matrix: each point's mean over its seeds drawn with replacement."""
    columns = []
    for values in seeds:
        values_arr = np.asarray(values, dtype=float)
        if len(values_arr) <= 1:
            columns.append(np.full(resamples, values_arr[0] if len(values_arr) else np.nan))
            continue
        idx = rng.integers(0, len(values_arr), size=(resamples, len(values_arr)))
        columns.append(values_arr[idx].mean(axis=1))
    return np.column_stack(columns)


def hypervolume_intervals(df: pd.DataFrame, reference_point: tuple[float, float] | None = None,
                          bootstrap: Bootstrap = Bootstrap(), cost: str = "macs",
                          metric: str = "top1") -> pd.DataFrame:
    """Per family: ``hypervolume`` of the seed means and its bootstrap interval ``hv_low``..``hv_high``.

    Every family is measured in one box (``reference_point``, default: `default_reference_point` of ``df``).
    Each family draws from its own generator, seeded by ``bootstrap.seed`` and the family's name, so adding
    a family to a report does not move the others' intervals.
    """
    points = _usable(aggregate_seeds(df, metric), cost, metric)
    ref_point = reference_point or default_reference_point(points, cost, metric)
    rows = []
    for family, group in points.groupby("family", sort=True):
        rng = np.random.default_rng([bootstrap.seed, zlib.crc32(str(family).encode())])
        costs = group[cost].to_numpy(float)
        seeds = [s if len(s) else (m,) for s, m in zip(group[f"{metric}_seeds"], group[metric])]
        draws = _resampled_metrics(seeds, bootstrap.resamples, rng)
        volumes = [hypervolume(np.column_stack([costs, draw]), ref_point) for draw in draws]
        tail = (1 - bootstrap.level) / 2 * 100
        low, high = np.percentile(volumes, [tail, 100 - tail])
        rows.append({"family": family, "hypervolume": hypervolume(group, ref_point, cost, metric),
                     "hv_low": float(low), "hv_high": float(high)})
    return pd.DataFrame(rows, columns=["family", "hypervolume", "hv_low", "hv_high"]).set_index("family")


def within_noise(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The pairs of families (from a table with ``hv_low``/``hv_high``) whose hypervolume intervals overlap."""
    missing = [c for c in ("hv_low", "hv_high") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks {missing}; allowed: a table from compare_families or hypervolume_intervals")
    return [(str(a), str(b)) for a, b in combinations(sorted(table.index), 2)
            if table.loc[a, "hv_low"] <= table.loc[b, "hv_high"] and table.loc[b, "hv_low"] <= table.loc[a, "hv_high"]]


def noise_statement(table: pd.DataFrame, level: float = 0.95) -> str:
    """One line saying which families' fronts the seeds can tell apart, with each hypervolume and interval.

    With a single seed per architecture the intervals have no width and say nothing about noise: the line
    says so rather than calling every gap real.
    """
    close = within_noise(table)
    intervals = ", ".join(f"{family} {row['hypervolume']:.3f} [{row['hv_low']:.3f}, {row['hv_high']:.3f}]"
                          for family, row in table.sort_index().iterrows())
    head = f"Hypervolume with {level:.0%} seed-bootstrap intervals: {intervals}."
    if (table["hv_high"] - table["hv_low"]).max() == 0:
        return head + " No architecture has more than one seed, so the intervals cannot show noise."
    # a family with a single seed on some front point has no measured spread there: its gaps are not judged
    seeds = table["min_seeds"] if "min_seeds" in table.columns else (table["hv_high"] > table["hv_low"]) * 2
    unseeded = sorted(f for f in table.index if seeds.loc[f] < 2)
    together = {frozenset(pair) for pair in close}
    apart = [(a, b) for a, b in combinations(sorted(table.index), 2)
             if frozenset((a, b)) not in together and a not in unseeded and b not in unseeded]
    close = [(a, b) for a, b in close if a not in unseeded and b not in unseeded]
    said = []
    if close:
        said.append("Within noise (intervals overlap): " + "; ".join(f"{a} ~ {b}" for a, b in close) + ".")
    if apart:
        ranked = [(a, b) if table.loc[a, "hypervolume"] > table.loc[b, "hypervolume"] else (b, a) for a, b in apart]
        said.append("Apart beyond noise: " + "; ".join(f"{hi} > {lo}" for hi, lo in ranked) + ".")
    if unseeded:
        said.append(f"Not judged: {', '.join(unseeded)} (one seed on a front point, no measured spread; train "
                    "more seeds or report the reference rung).")
    return " ".join([head, *said])
