"""`solve`: the family member that costs what you can afford (MACs, parameters, or measured latency).

For MACs and parameters the solver never builds a module: it walks the compound rule with the exact
analytic cost model (`estimate_cost`, microseconds per member), finds the ``phi`` whose rounded member
is nearest the target, then searches the rounding neighbourhood of that member (each stage's depth
+-1, all widths +- one rounding step, resolution +-32 unless pinned) and keeps the member nearest the
target, preferring the fewest departures from the rule among members within 0.5% of the target.
For a latency target the cost is measured, not modelled: a bisection over ``phi`` (MACs order the
members) times a handful of real models on the chosen device, each measured once per process.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ._compound import (
    PAPER_COEFFICIENTS,
    PHI_LIMIT,
    WIDTH_DIVISOR,
    CompoundCoefficients,
    nominal_cost_ratio,
    parse_stage_ratio,
    resolution_step,
    scale,
)
from ._config import CMTConfig
from ._cost import estimate_cost
from ._presets import get_preset
from ._units import check_int, format_count, parse_count, parse_latency_ms

__all__ = ["PHI_RANGE", "Solution", "solve"]

PHI_RANGE = (-3.0, 3.0)
_PHI_STEP = 0.01
_TOLERANCE = 0.02  # the largest error a solution may have; beyond it the target is out of reach
_ACCEPT = 0.005  # members this near the target are all good answers: then the fewest departures wins
_START_POINTS = 3  # distinct rule members (nearest phis) whose neighbourhoods are searched


@dataclass(frozen=True)
class Solution:
    """The solved member and how it relates to the target and to the compound rule.

    ``config`` is the member; ``rule_config`` the pure rule's member at ``phi``; ``adjustments`` how the
    neighbourhood search departed from it (empty when the rule's member was nearest). ``error`` is
    ``achieved / target - 1``. ``realised_ratio`` is the member's MACs over the base's; ``nominal_ratio``
    what the rule promises, ``(alpha * beta**1.5 * gamma**2) ** phi``. For a latency target, ``measured``
    holds each timed member's (MACs, ms) and ``latency_spread`` the largest of their timings' spreads
    (`Throughput.spread`): above a few percent the machine was busy and the bisection may have stopped a
    member off.
    """

    config: CMTConfig
    phi: float
    target_kind: str
    target: float
    achieved: float
    macs: int
    params: int
    rule_config: CMTConfig
    adjustments: tuple[str, ...]
    base: CMTConfig
    realised_ratio: float
    nominal_ratio: float
    reachable: tuple[float, float]
    latency_ms: float | None = None
    measured: tuple[tuple[float, float], ...] = field(default=(), compare=False)
    latency_spread: float | None = field(default=None, compare=False)

    @property
    def error(self) -> float:
        return self.achieved / self.target - 1.0

    def to_dict(self) -> dict:
        return {
            "target": {"kind": self.target_kind, "value": self.target},
            "achieved": self.achieved,
            "error": self.error,
            "phi": self.phi,
            "macs": self.macs,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "latency_spread": self.latency_spread,
            "realised_cost_ratio": self.realised_ratio,
            "nominal_cost_ratio": self.nominal_ratio,
            "adjustments": list(self.adjustments),
            "config": self.config.to_dict(),
            "rule_config": self.rule_config.to_dict(),
        }


def _phi_grid(lo: float, hi: float) -> list[float]:
    steps = int(math.floor((hi - lo) / _PHI_STEP + 1e-9))
    return [round(lo + i * _PHI_STEP, 4) for i in range(steps + 1)]


def _neighbourhood(cfg: CMTConfig, pin_resolution: bool) -> list[tuple[CMTConfig, tuple[str, ...]]]:
    """The rule member's rounding neighbours: depth +-1 per stage, widths +- one step, resolution +-32."""
    steps = [math.lcm(WIDTH_DIVISOR, h) for h in cfg.num_heads]
    step = resolution_step(cfg)
    res_moves = (0,) if pin_resolution else (0, -step, step)
    out = []
    for depth_moves in itertools.product((0, -1, 1), repeat=cfg.num_stages):
        depths = tuple(d + m for d, m in zip(cfg.depths, depth_moves))
        if min(depths) < 1:
            continue
        for width_move in (0, -1, 1):
            dims = tuple(d + width_move * s for d, s in zip(cfg.embed_dims, steps))
            if min(dims) < 1:
                continue
            for res_move in res_moves:
                size = cfg.img_size + res_move
                if size < step:
                    continue
                notes = tuple(f"stage {i} depth {m:+d}" for i, m in enumerate(depth_moves) if m)
                notes += (f"widths {width_move:+d} step",) if width_move else ()
                notes += (f"resolution {res_move:+d}",) if res_move else ()
                try:
                    out.append((cfg.replace(depths=depths, embed_dims=dims, img_size=size), notes))
                except ValueError:  # e.g. a grid the K/V reduction no longer divides
                    continue
    return out


def _reach(members: dict[float, CMTConfig], values: dict[float, float], metric: Callable[[CMTConfig], float],
           pin_resolution: bool) -> tuple[float, float]:
    """The targets the solver can meet: from the cheapest to the dearest cost among the rule members and
    the rounding neighbours of the two end members, widened by the accepted error.

    Why the neighbours: the solver picks among them too, so the rule members' own range understates
    what it reaches (a rule family topping out at 79G MACs still meets 110G at resolution +32)."""
    ends = (members[min(values, key=values.__getitem__)], members[max(values, key=values.__getitem__)])
    costs = list(values.values()) + [metric(cfg) for end in ends for cfg, _ in _neighbourhood(end, pin_resolution)]
    return min(costs) / (1 + _TOLERANCE), max(costs) / (1 - _TOLERANCE)


def _pick(candidates: Sequence[tuple[CMTConfig, tuple[str, ...]]], metric: Callable[[CMTConfig], float],
          target: float) -> tuple[CMTConfig, tuple[str, ...], float]:
    def key(item: tuple[CMTConfig, tuple[str, ...], float]) -> tuple[float, int, float]:
        err = abs(item[2] / target - 1)
        return (0.0 if err <= _ACCEPT else err, len(item[1]), err)

    return min(((cfg, notes, metric(cfg)) for cfg, notes in candidates), key=key)


def solve(
    target_flops: float | str | None = None,
    target_params: float | str | None = None,
    target_latency_ms: float | str | None = None,
    base: CMTConfig | str = "cmt_s",
    resolution: int | None = None,
    alpha: float = PAPER_COEFFICIENTS.alpha,
    beta: float = PAPER_COEFFICIENTS.beta,
    gamma: float = PAPER_COEFFICIENTS.gamma,
    stage_ratio: str | Sequence[int] | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    threads: int | None = None,
    phi_range: tuple[float, float] = PHI_RANGE,
) -> Solution:
    """The member of ``base``'s compound family nearest one target (give exactly one).

    Args:
        target_flops: multiply-adds per image (the papers' "FLOPs"): ``4e9`` or ``"4G"``.
        target_params: parameters: ``25e6`` or ``"25M"``.
        target_latency_ms: measured forward time of one ``batch_size`` batch on ``device``, in ms (``"20ms"``).
        base: the ``phi = 0`` member (a preset name or a config).
        resolution: pin the input size (multiple of 32) instead of scaling it with ``phi``.
        alpha, beta, gamma: per-unit-phi multipliers of depth, width and resolution.
        stage_ratio: split each member's total depth across stages in this ratio (``"3:3:16:3"``).

    Raises `ValueError` naming the reachable range when the family cannot come within 2% of the target.

    Example:
        >>> from scaling import solve
        >>> sol = solve(target_flops="4G")
        >>> abs(sol.error) < 0.02
        True
    """
    given = {k: v for k, v in (("flops", target_flops), ("params", target_params), ("latency", target_latency_ms))
             if v is not None}
    if len(given) != 1:
        names = ", ".join(f"target_{k}" for k in given) or "none"
        raise ValueError(f"give exactly one target (flops, params or latency); got {names}")
    kind, raw = next(iter(given.items()))
    target = parse_latency_ms(raw, "target_latency") if kind == "latency" else parse_count(raw, f"target_{kind}")
    coeffs = CompoundCoefficients(alpha, beta, gamma)
    base_cfg = get_preset(base) if isinstance(base, str) else base
    if resolution is not None:
        resolution = _check_resolution(resolution, base_cfg)
    if stage_ratio is not None and len(parse_stage_ratio(stage_ratio)) != base_cfg.num_stages:
        raise ValueError(f"stage_ratio={stage_ratio!r} has {len(parse_stage_ratio(stage_ratio))} entries; allowed: "
                         f"{base_cfg.num_stages} (one per stage)")
    lo, hi = phi_range
    if not (-PHI_LIMIT <= lo < hi <= PHI_LIMIT):
        raise ValueError(f"phi_range={phi_range!r} is not allowed; allowed: (low, high) with "
                         f"-{PHI_LIMIT} <= low < high <= {PHI_LIMIT}")
    rule = functools.partial(scale, base_cfg, alpha=coeffs.alpha, beta=coeffs.beta, gamma=coeffs.gamma,
                             stage_ratio=stage_ratio, resolution=resolution)
    members = {}
    for phi in _phi_grid(lo, hi):
        try:
            members[phi] = rule(phi=phi)
        except ValueError:  # e.g. too few blocks for the stage ratio at this phi: not a member
            continue
    if not members:
        raise ValueError(f"no valid member of the {base if isinstance(base, str) else 'given'} family for phi in "
                         f"[{lo:g}, {hi:g}] with these settings")
    if kind == "latency":
        return _solve_latency(members, target, base_cfg, coeffs, device, batch_size, threads)

    def metric(cfg: CMTConfig) -> float:
        cost = estimate_cost(cfg)
        return float(cost.macs if kind == "flops" else cost.params)

    values = {phi: metric(cfg) for phi, cfg in members.items()}
    reachable = (min(values.values()), max(values.values()))
    nearest: dict[CMTConfig, float] = {}  # distinct rule members, nearest first, with their phi
    for p in sorted(values, key=lambda p: abs(math.log(values[p] / target))):
        nearest.setdefault(members[p], p)
        if len(nearest) == _START_POINTS:
            break
    candidates = [(start, cand, notes) for start in nearest
                  for cand, notes in _neighbourhood(start, pin_resolution=resolution is not None or kind == "params")]
    best = _pick([(cand, notes) for _, cand, notes in candidates], metric, target)
    cfg, notes, achieved = best
    rule_cfg = next(start for start, cand, n in candidates if cand == cfg and n == notes)
    phi = nearest[rule_cfg]
    if abs(achieved / target - 1) > _TOLERANCE:
        unit = "MACs" if kind == "flops" else "params"
        reachable = _reach(members, values, metric, pin_resolution=resolution is not None or kind == "params")
        raise ValueError(
            f"target_{kind}={format_count(target)} is out of reach of the {base if isinstance(base, str) else 'given'} "
            f"family "
            f"(phi in [{lo:g}, {hi:g}]{', resolution ' + str(resolution) if resolution else ''}); "
            f"allowed: {format_count(reachable[0])} to {format_count(reachable[1])} {unit}"
        )
    return _solution(cfg, phi, kind, target, achieved, rule_cfg, notes, base_cfg, coeffs, reachable)


def _check_resolution(resolution: int, base: CMTConfig) -> int:
    step = resolution_step(base)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < step or resolution % step:
        raise ValueError(f"resolution={resolution!r} is not allowed; allowed: a positive multiple of {step}")
    return resolution


def _solution(cfg, phi, kind, target, achieved, rule_cfg, notes, base_cfg, coeffs, reachable, **extra) -> Solution:
    cost = estimate_cost(cfg)
    return Solution(
        config=cfg, phi=phi, target_kind=kind, target=target, achieved=achieved, macs=cost.macs,
        params=cost.params, rule_config=rule_cfg, adjustments=notes, base=base_cfg,
        realised_ratio=cost.macs / estimate_cost(base_cfg).macs, nominal_ratio=nominal_cost_ratio(phi, coeffs),
        reachable=reachable, **extra,
    )


@functools.lru_cache(maxsize=256)
def _measured_latency_ms(cfg: CMTConfig, device: str, batch_size: int, threads: int | None) -> tuple[float, float]:
    """One real timing per (member, device, batch, threads) per process, as (ms per batch, spread): models
    are built only here."""
    from ._model import build_cmt
    from ._throughput import measure_throughput

    model = build_cmt(cfg)
    result = measure_throughput(model, batch_size, cfg.img_size, device, threads, warmup=2, repeats=5)
    return result.ms_per_batch, result.spread


def _solve_latency(members, target, base_cfg, coeffs, device, batch_size, threads) -> Solution:
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device={device!r} is not allowed; allowed: 'cpu' or 'cuda'")
    check_int("batch_size", batch_size)
    check_int("threads", threads, none_ok=True)
    # Order the distinct members by MACs (latency's best cheap proxy), then bisect with real timings.
    distinct: dict[CMTConfig, float] = {}
    for phi, cfg in members.items():
        distinct.setdefault(cfg, phi)
    ordered = sorted(distinct, key=lambda c: estimate_cost(c).macs)
    timings: dict[CMTConfig, float] = {}
    spreads: list[float] = []

    def latency(cfg: CMTConfig) -> float:
        if cfg not in timings:
            timings[cfg], spread = _measured_latency_ms(cfg, device, batch_size, threads)
            spreads.append(spread)
        return timings[cfg]

    # Gallop up from the cheapest member until one is at least as slow as the target, then bisect: the
    # expensive end of the family is only timed when the target needs it.
    if latency(ordered[0]) > target * (1 + _TOLERANCE):
        raise ValueError(
            f"target_latency={target:g}ms is out of reach on {device} at batch {batch_size}; allowed: at least "
            f"{latency(ordered[0]):.1f} ms (the cheapest member)"
        )
    lo, hi, jump = 0, 1, 1
    while hi < len(ordered) and latency(ordered[hi]) < target:
        lo, jump = hi, jump * 2
        hi = min(len(ordered) - 1, hi + jump) if hi < len(ordered) - 1 else len(ordered)
    if hi >= len(ordered):
        if latency(ordered[-1]) < target / (1 + _TOLERANCE):
            raise ValueError(
                f"target_latency={target:g}ms is out of reach on {device} at batch {batch_size}; allowed: "
                f"{latency(ordered[0]):.1f} to {latency(ordered[-1]):.1f} ms"
            )
        hi = len(ordered) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if latency(ordered[mid]) < target:
            lo = mid
        else:
            hi = mid
    best = min(timings, key=lambda c: abs(math.log(timings[c] / target)))
    phi = distinct[best]
    return _solution(
        best, phi, "latency", target, timings[best], best, (), base_cfg, coeffs,
        (min(timings.values()), max(timings.values())), latency_ms=timings[best],
        measured=tuple(sorted((estimate_cost(c).macs, t) for c, t in timings.items())), latency_spread=max(spreads),
    )
