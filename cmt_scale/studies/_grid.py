"""What the three studies share: a fixed list of compound members run as a grid study, matched back to rows.

A study decides its candidates before anything trains (a coefficient grid, an ablation's matched members,
a fidelity study's architectures), so it runs them as a ``sampler: grid`` space through the search driver:
the same trainable, results schema, resume and backends (Optuna or Ray Tune) as any search. Members that
the rounding maps to one architecture are merged here, before the grid is built, so each is trained once
whichever backend runs it (Ray trains grid points in parallel, where a row-based check would be too late).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cmt_scale.proxy import ProxyProtocol
from cmt_scale.search import Backend, RunHooks, compound_member, read_rows, run_search
from scaling import PHI_RANGE, CMTConfig, estimate_cost
from search_spaces import SearchSpace, format_point, parse_point, space_from_dict

__all__ = ["Member", "arch_key", "check_phi", "compound_grid_space", "design_study", "member", "num_classes_of",
           "rows_by_arch", "run_grid", "write_table"]


@dataclass(frozen=True)
class Member:
    """One compound member a study wants trained: its grid point, config and analytic cost."""

    point: str
    config: CMTConfig
    macs: int
    params: int

    @property
    def key(self) -> str:
        return arch_key(self.config.to_dict())


def arch_key(config: Mapping[str, Any]) -> str:
    """An architecture's identity: its config without the class count (which the data set decides) and the
    stochastic-depth rate (a training setting: the family's recipe sets it, and rows record it there)."""
    return json.dumps({k: v for k, v in config.items() if k not in ("num_classes", "drop_path_rate")}, sort_keys=True)


def check_phi(name: str, value: object, positive: bool = False) -> None:
    """Refuse a study's ``phi`` outside the range `scaling.solve` searches (``PHI_RANGE``, or ``(0, high]``
    when ``positive``), naming it and what is allowed. Why: a study trains each member, and beyond that range
    one outgrows a training machine (phi 9 from CMT-Ti has about 4,000x its MACs: killed for memory, after
    the cheaper members had trained)."""
    low, high = PHI_RANGE
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (0 < value if positive else low <= value) or value > high:
        interval = f"(0, {high:g}]" if positive else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a number in {interval} (the solver's range)")


def num_classes_of(protocol: ProxyProtocol) -> int:
    """The protocol's class count (the data set is loaded once per process and cached)."""
    from cmt_scale.proxy import data_for

    return data_for(protocol).num_classes


def member(base: str, base_phi: float, resolution: int, scale_resolution: bool, num_classes: int,
           **values: Any) -> Member:
    """The member at ``values`` (phi, alpha, beta, gamma, stage_ratio), exactly as a grid trial builds it
    (with the data set's ``num_classes``: at proxy resolutions the head is a large share of the MACs)."""
    point = format_point(**values)
    cfg = compound_member(base, {**parse_point(point), "base_phi": base_phi, "scale_resolution": scale_resolution},
                          resolution).replace(num_classes=num_classes)
    cost = estimate_cost(cfg)
    return Member(point, cfg, cost.macs, cost.params)


def compound_grid_space(base: str, points: Iterable[str], base_phi: float, scale_resolution: bool,
                        seeds: Sequence[int] | None = None) -> SearchSpace:
    """A grid space over ``points`` (and ``seeds``), each a distinct architecture."""
    params: dict[str, Any] = {"point": {"type": "categorical", "choices": list(dict.fromkeys(points))}}
    if seeds is not None and len(seeds) > 1:
        params["seed"] = {"type": "categorical", "choices": [int(s) for s in seeds]}
    fixed: dict[str, Any] = {"base_phi": float(base_phi), "scale_resolution": bool(scale_resolution)}
    if seeds is not None and len(seeds) == 1:
        fixed["seed"] = int(seeds[0])
    return space_from_dict({"family": "cmt_compound", "base": base, "sampler": "grid", "params": params,
                            "fixed": fixed})


def design_study(prefix: str, space: SearchSpace) -> str:
    """``prefix-<hash of the design>``: a rerun with other options (base, grid, seeds) in the same run folder
    becomes a study of its own instead of silently reusing or skipping the first one's trials."""
    import hashlib

    design = {"family": space.family, "base": space.base, "fixed": dict(space.fixed),
              "params": {p.name: list(p.choices) for p in space.params}}
    digest = hashlib.sha256(json.dumps(design, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def run_grid(space: SearchSpace, protocol: ProxyProtocol, out: Path, prefix: str, backend: Backend | None,
             hooks: RunHooks | None) -> list[dict]:
    """Run every grid point of ``space`` as the study `design_study` names (resumable); return its rows."""
    study = design_study(prefix, space)
    run_search(space, protocol, out, backend=backend, study=study, hooks=hooks, promotion=None)
    return [r for r in read_rows(out) if r.get("study") == study]


def rows_by_arch(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int | None], Mapping[str, Any]]:
    """Complete rows by (architecture, seed): the lookup a study's table is filled from."""
    out: dict[tuple[str, int | None], Mapping[str, Any]] = {}
    for row in rows:
        if row.get("state") == "complete" and row.get("config"):
            out.setdefault((arch_key(json.loads(row["config"])), row.get("seed")), row)
    return out


def write_table(frame: pd.DataFrame, out: Path, stem: str) -> None:
    """``stem.csv`` (every column, full precision) and ``stem.md`` (for reading and the README)."""
    from analysis import markdown_table

    frame.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(markdown_table(frame.set_index(frame.columns[0])), encoding="utf-8")
