"""Reports: the paper's headline comparison from published numbers, and a run's fronts as files, with what
a reader must know to trust them (the rung, the seed noise, the published budgets) said in words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ._compare import compare_families
from ._fronts import pareto_front
from ._load import PUBLISHED_RUNG, load_published, load_results
from ._noise import Bootstrap, noise_statement
from ._plots import plot_fronts
from ._seeds import aggregate_seeds

__all__ = ["HeadlineRow", "Report", "budget_statement", "headline_comparison", "markdown_table", "write_report"]


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


def budget_statement(df: pd.DataFrame) -> str:
    """One line naming each model's training epochs per family, and whether the front mixes budgets: the
    papers trained CMT-Ti for 800 epochs and EfficientNet for 350, so a published gap is not architecture alone.

    >>> print(budget_statement(load_published()))  # doctest: +ELLIPSIS
    The published front mixes training budgets (epochs): cmt: CMT-Ti 800, CMT-XS 400, CMT-S/CMT-B 300; ...
    """
    if "epochs" not in df.columns:
        raise ValueError("frame has no 'epochs' column; allowed: the published numbers (load_published)")
    parts = []
    for family, group in df.groupby("family", sort=True):
        by_epochs = group.groupby("epochs", sort=False)["name"].apply(list)
        if len(by_epochs) == 1:
            parts.append(f"{family} {by_epochs.index[0]:g}")
        else:
            parts.append(f"{family}: " + ", ".join(f"{'/'.join(names)} {epochs:g}"
                                                   for epochs, names in by_epochs.items()))
    if df["epochs"].nunique() == 1:
        return f"Every published model was trained {df['epochs'].iloc[0]:g} epochs: {'; '.join(parts)}."
    return (f"The published front mixes training budgets (epochs): {'; '.join(parts)}. "
            "Its gaps are not the architectures' alone.")


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote: the family table and the notes (rung, seed noise, published budgets)."""

    table: pd.DataFrame
    notes: tuple[str, ...]
    rung: str


def _rung_note(points: pd.DataFrame) -> tuple[str, str]:
    """The rung shown and a line saying so, with how many points are backed by more than one seed."""
    rungs = sorted(points["rung"].astype(str).unique())
    if rungs == [PUBLISHED_RUNG]:
        return PUBLISHED_RUNG, "Published numbers: one figure per model, as each paper reports it (no seed spread)."
    replicated = int((points["n_seeds"] > 1).sum())
    return ", ".join(rungs), (f"Rung: {', '.join(rungs)}; each point is the mean over its seeds "
                              f"({replicated} of {len(points)} points have 2 or more seeds).")


def _has_test(frame: pd.DataFrame) -> bool:
    return "test_top1" in frame.columns and bool(frame["test_top1"].notna().any())


def _front_points_table(fronts: pd.DataFrame) -> pd.DataFrame:
    """The front points as a reader wants them: mean and std over seeds, and how many seeds; the test split's
    top-1 beside them when the rung was scored on it."""
    columns = ["family", "name", "macs", "params", "top1", "top1_std", "n_seeds"]
    if _has_test(fronts):
        columns[-1:-1] = ["test_top1", "test_top1_std"]
    return fronts[columns].rename(columns={"top1": "top1_mean", "test_top1": "test_top1_mean"}).set_index("family")


def held_out_statement(points: pd.DataFrame) -> str | None:
    """Each family's best member (chosen on validation top-1, as the front is) with its test top-1 and spread.

    The test split never selects anything: it is read only for the member validation already chose.
    """
    if not _has_test(points):
        return None
    parts = []
    for family, group in points.dropna(subset=["top1"]).groupby("family", sort=True):
        best = group.loc[group["top1"].idxmax()]
        spread = "" if pd.isna(best.get("test_top1_std")) else f" ± {best['test_top1_std']:.2f}"
        test = "not scored" if pd.isna(best["test_top1"]) else f"{best['test_top1']:.2f}{spread}"
        parts.append(f"{family} {best['name']} {test}")
    return ("Test top-1 of each family's best member by validation (mean ± std over seeds; the test split "
            "selects nothing): " + ", ".join(parts) + ".")


def write_report(paths: Sequence[str | Path] | None, out: str | Path, published: bool = False,
                 budgets: Sequence[float] = (), levels: Sequence[float] = (), reference_family: str | None = None,
                 title: str = "", rung: str | None = None) -> Report:
    """Write ``fronts.png/svg``, ``comparison.csv/md`` and ``fronts.csv`` for the runs (or published data) to
    ``out``; the fronts go through seed means of one rung (``rung``, default the longest the runs have).

    ``comparison.md`` holds the family table, which families are within seed noise of each other, the front
    points (mean, std, seeds) and, with ``published``, the papers' mixed training budgets. Those lines are
    also returned (``Report.notes``) for a caller to print.
    """
    if not paths and not published:
        raise ValueError("nothing to report: give run folders or --published")
    df = load_results(paths or [], include_published=published, rung=rung)  # checked before any file is written
    points = aggregate_seeds(df)
    bootstrap = Bootstrap()
    table = compare_families(points, budgets=budgets, levels=levels, reference_family=reference_family,
                             bootstrap=bootstrap)
    rungs, rung_line = _rung_note(points)
    notes = [rung_line, noise_statement(table, bootstrap.level)]
    tested = held_out_statement(points)
    if tested:
        notes.append(tested)
    papers = df[df["rung"] == PUBLISHED_RUNG]
    if len(papers):
        notes.append(budget_statement(papers))
    fronts = pareto_front(points)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv")
    markdown = [f"# {title or 'Families compared'}", "", markdown_table(table), *notes, "",
                "## Front points (mean and std over seeds)", "", markdown_table(_front_points_table(fronts))]
    (out / "comparison.md").write_text("\n".join(markdown), encoding="utf-8")
    fronts.drop(columns=["top1_seeds"]).to_csv(out / "fronts.csv", index=False)
    plot_fronts(points, path=out / "fronts", title=title)
    return Report(table, tuple(notes), rungs)
