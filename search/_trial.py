"""The one trainable both backends share: sampled values -> candidate -> budget check -> proxy training -> row."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from proxy import ProxyProtocol, TrialResult, build_baseline, checked_deit_patch, deit_patch_size, train_and_evaluate
from scaling import CMTConfig, estimate_cost, get_preset, resolution_step, scale
from search_spaces import SearchSpace, parse_point

from ._results import make_row

__all__ = ["Candidate", "check_resolution", "compound_member", "compound_values", "make_candidate", "run_trial",
           "trial_protocol"]


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


def compound_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with a grid ``point`` (``"phi=1 alpha=1.2 ..."``) unpacked over the other values."""
    out = {k: v for k, v in values.items() if k != "point"}
    if values.get("point") is not None:
        out.update(parse_point(values["point"]))
    return out


def compound_member(base: str | CMTConfig, values: Mapping[str, Any], resolution: int) -> CMTConfig:
    """The compound member of ``values``: scaled from the base (itself the preset at ``base_phi`` and the
    protocol resolution); its resolution follows ``gamma**phi`` only when ``scale_resolution`` is set."""
    if values.get("config") is not None:  # a solved member, named outright
        cfg = CMTConfig.from_dict(values["config"])
        return cfg if values.get("scale_resolution") else cfg.replace(img_size=resolution)
    start = scale(base, float(values.get("base_phi", 0.0)), resolution=resolution)
    return scale(start, float(values["phi"]), alpha=float(values.get("alpha", 1.2)),
                 beta=float(values.get("beta", 1.3)), gamma=float(values.get("gamma", 1.15)),
                 stage_ratio=values.get("stage_ratio"),
                 resolution=None if values.get("scale_resolution") else resolution)


def _cmt_from_values(space: SearchSpace, values: Mapping[str, Any], resolution: int, num_classes: int) -> CMTConfig:
    if space.family == "cmt_compound":
        return compound_member(space.base, compound_values(values), resolution).replace(num_classes=num_classes)
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
        name = _compound_name(compound_values(values), cfg)
    return Candidate(space.family, name, cfg.to_dict(), cost.macs, cost.params, lambda: cfg)


def check_resolution(space: SearchSpace, resolution: int) -> None:
    """Refuse a protocol resolution that no member of ``space`` can be built at, before anything trains
    (otherwise every trial of the run comes back infeasible, one by one, and the run folder is left behind).

    DeiT's patch is ``resolution // 4`` clamped to 2..16 and must divide the resolution; a CMT's resolution
    must be a multiple of its total stride (and, for the compound family at the protocol resolution, of the
    base's `resolution_step`, so the K/V reductions divide every stage grid)."""
    if space.family == "deit":
        checked_deit_patch(resolution)
    elif space.family == "cmt_compound":
        if not space.fixed.get("scale_resolution"):
            step = resolution_step(get_preset(space.base or "cmt_ti"))
            if resolution % step:
                raise ValueError(f"resolution={resolution} is not allowed for the {space.base or 'cmt_ti'} compound "
                                 f"family; allowed: a positive multiple of {step}")
    elif space.family == "cmt_free":
        names = {p.name for p in space.params} | set(space.fixed)
        stride = 2 ** (sum(1 for i in range(8) if f"dim_{i}" in names) + 1)
        if resolution % stride:
            raise ValueError(f"resolution={resolution} is not allowed for this CMT space; allowed: a positive multiple "
                             f"of its total stride {stride}")


def _compound_name(values: Mapping[str, Any], cfg: CMTConfig) -> str:
    """``cmt phi=+1.00`` plus whatever departs from the paper's rule (coefficients, stage ratio, resolution)."""
    parts = [f"cmt phi={float(values['phi']):+.2f}"]
    coefficients = [values.get(k) for k in ("alpha", "beta", "gamma")]
    if any(c is not None for c in coefficients):
        parts.append("a/b/g=" + "/".join(f"{float(c if c is not None else d):g}"
                                          for c, d in zip(coefficients, (1.2, 1.3, 1.15))))
    if values.get("stage_ratio"):
        parts.append(str(values["stage_ratio"]))
    if values.get("config") is not None:
        parts.append("solved")
    if values.get("scale_resolution"):
        parts.append(f"@{cfg.img_size}")
    return " ".join(parts)


def trial_protocol(protocol: ProxyProtocol, values: Mapping[str, Any], candidate: Candidate) -> ProxyProtocol:
    """The protocol one trial trains under: the run's, with the trial's own seed and member resolution."""
    changes: dict[str, Any] = {}
    if values.get("seed") is not None:
        changes["seed"] = int(values["seed"])
    resolution = candidate.config.get("img_size")
    if resolution and candidate.family == "cmt_compound" and resolution != protocol.resolution:
        changes["resolution"] = int(resolution)
    return protocol.replace(**changes) if changes else protocol


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
    trained = trial_protocol(protocol, values, candidate)
    config_json = json.dumps(candidate.config, sort_keys=True)
    over_budget = candidate.reason or space.budget.violations(candidate.macs or 0, candidate.params or 0)
    for previous in ([] if over_budget else done):
        if (previous.get("state") == "complete" and previous.get("config") == config_json
                and previous.get("protocol_hash") == protocol.protocol_hash and previous.get("seed") == trained.seed):
            reused = {k: previous[k] for k in ("macs", "params", "latency_ms", "top1_final", "top1_best", "test_top1",
                                               "epochs_run", "train_img_per_s")}
            return make_row(**{**reused, "trial_id": trial_id, "backend": backend, "study": study,
                               "family": candidate.family, "name": candidate.name, "config": config_json,
                               "state": "complete", "error": f"same architecture as trial {previous['trial_id']}: "
                               "result reused, not retrained", "wall_s": time.perf_counter() - start,
                               "seed": trained.seed, "protocol_hash": protocol.protocol_hash,
                               "dataset": protocol.dataset})
    common = dict(trial_id=trial_id, backend=backend, study=study, family=candidate.family, name=candidate.name,
                  config=config_json, macs=candidate.macs, params=candidate.params,
                  seed=trained.seed, protocol_hash=protocol.protocol_hash, dataset=protocol.dataset)
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
    result: TrialResult = train_and_evaluate(candidate.build(), trained, report=report, progress=progress,
                                             name=candidate.name, cost=(candidate.macs, candidate.params))
    return make_row(**common, state=result.state, error=result.error, top1_final=result.final_top1,
                    top1_best=result.best_top1, test_top1=result.test_top1, epochs_run=result.epochs_run,
                    wall_s=time.perf_counter() - start, train_img_per_s=result.train_img_per_s)
