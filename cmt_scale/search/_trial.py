"""The one trainable both backends share: sampled values -> candidate -> budget check -> proxy training -> row."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cmt_scale.proxy import (
    Member,
    ProxyProtocol,
    Recipe,
    TrialResult,
    compound_member,
    compound_values,
    get_family,
    train_and_evaluate,
)
from search_spaces import SearchSpace

from ._results import make_row

__all__ = ["check_resolution", "compound_member", "compound_values", "make_candidate", "run_trial",
           "trial_protocol", "trial_recipe"]


def make_candidate(space: SearchSpace, values: Mapping[str, Any], protocol: ProxyProtocol,
                   num_classes: int, done: Sequence[Mapping[str, Any]] = ()) -> Member:
    """The member ``values`` name in ``space``'s family, built and costed for ``protocol`` (the registry's job).

    A promoted member (``values`` name it by its config: the reference rung) keeps the name its cheap-rung row
    in ``done`` gave it, so that both rungs' rows of one architecture read alike whichever backend ran them.
    """
    candidate = get_family(space.family).values_member(values, protocol, num_classes)
    if values.get("config") is not None:
        named = next((r["name"] for r in done if r.get("config") == candidate.config_json and r.get("name")), None)
        candidate = dataclasses.replace(candidate, name=named) if named else candidate
    return candidate


def check_resolution(space: SearchSpace, resolution: int, protocol: ProxyProtocol | None = None) -> None:
    """Refuse a protocol resolution that no member of ``space`` can be built at, before anything trains
    (otherwise every trial of the run comes back infeasible, one by one, and the run folder is left behind)."""
    low_res = (protocol or ProxyProtocol()).low_res
    names = frozenset({p.name for p in space.params} | set(space.fixed))
    fixed = {**({"base": space.base} if space.base else {}), **dict(space.fixed)}
    get_family(space.family).check_resolution(resolution, low_res, names, fixed)


def trial_recipe(space: SearchSpace, values: Mapping[str, Any], protocol: ProxyProtocol) -> Recipe:
    """The family's recipe in ``protocol``, with any recipe keys the trial sampled (a recipe sweep) over it."""
    return get_family(space.family).recipe(protocol).updated(values)


def trial_protocol(protocol: ProxyProtocol, values: Mapping[str, Any], candidate: Member,
                   recipe: Recipe | None = None) -> ProxyProtocol:
    """The protocol one trial trains under: the run's, with the trial's own seed, its member's resolution
    (a compound member scaled in resolution) and its family's recipe (the budget of images stays the run's)."""
    changes: dict[str, Any] = {}
    if values.get("seed") is not None:
        changes["seed"] = int(values["seed"])
    resolution = candidate.config.get("img_size")
    if resolution and resolution != protocol.resolution:
        changes["resolution"] = int(resolution)
    trained = protocol.replace(**changes) if changes else protocol
    return recipe.applied_to(trained) if recipe is not None else trained


def _latency_ms(candidate: Member, protocol: ProxyProtocol) -> float:
    """Measured forward time of one image at the protocol resolution (the budget's ``max_latency_ms``)."""
    import torch

    from scaling import measure_throughput

    model = candidate.build(0.0)
    device = "cuda" if protocol.device == "cuda" or (protocol.device == "auto" and torch.cuda.is_available()) else "cpu"
    return measure_throughput(model, batch_size=1, img_size=protocol.resolution, device=device,
                              threads=protocol.threads, warmup=2, repeats=5).ms_per_batch


_REUSED = ("macs", "params", "latency_ms", "top1_final", "top1_best", "test_top1", "epochs_run", "train_img_per_s",
           "skipped_images")


def _same_measurement(previous: Mapping[str, Any], config_json: str, recipe_json: str, protocol: ProxyProtocol,
                      seed: int) -> bool:
    """Training is deterministic for (architecture, recipe, protocol, seed): such a row is this trial's result."""
    return (previous.get("state") == "complete" and previous.get("config") == config_json
            and previous.get("protocol_hash") == protocol.protocol_hash and previous.get("seed") == seed
            and previous.get("recipe") in (None, recipe_json))


def _of_study(previous: Mapping[str, Any], study: str) -> str:
    """Names the reused row's study when it is another one (an earlier run's, see `reusable_rows`)."""
    other = previous.get("study")
    return f" of study {other}" if other and other != study else ""


def run_trial(
    space: SearchSpace,
    values: Mapping[str, Any],
    protocol: ProxyProtocol,
    num_classes: int,
    trial_id: str,
    backend: str,
    study: str,
    report: Callable[[int, float], None] | None = None,
    progress: bool = False,
    done: Sequence[Mapping[str, Any]] = (),
    rung: str = "cheap",
) -> dict[str, Any]:
    """Run one trial to a result row; infeasible candidates (invalid or over budget) are never trained.

    The member trains with its family's recipe (`trial_recipe`) under the run's budget; the row records
    the recipe and the ``rung``. A candidate whose architecture, recipe and protocol match a complete row in
    ``done`` is not trained again: training is deterministic for a seed, so its result is reused (and the
    row says from which trial).
    """
    start = time.perf_counter()
    candidate = make_candidate(space, values, protocol, num_classes, done)
    recipe = trial_recipe(space, values, protocol)
    trained = trial_protocol(protocol, values, candidate, recipe)
    config_json, recipe_json = candidate.config_json, json.dumps(recipe.to_dict(), sort_keys=True)
    common = dict(trial_id=trial_id, backend=backend, study=study, family=candidate.family, name=candidate.name,
                  config=config_json, seed=trained.seed, protocol_hash=protocol.protocol_hash,
                  dataset=protocol.dataset, rung=rung, recipe=recipe_json)
    over_budget = candidate.reason or space.budget.violations(candidate.macs or 0, candidate.params or 0)
    for previous in ([] if over_budget else done):
        if _same_measurement(previous, config_json, recipe_json, protocol, trained.seed):
            return make_row(**{**{k: previous.get(k) for k in _REUSED}, **common, "state": "complete",
                               "error": f"same architecture as trial {previous['trial_id']}{_of_study(previous, study)}"
                               ": result reused, not retrained", "wall_s": time.perf_counter() - start})
    common.update(macs=candidate.macs, params=candidate.params)
    latency_ms = None
    reasons = [candidate.reason] if candidate.reason else space.budget.violations(candidate.macs, candidate.params)
    if not reasons and space.budget.max_latency_ms is not None:
        latency_ms = _latency_ms(candidate, trained)
        reasons = space.budget.violations(candidate.macs, candidate.params, latency_ms)
    common["latency_ms"] = latency_ms
    if reasons:
        return make_row(**common, state="infeasible", error="; ".join(reasons), epochs_run=0,
                        wall_s=time.perf_counter() - start)
    import torch

    torch.manual_seed(trained.seed)  # a baseline's initial weights are drawn here, when timm builds it
    result: TrialResult = train_and_evaluate(candidate.build(recipe.drop_path_rate), trained, report=report,
                                             progress=progress, name=candidate.name,
                                             cost=(candidate.macs, candidate.params))
    return make_row(**common, state=result.state, error=result.error, top1_final=result.final_top1,
                    top1_best=result.best_top1, test_top1=result.test_top1, epochs_run=result.epochs_run,
                    wall_s=time.perf_counter() - start, train_img_per_s=result.train_img_per_s,
                    skipped_images=result.skipped_images)
