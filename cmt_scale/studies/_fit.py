"""Re-fit the compound coefficients: EfficientNet's procedure applied to CMT, on the user's data.

With ``phi`` fixed (1 by default), every (alpha, beta) on a grid of step ``step`` from 1 is paired with the
gamma that puts the rule's cost growth exactly on the target, ``alpha * beta**1.5 * gamma**2 = 2.5``
(gamma rounded to 0.001, so every candidate is within `TOLERANCE` of the target, and each >= 1). Each
candidate member is trained with the proxy protocol at the resolution ``gamma**phi`` gives it, beside the
paper's (1.2, 1.3, 1.15) trained the same way. A 2-D grid with gamma solved, rather than a 3-D grid
filtered by a tolerance band, keeps every candidate on the constraint and the study small: the paper gives
no grid, and at proxy scale many triples round to one architecture anyway (they are trained once).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cmt_scale.proxy import ProxyProtocol
from cmt_scale.search import Backend, RunHooks
from scaling import PAPER_COEFFICIENTS, CompoundCoefficients

from ._grid import Member, check_phi, compound_grid_space, member, num_classes_of, rows_by_arch, run_grid, write_table

__all__ = ["TARGET", "TOLERANCE", "FitResult", "coefficient_grid", "fit_coefficients"]

TARGET = 2.5  # the paper's alpha * beta**1.5 * gamma**2
TOLERANCE = 0.01  # relative; gamma's rounding to 0.001 stays well inside it


def coefficient_grid(step: float = 0.1, target: float = TARGET) -> list[CompoundCoefficients]:
    """(alpha, beta) from 1 in steps of ``step`` with gamma solved from the constraint; every gamma >= 1."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.01 <= step <= 1:
        raise ValueError(f"step={step!r} is not allowed; allowed: a number in [0.01, 1]")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 1 < target <= 100:
        raise ValueError(f"target={target!r} is not allowed; allowed: a number in (1, 100]")
    out = []
    for i in range(int(target / step) + 1):
        alpha = round(1 + i * step, 6)
        for j in range(int(target / step) + 1):
            beta = round(1 + j * step, 6)
            growth = alpha * beta**1.5
            if growth > target:
                break
            gamma = round(math.sqrt(target / growth), 3)
            if gamma >= 1:
                out.append(CompoundCoefficients(alpha, beta, gamma))
    return out


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    table: pd.DataFrame  # one row per candidate triple, the paper's first
    best: dict[str, Any]
    paper: dict[str, Any]


def _triple_row(coeffs: CompoundCoefficients, m: Member, trained_as: str, row: Any, is_paper: bool) -> dict[str, Any]:
    return {
        "alpha": coeffs.alpha, "beta": coeffs.beta, "gamma": coeffs.gamma, "cost_growth": coeffs.cost_multiplier,
        "img_size": m.config.img_size, "depths": "-".join(map(str, m.config.depths)),
        "embed_dims": "-".join(map(str, m.config.embed_dims)), "macs": m.macs, "params": m.params,
        "top1": None if row is None else row["top1_final"], "trained_as": trained_as, "is_paper": is_paper,
    }


def fit_coefficients(
    protocol: ProxyProtocol,
    out: str | Path,
    phi: float = 1.0,
    base: str = "cmt_ti",
    base_phi: float = 0.0,
    step: float = 0.1,
    target: float = TARGET,
    backend: Backend | None = None,
    hooks: RunHooks | None = None,
) -> FitResult:
    """Train every grid triple's member at ``phi`` (and the paper's) under ``protocol``; rank them by top-1.

    The base is ``base`` scaled to ``base_phi`` by the paper's rule, at the protocol resolution. Writes
    ``fit.csv``/``fit.md`` (all triples), ``fit.json`` (best and paper) and ``fit.png``/``.svg`` to ``out``.
    """
    check_phi("phi", phi, positive=True)
    check_phi("base_phi", base_phi)
    check_phi("base_phi + phi", base_phi + phi)  # the members' phi from the preset itself
    # one family, the paper's architecture at every resolution: the cross-family low-resolution rule (which
    # changes the stem below 64 px) would put a step into the resolution axis itself
    protocol = protocol.replace(low_res="native")
    triples = [PAPER_COEFFICIENTS, *coefficient_grid(step, target)]
    classes = num_classes_of(protocol)
    members = [member(base, base_phi, protocol.resolution, True, classes, phi=float(phi), alpha=c.alpha, beta=c.beta,
                      gamma=c.gamma) for c in triples]
    first_of: dict[str, Member] = {}
    for m in members:
        first_of.setdefault(m.key, m)
    out = Path(out)
    space = compound_grid_space(base, [m.point for m in first_of.values()], base_phi, scale_resolution=True)
    rows = rows_by_arch(run_grid(space, protocol, out, "fit", backend, hooks))
    records = [_triple_row(c, m, first_of[m.key].point, rows.get((m.key, protocol.seed)), i == 0)
               for i, (c, m) in enumerate(zip(triples, members))]
    table = pd.DataFrame(records)
    grid = table[~table["is_paper"] & table["top1"].notna()]
    best_index = grid.sort_values(["top1", "macs"], ascending=[False, True]).index[0] if len(grid) else None
    table["is_best"] = table.index == best_index
    write_table(table, out, "fit")
    best = table.loc[best_index].to_dict() if best_index is not None else {}
    paper = table.iloc[0].to_dict()
    summary = {"phi": phi, "base": base, "base_phi": base_phi, "target": target, "tolerance": TOLERANCE,
               "step": step, "candidates": len(triples) - 1, "architectures_trained": len(first_of),
               "protocol_hash": protocol.protocol_hash, "best": best, "paper": paper}
    (out / "fit.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n", encoding="utf-8")
    if table["top1"].notna().any():
        from analysis import plot_coefficient_fit

        plot_coefficient_fit(table.dropna(subset=["top1"]), out / "fit")
    return FitResult(out, table, best, paper)


def _plain(value: Any) -> Any:
    """numpy scalars (from pandas rows) as JSON numbers."""
    return value.item() if hasattr(value, "item") else str(value)
