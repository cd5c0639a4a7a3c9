"""``sweep-recipes``: choose each family's training recipe by measurement, on the cheap rung.

One learning rate for every family measures which family happens to like it (on Fashion-MNIST at 32 px
EfficientNet-B0 gained 13.5 points from lr 2e-3 to 5e-3 while CMT did not), so each family gets a small
sweep: its sweep member (`proxy.Family.sweep_values`, a small typical member) trains under every
(learning rate, weight decay) of the grid, with the budget of images seen fixed by the protocol, and the
best mean validation top-1 over seeds wins. The other recipe keys (warm-up, label smoothing, drop path)
stay the family's current ones. The winners are written as ``recipes.yaml``, the file the search and
baselines commands take with ``--recipes`` (the shipped ``search_spaces/recipes.yaml`` was made this way).
The sweep runs as grid studies through the search driver, so it resumes and runs on either backend.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cmt_scale.proxy import ProxyProtocol, Recipe, get_family
from cmt_scale.search import Backend, RunHooks, with_family_recipes
from scaling import counted
from search_spaces import space_from_dict

from ._grid import run_grid, write_table

__all__ = ["DEFAULT_LRS", "DEFAULT_WEIGHT_DECAYS", "RecipeSweepResult", "pick_recipes", "sweep_recipes"]

DEFAULT_LRS = (1e-3, 2e-3, 5e-3)
DEFAULT_WEIGHT_DECAYS = (0.05,)
SWEEP_FAMILIES = ("cmt_compound", "deit", "efficientnet")


@dataclass(frozen=True)
class RecipeSweepResult:
    """Every (family, recipe) tried with its mean top-1, and the recipes chosen (also in ``recipes.yaml``)."""

    table: pd.DataFrame
    recipes: dict[str, Recipe]
    path: Path


def pick_recipes(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Recipe], pd.DataFrame]:
    """The best recipe of each family by mean validation top-1 over seeds (a tie goes to the lower learning
    rate, then the lower weight decay: the more conservative recipe), and the table it was chosen from."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get("state") == "complete" and row.get("top1_final") is not None and row.get("recipe"):
            groups.setdefault((str(row["family"]), str(row["recipe"])), []).append(float(row["top1_final"]))
    records = []
    for (family, recipe_json), values in groups.items():
        recipe = Recipe.from_dict(json.loads(recipe_json))
        records.append({"family": family, **recipe.to_dict(), "seeds": len(values),
                        "top1": statistics.fmean(values),
                        "top1_std": statistics.stdev(values) if len(values) > 1 else float("nan")})
    table = pd.DataFrame(records, columns=["family", *Recipe().to_dict(), "seeds", "top1", "top1_std"])
    chosen: dict[str, Recipe] = {}
    table["chosen"] = False
    for family, group in table.groupby("family", sort=True):
        best = group.sort_values(["top1", "lr", "weight_decay"], ascending=[False, True, True]).index[0]
        table.loc[best, "chosen"] = True
        chosen[str(family)] = Recipe.from_dict({k: table.loc[best, k] for k in Recipe().to_dict()})
    return chosen, table.sort_values(["family", "lr", "weight_decay"]).reset_index(drop=True)


def _grid_space(family: str, lrs: Sequence[float], weight_decays: Sequence[float], seeds: Sequence[int]):
    values = dict(get_family(family).sweep_values)
    base = values.pop("base", None)
    params: dict[str, Any] = {"lr": {"type": "categorical", "choices": [float(v) for v in lrs]},
                              "weight_decay": {"type": "categorical", "choices": [float(v) for v in weight_decays]},
                              "seed": {"type": "categorical", "choices": [int(s) for s in seeds]}}
    return space_from_dict({"family": family, "sampler": "grid", "params": params, "fixed": values,
                            **({"base": base} if base else {})}, f"recipe sweep of {family}")


def _check(name: str, values: Sequence[float], allowed: str, ok) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v) for v in values):
        raise ValueError(f"{name}={list(values)!r} is not allowed; allowed: {allowed}")


def sweep_recipes(
    protocol: ProxyProtocol,
    out: str | Path = "runs/recipes",
    families: Sequence[str] = SWEEP_FAMILIES,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    seeds: Sequence[int] = (0,),
    backend: Backend | None = None,
    hooks: RunHooks | None = None,
) -> RecipeSweepResult:
    """Sweep each family's recipe under ``protocol`` (its budget); write ``out/recipes.yaml`` (every
    registered family with a recipe: the swept ones chosen here, the rest as ``protocol`` had them) and
    ``out/sweep.csv``/``.md``. Resumable: a rerun trains only the grid points without a row.

    Example:
        >>> from cmt_scale.proxy import ProxyProtocol
        >>> result = sweep_recipes(ProxyProtocol(dataset="digits", val_size=300, epochs=1),
        ...                        "runs/recipes", lrs=(1e-3, 3e-3))  # doctest: +SKIP
        >>> result.recipes["deit"].lr  # doctest: +SKIP
    """
    for family in families:
        get_family(family)
    _check("lrs", lrs, "numbers > 0", lambda v: v > 0)
    _check("weight_decays", weight_decays, "numbers >= 0", lambda v: v >= 0)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)!r} is not allowed; allowed: one or more distinct integers")
    protocol = with_family_recipes(protocol)
    out = Path(out)
    rows = []
    for family in families:
        space = _grid_space(family, lrs, weight_decays, seeds)
        rows += run_grid(space, protocol, out, f"recipes-{family}", backend, hooks)
    chosen, table = pick_recipes(rows)
    current = {family: Recipe.from_dict(spec) for family, spec in json.loads(protocol.recipes or "{}").items()}
    recipes = {**current, **chosen}
    path = out / "recipes.yaml"
    _write_recipes(path, recipes, protocol, chosen)
    write_table(table, out, "sweep")
    return RecipeSweepResult(table, recipes, path)


def _write_recipes(path: Path, recipes: Mapping[str, Recipe], protocol: ProxyProtocol,
                   chosen: Mapping[str, Recipe]) -> None:
    import yaml

    header = (f"# Per-family training recipes chosen by `cmt-scale sweep-recipes` on {protocol.dataset} at "
              f"{protocol.resolution} px, {protocol.train_size or 'all'} images x "
              f"{counted(protocol.epochs, 'epoch')}.\n"
              f"# Swept: {', '.join(sorted(chosen))}; the other families keep the recipes the sweep ran with.\n")
    body = yaml.safe_dump({family: recipe.to_dict() for family, recipe in sorted(recipes.items())},
                          default_flow_style=None, sort_keys=False, width=200)
    path.write_text(header + body, encoding="utf-8")
