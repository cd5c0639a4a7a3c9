"""Reports: the paper's headline comparison from published numbers, and a run's fronts as files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ._fronts import compare_families, pareto_front
from ._load import load_published, load_results
from ._plots import plot_fronts

__all__ = ["HeadlineRow", "headline_comparison", "markdown_table", "write_report"]


@dataclass(frozen=True)
class HeadlineRow:
    """CMT-S against the nearest-accuracy rival that is at least as accurate or close: the FLOPs ratio."""

    ours: str
    rival: str
    ours_top1: float
    rival_top1: float
    ours_macs: float
    rival_macs: float

    @property
    def macs_ratio(self) -> float:
        return self.rival_macs / self.ours_macs


def headline_comparison(df: pd.DataFrame | None = None, ours: str = "CMT-S",
                        rivals: Sequence[str] = ("DeiT-S", "DeiT-B", "DeiT-B↑384", "EfficientNet-B4",
                                                 "EfficientNet-B5")) -> list[HeadlineRow]:
    """How many times more MACs each rival costs than ``ours`` (the abstract claims 14x vs DeiT, 2x vs
    EfficientNet "at similar accuracy"; these rows show which rivals those ratios correspond to)."""
    df = load_published() if df is None else df
    by_name = df.set_index("name")
    me = by_name.loc[ours]
    return [HeadlineRow(ours, r, float(me["top1"]), float(by_name.loc[r, "top1"]), float(me["macs"]),
                        float(by_name.loc[r, "macs"])) for r in rivals]


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` (its index first), floats to 4 significant digits; no tabulate needed."""
    cols = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for index, row in frame.iterrows():
        cells = [str(index)] + [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(paths: Sequence[str | Path] | None, out: str | Path, published: bool = False,
                 budgets: Sequence[float] = (), levels: Sequence[float] = (), reference_family: str | None = None,
                 title: str = "") -> pd.DataFrame:
    """Write ``fronts.png/svg``, ``comparison.csv/md`` and ``fronts.csv`` for the runs (or published data) to ``out``."""
    if not paths and not published:
        raise ValueError("nothing to report: give run folders or --published")
    df = load_results(paths or [], include_published=published)  # checked before any file is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_families(df, budgets=budgets, levels=levels, reference_family=reference_family)
    table.to_csv(out / "comparison.csv")
    (out / "comparison.md").write_text(markdown_table(table), encoding="utf-8")
    pareto_front(df).to_csv(out / "fronts.csv", index=False)
    plot_fronts(df, path=out / "fronts", title=title)
    return table
