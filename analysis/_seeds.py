"""Seed replicates collapsed into one point each: the mean a front is drawn through, and its spread.

A search re-trains promising architectures with several seeds; one seed's top-1 is a draw, not the
architecture's accuracy. A point is one (source, family, architecture, rung): the architecture is its
``config`` (the JSON that identifies it) where the table has one, else its ``name``. Rows without a seed
(the papers' numbers, hand-made frames) are points of their own: two rows are replicates only when they
say which seed they are.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["aggregate_seeds", "is_aggregated"]

_KEYS = ("source", "family", "rung")
# Averaged beside the metric when a table has them: reported with their spread, never used to select.
_ALSO_AVERAGED = ("test_top1",)


def is_aggregated(df: pd.DataFrame) -> bool:
    """True for a frame `aggregate_seeds` made (aggregating it again would be a no-op)."""
    return "n_seeds" in df.columns


def _point_ids(df: pd.DataFrame) -> pd.Series:
    """The architecture each row measures; a row without a seed is a point of its own."""
    ids = df["name"].astype(str)
    if "config" in df.columns:
        ids = df["config"].where(df["config"].notna(), ids).astype(str)
    seeds = df["seed"] if "seed" in df.columns else pd.Series(np.nan, index=df.index)
    alone = seeds.isna()
    return ids.where(~alone, ids + "#row" + pd.Series(np.arange(len(df)), index=df.index).astype(str))


def aggregate_seeds(df: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per point: ``metric`` becomes the mean over the point's complete seeds, with ``<metric>_std``
    (sample std, ddof=1; NaN for one seed), ``<metric>_min``, ``<metric>_max``, ``<metric>_seeds`` (the
    values, for the bootstrap) and ``n_seeds``. A ``test_top1`` column (the test split, scored on a reference
    rung) is averaged over the same seeds, with ``test_top1_std``. Other columns keep the point's first row
    (``seed`` is dropped). A point with no complete seed keeps its first row's state and a NaN ``metric``.

    >>> rows = pd.DataFrame({"family": "cmt", "name": "a", "macs": 1e8, "top1": [70.0, 72.0],
    ...                      "state": "complete", "seed": [0, 1]})
    >>> point = aggregate_seeds(rows).iloc[0]
    >>> float(point["top1"]), round(float(point["top1_std"]), 4), int(point["n_seeds"])
    (71.0, 1.4142, 2)
    """
    if is_aggregated(df):
        return df
    if df.empty:
        extra = {f"{metric}_{s}": pd.Series(dtype=float) for s in ("std", "min", "max")}
        return df.drop(columns=["seed"], errors="ignore").assign(
            **extra, **{f"{metric}_seeds": pd.Series(dtype=object), "n_seeds": pd.Series(dtype=int)})
    frame = df.reset_index(drop=True)  # positions, not labels: a concat of frames repeats labels
    frame = frame.assign(_point=_point_ids(frame))
    keys = [c for c in _KEYS if c in frame.columns] + ["_point"]
    good = frame[metric].notna() & (frame["state"].astype(str) == "complete" if "state" in frame else True)
    rows = []
    for _, group in frame.groupby([frame[k].astype(str) for k in keys], sort=False):
        values = group.loc[good[group.index], metric].to_numpy(float)
        row = (group[good[group.index]] if len(values) else group).iloc[0].to_dict()
        row.update(_spread(values, metric))
        for column in (c for c in _ALSO_AVERAGED if c in frame.columns and c != metric):
            also = pd.to_numeric(group.loc[good[group.index], column], errors="coerce").dropna().to_numpy(float)
            spread = _spread(also, column)
            row.update({column: spread[column], f"{column}_std": spread[f"{column}_std"]})
        rows.append(row)
    columns = [c for c in df.columns if c != "seed"]
    out = pd.DataFrame(rows)
    return out[columns + [c for c in out.columns if c not in columns and c not in ("_point", "seed")]]


def _spread(values: np.ndarray, metric: str) -> dict[str, object]:
    """Mean, sample std (NaN for one seed: one draw says nothing of the spread), min, max, the values, count."""
    n = len(values)
    return {metric: float(values.mean()) if n else math.nan,
            f"{metric}_std": float(values.std(ddof=1)) if n > 1 else math.nan,
            f"{metric}_min": float(values.min()) if n else math.nan,
            f"{metric}_max": float(values.max()) if n else math.nan,
            f"{metric}_seeds": tuple(float(v) for v in values), "n_seeds": n}
