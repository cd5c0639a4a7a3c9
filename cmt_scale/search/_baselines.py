"""`run_baselines`: every named member of the baseline families, per seed, on the cheap rung (and, with a
`Promotion`, each family's front plus margin on the reference rung): the same rows, writer and resume as a
search, without a sampler, since the members are few and all are trained."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmt_scale.proxy import ProxyProtocol, baseline_families, data_for, get_family
from search_spaces import SearchSpace, load_space

from ._driver import (
    RunHooks,
    SearchSummary,
    _check_protocol_matches,
    _write_run_json,
    check_protocol_fits,
    with_all_images_as_all,
    with_family_recipes,
)
from ._interrupt import interrupt_guard
from ._promotion import Promotion, promoted_rows
from ._results import read_rows, reusable_rows, write_results, write_row
from ._trial import check_resolution, run_trial

__all__ = ["run_baselines"]


def run_baselines(
    protocol: ProxyProtocol,
    out: str | Path,
    families: Sequence[str] = ("deit", "efficientnet"),
    seeds: Sequence[int] | None = None,
    promotion: Promotion | None = None,
    hooks: RunHooks | None = None,
    reuse: Sequence[str | Path] = (),
) -> SearchSummary:
    """Train every member of the baseline ``families`` under ``protocol`` (the cheap rung), once per seed
    (default: the protocol's seed); rows in the search schema, each family with its recipe.

    With ``promotion``, each family's cheap-rung front plus margin is then re-trained on the reference rung
    with the promotion's seeds, exactly as a search promotes (`Promotion`). Resumable: trials that already
    have a row in ``out`` are not trained again, nor are those with a matching row in a ``reuse`` folder
    (`run_search`). ``hooks``: the command recorded and a per-trial callback.
    """
    hooks = hooks or RunHooks()
    unknown = [f for f in families if f not in baseline_families()]
    if unknown or not families:
        raise ValueError(f"families={','.join(families)!r} is not allowed; allowed: {', '.join(baseline_families())}")
    seeds = tuple(seeds) if seeds is not None else (protocol.seed,)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                              for s in seeds):
        raise ValueError(f"seeds={seeds!r} is not allowed; allowed: one or more distinct integers")
    protocol = with_family_recipes(protocol)
    reference = promotion.protocol(protocol) if promotion is not None else None
    spaces = {family: load_space(family) for family in families}
    for space in spaces.values():
        check_resolution(space, protocol.resolution, protocol)
    data = data_for(protocol)
    for rung_protocol in (protocol, reference):
        if rung_protocol is not None:
            check_protocol_fits(rung_protocol, data)
    protocol = with_all_images_as_all(protocol, data)
    reference = with_all_images_as_all(reference, data) if reference is not None else None
    run_dir = Path(out)
    _check_protocol_matches(run_dir, protocol, reference)
    reused = reusable_rows(reuse)
    run_dir.mkdir(parents=True, exist_ok=True)
    rungs: dict[str, Any] = {"cheap": {"protocol_hash": protocol.protocol_hash, "seeds": list(seeds)}}
    if reference is not None:
        rungs["reference"] = {"protocol": reference.to_dict(), "protocol_hash": reference.protocol_hash,
                              "seeds": list(promotion.seeds), "margin": promotion.margin}
    _write_run_json(run_dir, hooks.command, protocol,
                    {"families": list(families), "backend": "baselines", "rungs": rungs})
    start = time.perf_counter()
    train = functools.partial(_train_baselines, run_dir, data.num_classes, hooks.on_trial, reused)
    with interrupt_guard() as interrupted:
        for family, space in spaces.items():
            train(interrupted, space, protocol, "cheap",
                  [(f"{family}-{name}-s{seed}", {"model": name, "seed": seed})
                   for name in get_family(family).members for seed in seeds])
            if reference is not None:
                family_rows = [r for r in read_rows(run_dir) if r["family"] == family and r.get("rung") == "cheap"]
                promoted = promoted_rows(family_rows, promotion.margin)
                train(interrupted, space, reference, "reference",
                      [(f"{family}-{r['name']}-reference-s{seed}", {"config": r["config"], "seed": seed})
                       for r in promoted for seed in promotion.seeds])
    write_results(run_dir)
    return SearchSummary(run_dir, read_rows(run_dir), time.perf_counter() - start)


def _train_baselines(run_dir: Path, num_classes: int, on_trial, reused, interrupted, space: SearchSpace,
                     protocol: ProxyProtocol, rung: str, trials: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Train each (trial id, values) that has no row yet, in order, writing each row as it finishes."""
    done = {r["trial_id"] for r in read_rows(run_dir)}
    for trial_id, values in trials:
        if trial_id in done:
            continue
        if interrupted.raised:  # a Ctrl-C that a finalizer swallowed still stops here
            raise KeyboardInterrupt
        row = run_trial(space, values, protocol, num_classes, trial_id=trial_id, backend="baselines",
                        study=run_dir.name, rung=rung, done=[*read_rows(run_dir), *reused])
        write_row(run_dir, row)
        write_results(run_dir)
        if on_trial is not None:
            on_trial(row)
