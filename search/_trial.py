"""The one trainable both backends share: sampled values -> candidate -> budget check -> proxy training -> row."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from proxy import ProxyProtocol, TrialResult, build_baseline, deit_patch_size, train_and_evaluate
from scaling import CMTConfig, estimate_cost, scale
from search_spaces import SearchSpace

from ._results import make_row

__all__ = ["Candidate", "make_candidate", "run_trial"]


@dataclass(frozen=True)
class Candidate:
    """What a trial would train, and what it costs at the protocol resolution (``reason`` if it cannot be built)."""

    family: str
    name: str
    config: dict[str, Any]
    macs: int | None
    params: int | None
    build: Callable[[], Any] | None
    reason: str | None = None


def _cmt_from_values(space: SearchSpace, values: Mapping[str, Any], resolution: int, num_classes: int) -> CMTConfig:
    if space.family == "cmt_compound":
        cfg = scale(space.base, float(values["phi"]), alpha=float(values.get("alpha", 1.2)),
                    beta=float(values.get("beta", 1.3)), gamma=float(values.get("gamma", 1.15)),
                    stage_ratio=values.get("stage_ratio"), resolution=resolution)
        return cfg.replace(num_classes=num_classes)
    stages = sum(1 for i in range(8) if f"dim_{i}" in values)
    sr = values.get("sr_ratios") or [values.get(f"sr_{i}", (8, 4, 2, 1)[i] if i < 4 else 1) for i in range(stages)]
    ratio = values.get("mlp_ratio", 4.0)
    return CMTConfig(
        img_size=resolution, num_classes=num_classes, stem_channels=int(values.get("stem_channels", 16)),
        embed_dims=tuple(int(values[f"dim_{i}"]) for i in range(stages)),
        depths=tuple(int(values[f"depth_{i}"]) for i in range(stages)),
        num_heads=tuple(int(values[f"heads_{i}"]) for i in range(stages)),
        mlp_ratios=tuple(float(values.get(f"mlp_ratio_{i}", ratio)) for i in range(stages)),
        sr_ratios=tuple(int(s) for s in sr), fc_dim=int(values.get("fc_dim", 1280)),
    )


@functools.lru_cache(maxsize=64)
def _baseline_cost(name: str, resolution: int, num_classes: int) -> tuple[int, int]:
    from scaling import count_flops

    profile = count_flops(build_baseline(name, num_classes, resolution), img_size=resolution)
    return profile.macs, profile.params


def make_candidate(space: SearchSpace, values: Mapping[str, Any], protocol: ProxyProtocol,
                   num_classes: int) -> Candidate:
    """The candidate for ``values``: a CMT config (analytic cost) or a baseline (fvcore cost, cached)."""
    res = protocol.resolution
    if space.family in ("deit", "efficientnet"):
        name = str(values["model"])
        config = {"model": name, "img_size": res}
        if space.family == "deit":
            config["patch_size"] = deit_patch_size(res)
        macs, params = _baseline_cost(name, res, num_classes)
        return Candidate(space.family, name, config, macs, params, lambda: build_baseline(name, num_classes, res))
    try:
        cfg = _cmt_from_values(space, values, res, num_classes)
    except ValueError as err:
        return Candidate(space.family, "invalid", dict(values), None, None, None, reason=f"not a valid CMT: {err}")
    cost = estimate_cost(cfg)
    name = f"cmt d{'-'.join(map(str, cfg.embed_dims))} L{'-'.join(map(str, cfg.depths))}"
    if space.family == "cmt_compound":
        name = f"cmt phi={float(values['phi']):+.2f} {values.get('stage_ratio') or ''}".strip()
    return Candidate(space.family, name, cfg.to_dict(), cost.macs, cost.params, lambda: cfg)


def _latency_ms(candidate: Candidate, protocol: ProxyProtocol) -> float:
    """Measured forward time of one image at the protocol resolution (the budget's ``max_latency_ms``)."""
    import torch

    from scaling import build_cmt, measure_throughput

    built = candidate.build()
    model = build_cmt(built) if isinstance(built, CMTConfig) else built
    device = "cuda" if protocol.device == "cuda" or (protocol.device == "auto" and torch.cuda.is_available()) else "cpu"
    return measure_throughput(model, batch_size=1, img_size=protocol.resolution, device=device,
                              threads=protocol.threads, warmup=2, repeats=5).ms_per_batch


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
) -> dict[str, Any]:
    """Run one trial to a result row; infeasible candidates (invalid or over budget) are never trained.

    A candidate whose architecture and protocol match a complete row in ``done`` is not trained again:
    training is deterministic for a seed, so its result is reused (and the row says from which trial).
    """
    start = time.perf_counter()
    candidate = make_candidate(space, values, protocol, num_classes)
    config_json = json.dumps(candidate.config, sort_keys=True)
    over_budget = candidate.reason or space.budget.violations(candidate.macs or 0, candidate.params or 0)
    for previous in ([] if over_budget else done):
        if (previous.get("state") == "complete" and previous.get("config") == config_json
                and previous.get("protocol_hash") == protocol.protocol_hash and previous.get("seed") == protocol.seed):
            reused = {k: previous[k] for k in ("macs", "params", "latency_ms", "top1_final", "top1_best", "test_top1",
                                               "epochs_run", "train_img_per_s")}
            return make_row(**{**reused, "trial_id": trial_id, "backend": backend, "study": study,
                               "family": candidate.family, "name": candidate.name, "config": config_json,
                               "state": "complete", "error": f"same architecture as trial {previous['trial_id']}: "
                               "result reused, not retrained", "wall_s": time.perf_counter() - start,
                               "seed": protocol.seed, "protocol_hash": protocol.protocol_hash,
                               "dataset": protocol.dataset})
    common = dict(trial_id=trial_id, backend=backend, study=study, family=candidate.family, name=candidate.name,
                  config=config_json, macs=candidate.macs, params=candidate.params,
                  seed=protocol.seed, protocol_hash=protocol.protocol_hash, dataset=protocol.dataset)
    latency_ms = None
    reasons = [candidate.reason] if candidate.reason else space.budget.violations(candidate.macs, candidate.params)
    if not reasons and space.budget.max_latency_ms is not None:
        latency_ms = _latency_ms(candidate, protocol)
        reasons = space.budget.violations(candidate.macs, candidate.params, latency_ms)
    common["latency_ms"] = latency_ms
    if reasons:
        return make_row(**common, state="infeasible", error="; ".join(reasons), epochs_run=0,
                        wall_s=time.perf_counter() - start)
    import torch

    torch.manual_seed(protocol.seed)  # a baseline's initial weights are drawn here, when timm builds it
    result: TrialResult = train_and_evaluate(candidate.build(), protocol, report=report, progress=progress,
                                             name=candidate.name, cost=(candidate.macs, candidate.params))
    return make_row(**common, state=result.state, error=result.error, top1_final=result.final_top1,
                    top1_best=result.best_top1, test_top1=result.test_top1, epochs_run=result.epochs_run,
                    wall_s=time.perf_counter() - start, train_img_per_s=result.train_img_per_s)
