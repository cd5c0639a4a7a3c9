"""One results table per run, the same from Optuna, Ray Tune and the baselines.

Every finished trial writes its row as ``runs/NAME/trials/<trial_id>.json`` the moment it ends; the table
(``results.parquet`` and ``results.csv``) is rebuilt from those files, atomically (write, then rename),
so a killed search always leaves a valid table of what finished, and the two backends cannot drift
apart: they share this writer and `make_row`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from cmt_scale.proxy import TrialState

__all__ = ["RESULT_COLUMNS", "STATES", "ResultRow", "TrialState", "make_row", "measured_rows", "read_rows",
           "reusable_rows", "seed_means", "write_results", "write_row"]

STATES = tuple(state.value for state in TrialState)


class ResultRow(TypedDict):
    """One finished trial, as every backend and the baselines runner write it (`make_row`): the schema of
    ``trials/*.json`` and of the results table. ``RESULT_COLUMNS`` gives each column's pandas dtype."""

    trial_id: str
    backend: str
    study: str
    family: str
    name: str
    config: str
    macs: int | None
    params: int | None
    latency_ms: float | None
    top1_final: float | None
    top1_best: float | None
    test_top1: float | None
    epochs_run: int | None
    state: str
    error: str | None
    wall_s: float | None
    train_img_per_s: float | None
    seed: int | None
    protocol_hash: str
    dataset: str
    rung: str | None
    recipe: str | None
    skipped_images: int | None


# column -> pandas dtype; the schema analysis/ validates against.
RESULT_COLUMNS: dict[str, str] = {
    "trial_id": "string",
    "backend": "string",
    "study": "string",
    "family": "string",
    "name": "string",
    "config": "string",  # JSON: a CMTConfig dict, or {"model": timm name, "patch_size": ...} for baselines
    "macs": "Int64",
    "params": "Int64",
    "latency_ms": "float64",
    "top1_final": "float64",
    "top1_best": "float64",
    "test_top1": "float64",
    "epochs_run": "Int64",
    "state": "string",
    "error": "string",
    "wall_s": "float64",
    "train_img_per_s": "float64",
    "seed": "Int64",
    "protocol_hash": "string",
    "dataset": "string",
    "rung": "string",  # cheap | reference: the schedule the row was trained under (a search's promotion)
    "recipe": "string",  # JSON: the family's training recipe the row was trained with
    "skipped_images": "Int64",  # unreadable files an image folder left out (None: not trained, or an older row)
}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_row(**values: Any) -> ResultRow:
    """A row with exactly the schema's columns (missing ones are None); unknown columns are an error. The state
    is stored as its plain value, so rows read back from JSON compare equal to the `TrialState` members."""
    unknown = set(values) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result column(s) {sorted(unknown)}; allowed: {list(RESULT_COLUMNS)}")
    if values.get("state") not in STATES:
        raise ValueError(f"state={values.get('state')!r} is not allowed; allowed: {', '.join(STATES)}")
    values["state"] = TrialState(values["state"]).value
    return ResultRow(**{column: _clean(values.get(column)) for column in RESULT_COLUMNS})  # type: ignore[typeddict-item]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_row(run_dir: str | Path, row: Mapping[str, Any]) -> Path:
    """Persist one finished trial's row (``trials/<backend>-<study>-<trial_id>.json``)."""
    folder = Path(run_dir) / "trials"
    folder.mkdir(parents=True, exist_ok=True)
    # backend and study in the name: Optuna numbers trials from 0 in every study sharing a run folder
    key = f"{row['backend']}-{row['study']}-{row['trial_id']}"
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = folder / f"{safe_id}.json"
    _atomic_write_text(path, json.dumps(dict(row), indent=1))
    return path


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    folder = Path(run_dir) / "trials"
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(rows, key=lambda r: (str(r.get("backend")), _natural(str(r.get("trial_id")))))


def reusable_rows(run_dirs: Iterable[str | Path]) -> tuple[dict[str, Any], ...]:
    """The complete rows of earlier runs, for a new run to reuse instead of retraining: training is
    deterministic for (architecture, recipe, protocol, seed), so such a row is that trial's result. This is
    how a recorded run is extended with a longer reference rung in a new folder without training its cheap
    rung again. A folder without trial rows is a one-line error, not an empty reuse."""
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        found = read_rows(run_dir)
        if not found:
            raise ValueError(f"reuse={str(run_dir)!r} is not allowed: it holds no trial rows; allowed: a run folder "
                             "(one with trials/*.json)")
        rows += [r for r in found if r.get("state") == TrialState.COMPLETE]
    # A complete row with a message is itself a reuse: trained rows first, so a reuse names the original.
    return tuple(sorted(rows, key=lambda r: bool(r.get("error"))))


def _natural(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def write_results(run_dir: str | Path, rows: Iterable[Mapping[str, Any]] | None = None):
    """Rebuild ``results.parquet`` and ``results.csv`` from ``rows`` (default: the run's trial files)."""
    import pandas as pd

    run_dir = Path(run_dir)
    data = list(read_rows(run_dir) if rows is None else rows)
    frame = pd.DataFrame(data, columns=list(RESULT_COLUMNS)).astype(RESULT_COLUMNS)
    for name, writer in (("results.parquet", lambda p: frame.to_parquet(p, index=False)),
                         ("results.csv", lambda p: frame.to_csv(p, index=False))):
        target = run_dir / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        writer(tmp)
        os.replace(tmp, target)
    return frame


def measured_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Complete rows with a top-1, one per measurement and rung: a trial that reused an earlier trial's result
    (same config, protocol and seed) is the same point, and only its first trial stands for it. The rung is
    part of the key: a reference rung whose protocol is the cheap rung's reuses its seed-0 rows, and each rung
    must still see that measurement among its own (else the front, read from one rung, loses a seed)."""
    measured: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r["state"] == TrialState.COMPLETE and r["top1_final"] is not None:
            key = (r.get("rung") or "cheap", r["config"], r.get("protocol_hash"), r.get("seed"), r["top1_final"])
            measured.setdefault(key, r)
    return list(measured.values())


def seed_means(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (architecture, protocol): the first trial's row with top-1 averaged over its seeds."""
    import statistics

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["config"], row.get("protocol_hash")), []).append(row)
    out = []
    for group in groups.values():
        values = [float(r["top1_final"]) for r in group]
        out.append({**group[0], "top1_final": statistics.fmean(values), "seeds": len(values),
                    "top1_std": statistics.stdev(values) if len(values) > 1 else float("nan")})
    return out
