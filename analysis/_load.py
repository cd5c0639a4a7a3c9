"""Reading results: a run's table (``results.parquet`` / ``.csv``) or the shipped published numbers.

Everything downstream works on one tidy frame with the columns ``family``, ``name``, ``macs``,
``params``, ``top1``, ``state``, ``source`` (the run folder, or the paper a number comes from) and ``rung``
(the training budget a row was measured at), plus ``seed``, ``config`` and ``recipe`` where a run has them.
One trial is one row: seed replicates stay apart here and are averaged by `aggregate_seeds`.
This module imports nothing else of the toolkit: analysis needs a results file, not a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

__all__ = ["PUBLISHED_CSV", "PUBLISHED_RUNG", "RUNGS", "STANDARD_COLUMNS", "load_published", "load_results"]

PUBLISHED_CSV = Path(__file__).with_name("data") / "published.csv"
STANDARD_COLUMNS = ("family", "name", "macs", "params", "top1", "state", "source", "rung")
# A search's training budgets, shortest first; a table written before rungs existed is all "cheap".
RUNGS = ("cheap", "reference")
# The papers' numbers are each paper's own full schedule, not one of our rungs.
PUBLISHED_RUNG = "published"
# The columns a run's table must have (the search package's schema; only these are read).
_RUN_COLUMNS = ("trial_id", "family", "name", "config", "macs", "params", "top1_final", "top1_best", "state",
                "protocol_hash", "dataset")
_PUBLISHED_COLUMNS = ("family", "name", "params_m", "macs_g", "resolution", "top1", "source", "epochs")
# Carried through from a run's table when it has them (older tables lack seed/recipe/test_top1).
_PASSED_THROUGH = ("seed", "config", "recipe", "test_top1")


def load_published(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The papers' ImageNet figures (CMT, DeiT, EfficientNet), one row per model, with a citation each.

    ``epochs`` is each model's training schedule: the papers do not share one (CMT-Ti 800, EfficientNet 350),
    so their front mixes budgets; `budget_statement` says so in words.
    """
    frame = _read(Path(path))
    _require(frame, _PUBLISHED_COLUMNS, Path(path))
    out = pd.DataFrame({
        "family": frame["family"], "name": frame["name"], "macs": frame["macs_g"] * 1e9,
        "params": frame["params_m"] * 1e6, "top1": frame["top1"].astype(float), "state": "complete",
        "source": frame["source"], "rung": PUBLISHED_RUNG,
    })
    out["resolution"] = frame["resolution"]
    out["epochs"] = pd.to_numeric(frame["epochs"], errors="coerce")
    bad = out.loc[~(out["epochs"] > 0), "name"].tolist()
    if bad:
        raise ValueError(f"{path}: epochs missing or not positive for {bad}; allowed: a training length per row")
    return out


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"results file {str(path)!r} does not exist")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the same user error
        raise ValueError(f"{path}: not a results table ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def _require(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a results table has {list(columns)}")


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"{str(path)!r} holds no results.parquet or results.csv (is it a run folder?)")
    return path


def _protocols(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """The (data set, protocol hash) pairs a run's table was trained under (one for a well-kept run)."""
    return set(zip(frame["dataset"].astype(str), frame["protocol_hash"].astype(str).str[:8]))


def _check_one_protocol(protocols: dict[str, set[tuple[str, str]]]) -> None:
    """Refuse to put runs of different proxy protocols (or proxy runs and the papers' ImageNet numbers) in
    one comparison: accuracies from different data sets, subsets or schedules do not compare, and a front
    drawn across them would silently mislead."""
    if len(set().union(*protocols.values())) <= 1:
        return
    found = "; ".join(f"{source}: " + ", ".join(f"{d} (protocol {h})" for d, h in sorted(pairs))
                      for source, pairs in protocols.items())
    raise ValueError(f"the runs were trained under different protocols ({found}); allowed: runs of one protocol "
                     f"(one data set, subset, resolution and schedule) per report; report the others separately")


def _rungs_of(frame: pd.DataFrame, path: Path) -> pd.Series:
    """Each row's rung; a table written before rungs existed trained everything on the cheap rung."""
    if "rung" not in frame.columns:
        return pd.Series(RUNGS[0], index=frame.index)
    rungs = frame["rung"].fillna(RUNGS[0]).astype(str)
    unknown = sorted(set(rungs) - set(RUNGS))
    if unknown:
        raise ValueError(f"{path}: rung {unknown[0]!r} is not allowed; allowed: {', '.join(RUNGS)}")
    return rungs


def _select_rung(rungs: dict[str, pd.Series], rung: str | None) -> str:
    """The rung a report shows: the one asked for, else the longest any run has (its numbers are the trusted
    ones). Every run must have it: a front drawn from cheap and reference rows would mix training budgets."""
    if rung is not None and rung not in RUNGS:
        raise ValueError(f"rung={rung!r} is not allowed; allowed: {', '.join(RUNGS)} (or None for the longest present)")
    present = set().union(*(set(r) for r in rungs.values())) if rungs else set()
    chosen = rung or next((r for r in reversed(RUNGS) if r in present), RUNGS[0])
    shared = [r for r in RUNGS if all(r in set(run_rungs) for run_rungs in rungs.values())]
    for source, run_rungs in rungs.items():
        if chosen not in set(run_rungs):
            have = ", ".join(r for r in RUNGS if r in set(run_rungs)) or "no rows"
            raise ValueError(f"run {source} has no rows of rung {chosen!r} (it has: {have}); allowed: a rung every "
                             f"run has ({', '.join(shared) or 'none: report the runs separately'})")
    return chosen


def _run_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A run's rows in the standard columns (one trial each; seed replicates stay apart)."""
    # A trial that reused an earlier trial's result (same architecture) is the same point, not a second one.
    frame = frame.drop_duplicates([c for c in ("config", "protocol_hash", "rung", "seed", "top1_final")
                                   if c in frame.columns])
    out = pd.DataFrame({
        "family": frame["family"].astype(str), "name": frame["name"].astype(str),
        "macs": pd.to_numeric(frame["macs"], errors="coerce"),
        "params": pd.to_numeric(frame["params"], errors="coerce"),
        "top1": pd.to_numeric(frame["top1_final"], errors="coerce"), "state": frame["state"].astype(str),
        "source": source, "rung": frame["rung"],
    })
    for column in _PASSED_THROUGH:
        if column in frame.columns:
            out[column] = frame[column]
    return out


def load_results(paths: str | Path | Iterable[str | Path], include_published: bool = False,
                 rung: str | None = None) -> pd.DataFrame:
    """One frame from one or many runs (folders or their ``results`` files), in the standard columns.

    ``top1`` is the final validation top-1 of each trial, one row per trial (average seeds with
    `aggregate_seeds`; the fronts do it for you). Only one rung is returned: ``rung`` ("cheap" or
    "reference"), or by default the longest any given run has. Raises `ValueError` with one line for anything
    that is not a results table, for a run without the selected rung (fronts never mix rungs), and for runs
    trained under different protocols at that rung (or mixed with the papers' ImageNet numbers).

    >>> df = load_results(["runs/cmt", "runs/baselines"])            # doctest: +SKIP
    >>> df["rung"].unique()                                          # doctest: +SKIP
    array(['reference'], dtype=object)
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs: dict[str, pd.DataFrame] = {}
    published: dict[str, pd.DataFrame] = {}
    for raw in paths:
        path = _resolve(raw)
        frame = _read(path)
        if {"params_m", "macs_g"} <= set(frame.columns):  # the published table's own units
            published[str(path)] = load_published(path)
            continue
        _require(frame, _RUN_COLUMNS, path)
        frame = frame.assign(rung=_rungs_of(frame, path))
        runs[str(path.parent if path.name.startswith("results.") else path)] = frame
    if include_published:
        published["published"] = load_published()
    chosen = _select_rung({source: frame["rung"] for source, frame in runs.items()}, rung)
    runs = {source: frame[frame["rung"] == chosen] for source, frame in runs.items()}
    protocols = {source: _protocols(frame) for source, frame in runs.items()}
    protocols.update({source: {("ImageNet", "published")} for source in published})
    _check_one_protocol(protocols)
    frames = [_run_frame(frame, source) for source, frame in runs.items()] + list(published.values())
    if not frames:
        raise ValueError("no results files given")
    return pd.concat(frames, ignore_index=True)
