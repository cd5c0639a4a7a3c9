"""Reading results: a run's table (``results.parquet`` / ``.csv``) or the shipped published numbers.

Everything downstream works on one tidy frame with the columns ``family``, ``name``, ``macs``,
``params``, ``top1``, ``state`` and ``source`` (the run folder, or the paper a number comes from).
This module imports nothing else of the toolkit: analysis needs a results file, not a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

__all__ = ["PUBLISHED_CSV", "STANDARD_COLUMNS", "load_published", "load_results"]

PUBLISHED_CSV = Path(__file__).with_name("data") / "published.csv"
STANDARD_COLUMNS = ("family", "name", "macs", "params", "top1", "state", "source")
# The columns a run's table must have (the search package's schema; only these are read).
_RUN_COLUMNS = ("trial_id", "family", "name", "config", "macs", "params", "top1_final", "top1_best", "state",
                "protocol_hash", "dataset")
_PUBLISHED_COLUMNS = ("family", "name", "params_m", "macs_g", "resolution", "top1", "source")


def load_published(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The papers' ImageNet figures (CMT, DeiT, EfficientNet), one row per model, with a citation each."""
    frame = _read(Path(path))
    _require(frame, _PUBLISHED_COLUMNS, Path(path))
    out = pd.DataFrame({
        "family": frame["family"], "name": frame["name"], "macs": frame["macs_g"] * 1e9,
        "params": frame["params_m"] * 1e6, "top1": frame["top1"].astype(float), "state": "complete",
        "source": frame["source"],
    })
    out["resolution"] = frame["resolution"]
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


def load_results(paths: str | Path | Iterable[str | Path], include_published: bool = False) -> pd.DataFrame:
    """One frame from one or many runs (folders or their ``results`` files), in the standard columns.

    ``top1`` is the final validation top-1 of each trial. Raises `ValueError` with one line naming the file
    and what is wrong for anything that is not a results table, and naming the runs when they were trained
    under different protocols (or are mixed with the papers' ImageNet numbers): their fronts do not compare.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    protocols: dict[str, set[tuple[str, str]]] = {}
    for raw in paths:
        path = _resolve(raw)
        frame = _read(path)
        if set(_PUBLISHED_COLUMNS) <= set(frame.columns):
            frames.append(load_published(path))
            protocols[str(path)] = {("ImageNet", "published")}
            continue
        _require(frame, _RUN_COLUMNS, path)
        protocols[str(path.parent if path.name.startswith("results.") else path)] = _protocols(frame)
        # A trial that reused an earlier trial's result (same architecture) is the same point, not a second one.
        frame = frame.drop_duplicates(["config", "protocol_hash", "top1_final"] + (["seed"] if "seed" in frame else []))
        frames.append(pd.DataFrame({
            "family": frame["family"].astype(str), "name": frame["name"].astype(str),
            "macs": pd.to_numeric(frame["macs"], errors="coerce"),
            "params": pd.to_numeric(frame["params"], errors="coerce"),
            "top1": pd.to_numeric(frame["top1_final"], errors="coerce"), "state": frame["state"].astype(str),
            "source": str(path.parent if path.name.startswith("results.") else path),
        }))
    if include_published:
        frames.append(load_published())
        protocols["published"] = {("ImageNet", "published")}
    _check_one_protocol(protocols)
    if not frames:
        raise ValueError("no results files given")
    return pd.concat(frames, ignore_index=True)
