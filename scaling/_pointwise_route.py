"""Which of two equal computations runs a 1x1 projection in CPU inference: oneDNN's channels-last 1x1
convolution or the GEMM behind ``F.linear``, chosen per shape by timing both once in the process, as cuDNN's
benchmark mode chooses its algorithms.

Why by measurement: the faster one depends on the machine kind, the dtype and the shape, and no fixed rule
holds across them. On an AMD EPYC Zen 5 in fp32, oneDNN's convolution runs CMT-S's shapes at about twice
the rate of the BLAS GEMM (150-210 against 75-100 GMAC/s), while in bf16 autocast both are oneDNN and the
GEMM wins by 1.2-1.5x on 14x14 maps at batch 1 (the conv on a 7x7 map at batch 1 even falls to PyTorch's
im2col path); on an Intel Xeon, where the BLAS GEMM runs near the fp32 peak, the balance is different
again. A fixed rule measured on one kind is wrong on another (benchmarks/RESULTS.md).

Each choice is made on the first call with a new key (`route_key`: the input's shape, strides and dtype,
the weight's shape and dtype, the bias, autocast's dtype, the thread count): one warm-up call of each
(oneDNN builds its primitive on the first), then `_TIMED_ROUNDS` interleaved calls of each, with autocast's
weight-cast cache off (it would spare ``F.linear``'s leaf weight the cast but not the conv's reshaped view,
and under ``torch.inference_mode`` it is not used at all); the fixed rule's route stays unless the other's
best time is at least `_MARGIN` shorter, so that near-equal routes (timing noise decides between them) go
the same way in every process. The choice holds for the rest of the process. That costs a few
milliseconds per new shape on the first forward (140 against 91 ms for CMT-S's first forward at batch 1),
once per batch size and resolution; the table holds one entry per shape met. Two threads meeting a new
shape at once may both time it; either result is a valid choice.

Both routes compute the same products, so outputs differ by float rounding only (tested at 1e-5 in fp32);
where reproducibility to the last bit across processes matters, ``CMT_SCALE_POINTWISE_ROUTE=rule`` keeps the
fixed shape rule of `scaling._blocks.PointwiseLinear` in inference too. Training always uses it, and so do
tensor subclasses (fake tensors among them). ``torch.compile`` cannot time while it traces, so a traced layer
takes the route of its last eager inference forward (`scaling._blocks.PointwiseLinear.eager_route`, a plain
attribute Dynamo reads like any other, whatever the shapes), and the rule before any; a compiled graph keeps
the route it was traced with. `fuse_for_inference(compile=True)` runs one eager forward for each new input
signature just before the compiled call, so that a trace takes the routes timed for those very inputs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Hashable

import torch

__all__ = ["ROUTE_MODES", "chosen_routes", "cpu_autocast_dtype", "gemm_is_faster", "route_key", "timed_choice_enabled"]

ROUTE_MODES = ("timed", "rule")
_ENV_SWITCH = "CMT_SCALE_POINTWISE_ROUTE"
_TIMED_ROUNDS = 3
_MARGIN = 0.05  # the other route must be 5% faster to replace the rule's

_chosen: dict[Hashable, bool] = {}  # key -> the GEMM was faster


def timed_choice_enabled() -> bool:
    """Whether CPU inference times the two routes (``CMT_SCALE_POINTWISE_ROUTE=timed``, the default) or keeps
    the fixed shape rule (``=rule``)."""
    raw = os.environ.get(_ENV_SWITCH, "timed")
    if raw == "timed":  # the default, checked first: this runs on every projection's forward
        return True
    mode = raw.strip().lower() or "timed"
    if mode not in ROUTE_MODES:
        raise ValueError(f"{_ENV_SWITCH}={mode!r} is not one of: {', '.join(ROUTE_MODES)}")
    return mode == "timed"


def cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast casts to, None when it is off."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def route_key(shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype, weight_shape: tuple[int, ...],
              weight_dtype: torch.dtype, bias_dtype: torch.dtype | None) -> tuple[Hashable, ...]:
    """What the faster route depends on: the input's shape, layout and dtype, the weight's shape and dtype,
    the bias's dtype (None: no bias), autocast's dtype on the CPU (None when off) and the thread count."""
    return (shape, strides, dtype, weight_shape, weight_dtype, bias_dtype, cpu_autocast_dtype(),
            torch.get_num_threads())


def chosen_routes() -> dict[Hashable, str]:
    """The choices made so far in this process, key -> ``"conv"`` or ``"gemm"`` (what a benchmark reports)."""
    return {key: "gemm" if gemm else "conv" for key, gemm in _chosen.items()}


def _without_cast_cache() -> contextlib.AbstractContextManager:
    """Autocast as it is, minus its weight-cast cache: both routes then pay the cast, as each forward does
    under ``inference_mode`` or in a fresh autocast region."""
    dtype = cpu_autocast_dtype()
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype, cache_enabled=False)


def _best_times(candidates: tuple[Callable[[], torch.Tensor], ...]) -> list[float]:
    """Each candidate's best wall time over `_TIMED_ROUNDS` interleaved calls, after one untimed call each."""
    with _without_cast_cache():
        for run in candidates:
            run()
        best = [math.inf] * len(candidates)
        for _ in range(_TIMED_ROUNDS):
            for i, run in enumerate(candidates):
                start = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def gemm_is_faster(key: Hashable, conv: Callable[[], torch.Tensor], gemm: Callable[[], torch.Tensor],
                   rule_takes_gemm: bool) -> bool:
    """Whether ``gemm`` is the route for ``key``, timed on the first call with this key (both run a few
    times) and kept for the process: the rule's route (``rule_takes_gemm``) unless the other is `_MARGIN`
    faster."""
    if key not in _chosen:
        conv_time, gemm_time = _best_times((conv, gemm))
        rule_time, other_time = (gemm_time, conv_time) if rule_takes_gemm else (conv_time, gemm_time)
        _chosen[key] = rule_takes_gemm != (other_time < (1 - _MARGIN) * rule_time)
    return _chosen[key]
