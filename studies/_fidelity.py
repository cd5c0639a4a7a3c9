"""Can a cheap proxy's ranking be trusted? The same architectures under a cheap and a reference protocol.

The architectures are compound members of ``base`` (at the protocol resolution, as searches build them) and
the baseline families' members. Each is trained under both protocols on the same data; the two validation
top-1 rankings are compared with Spearman's rho and Kendall's tau-b (each with a bootstrap interval over
architectures) and the overlap of their top-k, over all architectures and within each family (across families a proxy can
look trustworthy only because it separates the families). By default the cheap protocol is the one searches use
(`proxy.DEFAULT_PROTOCOL`) and the reference trains on twice the images for 8 epochs: on 2 CPU cores the
14 default architectures take about 2 hours in all (see the README for the measured figure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis import RankAgreement, rank_agreement
from proxy import BASELINE_FAMILIES, DEFAULT_PROTOCOL, ProxyProtocol
from search import read_rows
from search_spaces import format_point, space_from_dict

from ._grid import RunOptions, compound_grid_space, run_grid, write_table

__all__ = ["DEFAULT_PHIS", "DEFAULT_REFERENCE", "FidelityResult", "proxy_fidelity"]

DEFAULT_PHIS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5)
DEFAULT_REFERENCE = DEFAULT_PROTOCOL.replace(train_size=2 * (DEFAULT_PROTOCOL.train_size or 8000), epochs=8)


@dataclass(frozen=True)
class FidelityResult:
    run_dir: Path
    table: pd.DataFrame  # one row per architecture trained under both protocols
    agreement: RankAgreement | None
    by_family: dict[str, RankAgreement]  # within each family of 3 or more: can the proxy rank inside one?


def _check_pair(cheap: ProxyProtocol, reference: ProxyProtocol) -> None:
    if (cheap.dataset, cheap.data_root) != (reference.dataset, reference.data_root):
        raise ValueError(f"reference dataset={reference.dataset!r} is not allowed with cheap dataset={cheap.dataset!r}; "
                         "allowed: the same data set for both protocols")
    if cheap.protocol_hash == reference.protocol_hash:
        raise ValueError(f"reference protocol {reference.protocol_hash} is not allowed; allowed: a protocol that "
                         "differs from the cheap one (more images, epochs or resolution)")


def _train_all(protocol: ProxyProtocol, out: Path, base: str, phis: Sequence[float], families: Sequence[str],
               options: RunOptions) -> None:
    run_grid(compound_grid_space(base, [format_point(phi=float(p)) for p in phis], 0.0, False), protocol, out,
             "cmt", options)
    for family in families:
        space = space_from_dict({"family": family, "sampler": "grid",
                                 "params": {"model": {"type": "categorical", "choices": list(BASELINE_FAMILIES[family])}}})
        run_grid(space, protocol, out, family, options)


def _top1_by_model(run_dir: Path) -> pd.DataFrame:
    rows = [r for r in read_rows(run_dir) if r["state"] == "complete"]
    frame = pd.DataFrame([{"family": r["family"], "name": r["name"], "macs": r["macs"], "top1": r["top1_final"]}
                          for r in rows], columns=["family", "name", "macs", "top1"])
    return frame.drop_duplicates(["family", "name"])


def proxy_fidelity(
    cheap: ProxyProtocol = DEFAULT_PROTOCOL,
    reference: ProxyProtocol = DEFAULT_REFERENCE,
    out: str | Path = "runs/fidelity",
    phis: Sequence[float] = DEFAULT_PHIS,
    base: str = "cmt_ti",
    families: Sequence[str] = ("deit", "efficientnet"),
    k: int | None = None,
    resamples: int = 2000,
    options: RunOptions = RunOptions(),
) -> FidelityResult:
    """Train the architectures under both protocols (``out/cheap``, ``out/reference``; resumable) and compare
    the rankings. Writes ``fidelity.csv``/``.md``, ``fidelity.json`` and ``fidelity.png``/``.svg`` to ``out``."""
    _check_pair(cheap, reference)
    unknown = [f for f in families if f not in BASELINE_FAMILIES]
    if unknown:
        raise ValueError(f"families={','.join(families)!r} is not allowed; allowed: {', '.join(BASELINE_FAMILIES)}")
    if len(phis) + sum(len(BASELINE_FAMILIES[f]) for f in families) < 3:
        raise ValueError("fewer than 3 architectures is not allowed; allowed: at least 3 to compare two rankings")
    out = Path(out)
    for name, protocol in (("cheap", cheap), ("reference", reference)):
        _train_all(protocol, out / name, base, phis, families, options)
    both = _top1_by_model(out / "cheap").merge(_top1_by_model(out / "reference"), on=["family", "name"],
                                               suffixes=("_cheap", "_reference"))
    table = pd.DataFrame({
        "name": both["name"], "family": both["family"], "macs": both["macs_cheap"],
        "cheap_top1": both["top1_cheap"], "reference_top1": both["top1_reference"],
        "cheap_rank": both["top1_cheap"].rank(ascending=False), "reference_rank": both["top1_reference"].rank(ascending=False),
    }).sort_values("reference_rank").reset_index(drop=True)
    agreement = (rank_agreement(table["cheap_top1"], table["reference_top1"], k=k, resamples=resamples)
                 if len(table) >= 3 else None)
    # Across families a proxy can look trustworthy only because it separates the families; the question a
    # search asks is the ranking inside one.
    by_family = {str(family): rank_agreement(group["cheap_top1"], group["reference_top1"], k=max(1, len(group) // 3),
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
