"""Can a cheap proxy's ranking be trusted? The same architectures under a cheap and a reference protocol.

The architectures are compound members of ``base`` (at the protocol resolution, as searches build them) and
the baseline families' members. Each is trained under both protocols on the same data; the two validation
top-1 rankings are compared with Spearman's rho and Kendall's tau-b (each with a bootstrap interval over
architectures) and the overlap of their top-k, over all architectures and within each family (across families
a proxy can look trustworthy only because it separates the families). By default the cheap protocol is the one
searches use (`search.DEFAULT_SEARCH_PROTOCOL`, a search's cheap rung) and the reference is a search's
reference rung (`search.DEFAULT_PROMOTION`, the baselines' protocol): the study measures how far the promotion
rung changes the cheap rung's ranking.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import RankAgreement, rank_agreement
from cmt_scale.proxy import ProxyProtocol, baseline_families, get_family
from cmt_scale.search import (
    DEFAULT_PROMOTION,
    DEFAULT_SEARCH_PROTOCOL,
    Backend,
    RunHooks,
    check_protocol_fits,
    check_resolution,
)
from scaling import check_int
from search_spaces import SearchSpace, format_point, space_from_dict

from ._grid import check_phi, compound_grid_space, run_grid, write_table

__all__ = ["DEFAULT_PHIS", "DEFAULT_REFERENCE", "FidelityResult", "proxy_fidelity"]

DEFAULT_PHIS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5)
DEFAULT_REFERENCE = DEFAULT_PROMOTION.protocol(DEFAULT_SEARCH_PROTOCOL)  # a search's reference rung


@dataclass(frozen=True)
class FidelityResult:
    run_dir: Path
    table: pd.DataFrame  # one row per architecture trained under both protocols
    agreement: RankAgreement | None
    by_family: dict[str, RankAgreement]  # within each family of 3 or more: can the proxy rank inside one?


def _check_pair(cheap: ProxyProtocol, reference: ProxyProtocol) -> None:
    if (cheap.dataset, cheap.data_root) != (reference.dataset, reference.data_root):
        raise ValueError(f"reference dataset={reference.dataset!r} is not allowed with "
                         f"cheap dataset={cheap.dataset!r}; "
                         "allowed: the same data set for both protocols")
    if cheap.protocol_hash == reference.protocol_hash:
        raise ValueError(f"reference protocol {reference.protocol_hash} is not allowed; allowed: a protocol that "
                         "differs from the cheap one (more images, epochs or resolution)")


def _grids(base: str, phis: Sequence[float], families: Sequence[str]) -> list[tuple[str, SearchSpace]]:
    """The design's grid spaces with their study prefixes: the CMT members, then each baseline family."""
    grids = [("cmt", compound_grid_space(base, [format_point(phi=float(p)) for p in phis], 0.0, False))]
    for family in families:
        grids.append((family, space_from_dict({"family": family, "sampler": "grid", "params": {
            "model": {"type": "categorical", "choices": list(get_family(family).members)}}})))
    return grids


def _train_all(protocol: ProxyProtocol, out: Path, grids: Sequence[tuple[str, SearchSpace]],
               backend: Backend | None, hooks: RunHooks | None) -> pd.DataFrame:
    """Train every architecture under ``protocol``; their top-1 by (family, name), this design's rows only."""
    rows = [row for prefix, space in grids for row in run_grid(space, protocol, out, prefix, backend, hooks)]
    frame = pd.DataFrame([{"family": r["family"], "name": r["name"], "macs": r["macs"], "top1": r["top1_final"]}
                          for r in rows if r["state"] == "complete"], columns=["family", "name", "macs", "top1"])
    return frame.drop_duplicates(["family", "name"])


def proxy_fidelity(
    cheap: ProxyProtocol = DEFAULT_SEARCH_PROTOCOL,
    reference: ProxyProtocol = DEFAULT_REFERENCE,
    out: str | Path = "runs/fidelity",
    phis: Sequence[float] = DEFAULT_PHIS,
    base: str = "cmt_ti",
    families: Sequence[str] = ("deit", "efficientnet"),
    k: int | None = None,
    resamples: int = 2000,
    backend: Backend | None = None,
    hooks: RunHooks | None = None,
) -> FidelityResult:
    """Train the architectures under both protocols (``out/cheap``, ``out/reference``; resumable) and compare
    the rankings. Writes ``fidelity.csv``/``.md``, ``fidelity.json`` and ``fidelity.png``/``.svg`` to ``out``."""
    _check_pair(cheap, reference)
    unknown = [f for f in families if f not in baseline_families()]
    if unknown:
        raise ValueError(f"families={','.join(families)!r} is not allowed; allowed: {', '.join(baseline_families())}")
    for phi in phis:
        check_phi("phi", phi)
    models = len(phis) + sum(len(get_family(f).members) for f in families)
    if models < 3:
        raise ValueError("fewer than 3 architectures is not allowed; allowed: at least 3 to compare two rankings")
    check_int("k", k, high=models, none_ok=True)  # at most the architectures
    check_int("resamples", resamples)
    grids = _grids(base, phis, families)
    for protocol in (cheap, reference):  # both before anything trains: the reference runs second, hours later
        for _, space in grids:
            check_resolution(space, protocol.resolution, protocol)
        check_protocol_fits(protocol)
    out = Path(out)
    scores = {name: _train_all(protocol, out / name, grids, backend, hooks)
              for name, protocol in (("cheap", cheap), ("reference", reference))}
    both = scores["cheap"].merge(scores["reference"], on=["family", "name"], suffixes=("_cheap", "_reference"))
    table = pd.DataFrame({
        "name": both["name"], "family": both["family"], "macs": both["macs_cheap"],
        "cheap_top1": both["top1_cheap"], "reference_top1": both["top1_reference"],
        "cheap_rank": both["top1_cheap"].rank(ascending=False),
        "reference_rank": both["top1_reference"].rank(ascending=False),
    }).sort_values("reference_rank").reset_index(drop=True)
    agreement = (rank_agreement(table["cheap_top1"], table["reference_top1"], k=k, resamples=resamples)
                 if len(table) >= 3 else None)
    # Across families a proxy can look trustworthy only because it separates the families; the question a
    # search asks is the ranking inside one.
    by_family = {str(family): rank_agreement(group["cheap_top1"], group["reference_top1"], k=max(1, len(group) // 4),
                                             resamples=resamples)
                 for family, group in table.groupby("family") if len(group) >= 3}
    write_table(table, out, "fidelity")
    summary: dict[str, Any] = {"architectures": len(table), "agreement": agreement.to_dict() if agreement else None,
                               "by_family": {f: a.to_dict() for f, a in by_family.items()},
                               "cheap": cheap.to_dict(), "reference": reference.to_dict(),
                               "cheap_hash": cheap.protocol_hash, "reference_hash": reference.protocol_hash}
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    if len(table):
        from analysis import plot_rank_agreement

        plot_rank_agreement(table, out / "fidelity")
    return FidelityResult(out, table, agreement, by_family)
