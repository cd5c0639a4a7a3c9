"""Which axis to scale: depth only, width only, resolution only, stage ratio only, or all at once (compound).

From one base member, each strategy is scaled to the same MACs budgets (about 2x and 4x the base) and
trained with every seed, as in EfficientNet's scaling figure. Each single-axis strategy is the compound
rule with the other coefficients at 1 (depth: alpha 1.2; width: beta 1.3; resolution: gamma 1.15; stage
ratio: depth grows with its blocks re-split in another ratio); its ``phi`` is chosen so the member's exact
analytic MACs are nearest the budget. Compound moves several axes at once, so its rounding can leave a gap
around a budget; there the member is the solver's (`scaling.solve`, as ``cmt-scale --target-flops``).

Resolution moves on the coarsest grid (multiples of 32 px: four stages' total stride, see
`scaling.resolution_step`), so at proxy resolutions it cannot land near an arbitrary budget. Each budget is
therefore set by the resolution-only member nearest ``multiple x base`` (when that member is a real step
from the base and from the other budgets), and the other strategies are matched to it; where no resolution
step exists near a multiple, the budget is ``multiple x base`` and resolution-only is left out there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmt_scale.proxy import ProxyProtocol
from cmt_scale.search import Backend, RunHooks
from scaling import PAPER_COEFFICIENTS, PHI_LIMIT, estimate_cost, parse_stage_ratio, solve
from search_spaces import format_point

from ._grid import Member, check_phi, compound_grid_space, member, num_classes_of, rows_by_arch, run_grid, write_table

__all__ = ["STRATEGIES", "AblationResult", "ablate_scaling", "match_budget"]

# strategy -> the compound coefficients it scales with (the others held at 1)
_PAPER = PAPER_COEFFICIENTS
STRATEGIES: dict[str, dict[str, float]] = {
    "depth": {"alpha": _PAPER.alpha, "beta": 1.0, "gamma": 1.0},
    "width": {"alpha": 1.0, "beta": _PAPER.beta, "gamma": 1.0},
    "resolution": {"alpha": 1.0, "beta": 1.0, "gamma": _PAPER.gamma},
    "stage_ratio": {"alpha": _PAPER.alpha, "beta": 1.0, "gamma": 1.0},
    "compound": {"alpha": _PAPER.alpha, "beta": _PAPER.beta, "gamma": _PAPER.gamma},
}
MATCH_TOLERANCE = 0.05
_PHI_STEP = 0.01


def match_budget(base: str, base_phi: float, resolution: int, strategy: str, target_macs: float,
                 stage_ratio: str | None = None, num_classes: int = 1000) -> Member:
    """The ``strategy`` member whose analytic MACs are nearest ``target_macs`` (phi on a 0.01 grid)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    values = dict(STRATEGIES[strategy], stage_ratio=stage_ratio if strategy == "stage_ratio" else None)
    best: Member | None = None
    for i in range(1, int(PHI_LIMIT / _PHI_STEP) + 1):
        candidate = member(base, base_phi, resolution, True, num_classes, phi=round(i * _PHI_STEP, 2), **values)
        if best is None or abs(candidate.macs - target_macs) < abs(best.macs - target_macs):
            best = candidate
        if candidate.macs > 2 * target_macs:  # MACs only grow with phi: nothing nearer beyond here
            break
    assert best is not None
    if strategy == "compound" and abs(best.macs / target_macs - 1) > MATCH_TOLERANCE:
        best = _solved(base, base_phi, resolution, target_macs, num_classes, best)
    return best


def _solved(base: str, base_phi: float, resolution: int, target_macs: float, num_classes: int, rule: Member) -> Member:
    """The member `scaling.solve` gives for the budget (what ``cmt-scale --target-flops`` prints): the rule
    member nearest the target, then its rounding neighbourhood (a block, a width step, 32 px either way)."""
    origin = member(base, base_phi, resolution, True, num_classes, phi=0.0).config
    try:
        solution = solve(target_flops=target_macs, base=origin, phi_range=(0.0, 3.0))
    except ValueError:  # out of the solver's reach: keep the rule's nearest member
        return rule
    cost = estimate_cost(solution.config)
    if abs(cost.macs / target_macs - 1) >= abs(rule.macs / target_macs - 1):
        return rule
    point = format_point(phi=round(float(solution.phi), 2), config=solution.config.to_dict())
    return Member(point, solution.config, cost.macs, cost.params)


@dataclass(frozen=True)
class AblationResult:
    run_dir: Path
    members: pd.DataFrame  # one row per strategy and budget (and the base): MACs, top-1 mean and spread
    budgets: list[float]


def _budgets(base: str, base_phi: float, resolution: int, base_macs: int, multiples: Sequence[float],
             num_classes: int) -> list[tuple[float, float, bool]]:
    """(multiple, target MACs, resolution usable) per multiple; see the module docstring."""
    out: list[tuple[float, float, bool]] = []
    used: set[int] = {base_macs}
    for multiple in multiples:
        by_resolution = match_budget(base, base_phi, resolution, "resolution", multiple * base_macs,
                                     num_classes=num_classes)
        usable = by_resolution.macs not in used and 0.7 <= by_resolution.macs / (multiple * base_macs) <= 1.4
        out.append((multiple, float(by_resolution.macs) if usable else multiple * base_macs, usable))
        used.add(by_resolution.macs)
    return out


def ablate_scaling(
    protocol: ProxyProtocol,
    out: str | Path,
    base: str = "cmt_ti",
    base_phi: float = 0.0,
    multiples: Sequence[float] = (2.0, 4.0),
    seeds: Sequence[int] = (0, 1),
    stage_ratio: str = "2:2:6:2",
    backend: Backend | None = None,
    hooks: RunHooks | None = None,
) -> AblationResult:
    """Scale ``base`` (at ``base_phi``, protocol resolution) by each strategy to each budget; train each with
    every seed. Writes ``ablation.csv``/``.md`` (mean and spread per member), ``ablation.json`` and
    ``ablation.png``/``.svg`` to ``out``."""
    parse_stage_ratio(stage_ratio)
    check_phi("base_phi", base_phi)
    if not multiples or any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 1 < m <= 64
                            for m in multiples):
        raise ValueError(f"multiples={list(multiples)!r} is not allowed; allowed: numbers in (1, 64]")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)!r} is not allowed; allowed: one or more distinct integers")
    # one family, the paper's architecture at every resolution: the cross-family low-resolution rule (which
    # changes the stem below 64 px) would put a step into the resolution axis itself
    protocol = protocol.replace(low_res="native")
    res, classes = protocol.resolution, num_classes_of(protocol)
    origin = member(base, base_phi, res, True, classes, phi=0.0)
    plan: list[tuple[str, float, float, Member]] = [("base", 1.0, float(origin.macs), origin)]
    budgets = _budgets(base, base_phi, res, origin.macs, multiples, classes)
    for multiple, target, resolution_usable in budgets:
        for strategy in STRATEGIES:
            if strategy == "resolution" and not resolution_usable:
                continue
            plan.append((strategy, multiple, target,
                         match_budget(base, base_phi, res, strategy, target, stage_ratio, classes)))
    out = Path(out)
    first_of: dict[str, Member] = {}  # two strategies that round to one architecture train it once
    for *_, m in plan:
        first_of.setdefault(m.key, m)
    space = compound_grid_space(base, [m.point for m in first_of.values()], base_phi, scale_resolution=True,
                                seeds=seeds)
    rows = rows_by_arch(run_grid(space, protocol, out, "ablation", backend, hooks))
    records = []
    for strategy, multiple, target, m in plan:
        top1 = [rows[(m.key, s)]["top1_final"] for s in seeds if (m.key, s) in rows]
        records.append({
            "strategy": strategy, "multiple": multiple, "budget_x_base": target / origin.macs, "target_macs": target,
            "macs": m.macs, "budget_error": m.macs / target - 1,
            "matched": abs(m.macs / target - 1) <= MATCH_TOLERANCE, "params": m.params, "img_size": m.config.img_size,
            "depths": "-".join(map(str, m.config.depths)), "embed_dims": "-".join(map(str, m.config.embed_dims)),
            "point": m.point, "seeds": len(top1), "top1_mean": float(np.mean(top1)) if top1 else None,
            "top1_std": float(np.std(top1, ddof=1)) if len(top1) > 1 else None,
            "top1_min": min(top1) if top1 else None, "top1_max": max(top1) if top1 else None,
        })
    table = pd.DataFrame(records)
    write_table(table, out, "ablation")
    summary = {"base": base, "base_phi": base_phi, "seeds": list(seeds), "stage_ratio": stage_ratio,
               "match_tolerance": MATCH_TOLERANCE, "protocol_hash": protocol.protocol_hash,
               "budgets": [{"multiple": m, "target_macs": t, "resolution_included": u}
                           for m, t, u in budgets],
               "best_per_budget": _best_per_budget(table)}
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if table["top1_mean"].notna().any():
        from analysis import plot_scaling_strategies

        plot_scaling_strategies(table.dropna(subset=["top1_mean"]), out / "ablation")
    return AblationResult(out, table, [t for _, t, _ in budgets])


def _best_per_budget(table: pd.DataFrame) -> dict[str, str]:
    done = table[(table["strategy"] != "base") & table["top1_mean"].notna()]
    return {f"{m:g}x": str(group.sort_values("top1_mean", ascending=False)["strategy"].iloc[0])
            for m, group in done.groupby("multiple")}
