"""Multi-objective successive halving ("promotion"): a cheap rung for every candidate, a reference rung for
the promising ones, the front reported from the reference rung.

Neither Optuna nor Ray Tune can prune a multi-objective study (optuna#3450), so a ``pareto`` search would
otherwise train every candidate in full, or rank members on a schedule too short to separate them (the
proxy-fidelity study found a within-CMT Spearman of -0.12 between 1 and 3 epochs). Here every candidate
trains on the cheap rung; the non-dominated set plus a margin is then re-trained on the reference rung
(more images and epochs) with two or more seeds, as a grid study through the same backend, so it has the
same trainable, schema (``rung`` column), resume and backends as any search. The promotion rule is a
pure function of the cheap rung's rows, so a resumed search (after kill -9 at either rung) promotes the
same members and retrains none that finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cmt_scale.proxy import DEFAULT_PROTOCOL, ProxyProtocol
from scaling import check_int
from search_spaces import SearchSpace, space_from_dict

from ._results import measured_rows, seed_means

__all__ = ["DEFAULT_PROMOTION", "DEFAULT_SEARCH_PROTOCOL", "Promotion", "non_dominated_layers", "promoted_rows",
           "reference_space"]

_MARGINS = ("layer", "none")


@dataclass(frozen=True)
class Promotion:
    """The reference rung: its budget (``train_size`` images, ``None`` for all, for ``epochs``, ``None`` for
    the cheap rung's), its seeds, and the margin promoted beyond the cheap rung's front: ``"layer"`` (the
    next non-dominated layer), ``"none"``, or a number of top-1 points (members within that much of the front
    at their cost, e.g. the cheap rung's seed spread). ``test`` also scores the reference rung on the data
    set's test split (reported beside the validation top-1, never used to select or rank).

    The default, every training image (58,000 on Fashion-MNIST) for the cheap rung's epochs (one) with seeds
    0 and 1, is `DEFAULT_PROTOCOL`, the rung the baselines train on: a search's reference points and the baselines' are
    the same measurement. A search screens its candidates on `DEFAULT_SEARCH_PROTOCOL` (15,000 images), so
    that a default search (20 candidates, then the promoted ones with two seeds) fits 90 minutes on 2 CPU
    cores (measured: benchmarks/RESULTS.md); a recorded study can afford a longer rung (``epochs=5``) and run
    it in pieces, since it resumes."""

    train_size: int | None = None
    epochs: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    margin: str | float = "layer"
    test: bool = False

    def __post_init__(self) -> None:
        if self.train_size is not None and (isinstance(self.train_size, bool) or not isinstance(self.train_size, int)
                                            or self.train_size < 1):
            raise ValueError(f"reference train_size={self.train_size!r} is not allowed; allowed: an integer >= 1 "
                             "or None (all)")
        check_int("reference epochs", self.epochs, none_ok=True)
        seeds = tuple(self.seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"reference seeds={self.seeds!r} is not allowed; allowed: 2 or more distinct integers "
                             "(a reference point comes with its seed spread)")
        object.__setattr__(self, "seeds", seeds)
        margin = self.margin
        if isinstance(margin, str) and margin not in _MARGINS:
            try:
                margin = float(margin)
            except ValueError:
                raise ValueError(f"margin={self.margin!r} is not allowed; allowed: layer, none or a number of top-1 "
                                 "points >= 0") from None
        if not isinstance(margin, str) and (isinstance(margin, bool) or not margin >= 0):
            raise ValueError(f"margin={self.margin!r} is not allowed; allowed: layer, none or a number >= 0")
        object.__setattr__(self, "margin", margin)
        if not isinstance(self.test, bool):
            raise ValueError(f"reference test={self.test!r} is not allowed; allowed: True or False")

    def protocol(self, cheap: ProxyProtocol) -> ProxyProtocol:
        """The reference rung's protocol: the cheap one with this rung's images and epochs (same recipes, rule
        and data: only the schedule grows)."""
        return cheap.replace(train_size=self.train_size, epochs=self.epochs or cheap.epochs,
                             eval_test=self.test or cheap.eval_test)

    def images(self, cheap: ProxyProtocol, available: int) -> int:
        """Images one reference trial sees (``available``: training images less the validation split)."""
        return min(self.train_size or available, available) * (self.epochs or cheap.epochs)


DEFAULT_PROMOTION = Promotion()
# A search's cheap rung: the baselines' protocol on a quarter of its images (15,000 of 58,000). The search
# screens 20 candidates there; the promoted ones are re-measured on the full protocol with two seeds.
DEFAULT_SEARCH_PROTOCOL = DEFAULT_PROTOCOL.replace(train_size=15_000)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def non_dominated_layers(points: Sequence[tuple[float, float]]) -> list[int]:
    """Each point's non-dominated layer for (cost to minimise, metric to maximise): 0 is the Pareto front,
    1 the front once layer 0 is removed, and so on (the ranking NSGA-II sorts by)."""
    layer = [-1] * len(points)
    remaining = set(range(len(points)))
    depth = 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            layer[i] = depth
        remaining -= front
        depth += 1
    return layer


def _within(points: Sequence[tuple[float, float]], front: Sequence[int], points_margin: float) -> list[bool]:
    """Whether each point's top-1 is within ``points_margin`` of the best front top-1 at its cost or less."""
    out = []
    for cost, metric in points:
        best = max((points[i][1] for i in front if points[i][0] <= cost), default=float("-inf"))
        out.append(metric >= best - points_margin)
    return out


def promoted_rows(rows: Sequence[Mapping[str, Any]], margin: str | float = "layer") -> list[Mapping[str, Any]]:
    """The cheap rung's members to re-train: the non-dominated set plus ``margin``, one row per architecture
    (its first row; placed at its mean top-1 over seeds), cheapest first."""
    # a member trained with several seeds on the cheap rung is placed at its mean top-1
    members = seed_means([r for r in measured_rows(rows) if (r.get("rung") or "cheap") == "cheap"])
    points = [(float(r["macs"]), float(r["top1_final"])) for r in members]
    layers = non_dominated_layers(points)
    if margin == "layer":
        keep = [layer <= 1 for layer in layers]
    elif margin == "none":
        keep = [layer == 0 for layer in layers]
    else:
        keep = _within(points, [i for i, layer in enumerate(layers) if layer == 0], float(margin))
    return sorted((r for r, k in zip(members, keep) if k), key=lambda r: (float(r["macs"]), str(r["config"])))


def reference_space(space: SearchSpace, promoted: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> SearchSpace:
    """A grid space over the promoted members (named outright by their config) and ``seeds``, in the same
    family and budget as ``space``."""
    configs = [str(r["config"]) for r in promoted]
    budget = {k: v for k, v in (("max_macs", space.budget.max_macs), ("max_params", space.budget.max_params),
                                ("max_latency_ms", space.budget.max_latency_ms)) if v is not None}
    return space_from_dict({
        "family": space.family, "sampler": "grid", "budget": budget or None,
        **({"base": space.base} if space.base else {}),
        "params": {"config": {"type": "categorical", "choices": configs},
                   "seed": {"type": "categorical", "choices": [int(s) for s in seeds]}},
    }, f"{space.source} (reference rung)")


