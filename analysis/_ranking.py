"""How far a cheap proxy's ranking of models can be trusted: rank correlations, a bootstrap interval, top-k.

Spearman's rho is Pearson's r on average ranks (ties share their mean rank); Kendall's tau is tau-b, which
corrects for ties on either side, the variant scipy reports by default. Both are written here on numpy
(N is tens of models) so that `analysis` needs no scipy; the tests check them against scipy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["RankAgreement", "bootstrap_interval", "kendall_tau", "rank_agreement", "spearman_rho", "top_k_overlap"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length; got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"{len(a)} model(s) is not allowed; allowed: at least 2 to rank")
    return a, b


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    a, b = _pair(x, y)
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y))."""
    a, b = _pair(x, y)
    i, j = np.triu_indices(len(a), k=1)
    sx, sy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    untied_x, untied_y = np.count_nonzero(sx), np.count_nonzero(sy)
    denom = np.sqrt(float(untied_x) * float(untied_y))
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")


def _top_k_chance(values: np.ndarray, k: int) -> np.ndarray:
    """Each model's chance of being among the ``k`` best when ties at the k-th place are broken at random."""
    kth = np.sort(values)[::-1][k - 1]
    above, tied = values > kth, values == kth
    return above + tied * (k - np.count_nonzero(above)) / np.count_nonzero(tied)


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """Share of the ``k`` best models by ``x`` that are also among the ``k`` best by ``y`` (higher is better).

    Models tied at the k-th place count by their chance of being picked (the overlap's expectation over random
    tie-breaks): two models tied for best by ``x`` of which ``y`` ranks one first give 0.5 at ``k=1``, where
    taking the first in list order would give 0 or 1 depending only on the order. Without ties, the plain count.
    """
    a, b = _pair(x, y)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(a):
        raise ValueError(f"k={k!r} is not allowed; allowed: an integer in [1, {len(a)}]")
    return float((_top_k_chance(a, k) * _top_k_chance(b, k)).sum() / k)


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic: Callable[[np.ndarray, np.ndarray], float],
                       resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over models resampled with replacement.

    Resamples in which a side is constant (the statistic is undefined) are dropped.
    """
    a, b = _pair(x, y)
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is not allowed; allowed: a number in (0, 1)")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        value = statistic(a[idx], b[idx])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class RankAgreement:
    """Agreement between a cheap and a reference ranking of the same models."""

    models: int
    spearman: float
    spearman_interval: tuple[float, float]
    kendall: float
    kendall_interval: tuple[float, float]
    top_k: int
    top_k_overlap: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def rank_agreement(cheap: Sequence[float], reference: Sequence[float], k: int | None = None,
                   resamples: int = 2000, level: float = 0.95, seed: int = 0) -> RankAgreement:
    """Spearman and Kendall (with bootstrap intervals) and the top-``k`` overlap (default k: a quarter, >= 1)."""
    a, b = _pair(cheap, reference)
    k = max(1, len(a) // 4) if k is None else k
    return RankAgreement(
        models=len(a), spearman=spearman_rho(a, b),
        spearman_interval=bootstrap_interval(a, b, spearman_rho, resamples, level, seed),
        kendall=kendall_tau(a, b), kendall_interval=bootstrap_interval(a, b, kendall_tau, resamples, level, seed),
        top_k=k, top_k_overlap=top_k_overlap(a, b, k), level=level,
    )
