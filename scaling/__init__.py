"""cmt-scale's model family: config, presets, builder, cost models and the timm registration.

``import scaling`` imports no torch or timm; the names that need them (`build_cmt`, `count_flops`,
...) load on first use, and the ``cmt_*`` timm models are registered as soon as timm is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._compound import (
    PAPER_COEFFICIENTS,
    PHI_LIMIT,
    CompoundCoefficients,
    FamilyMember,
    family,
    nominal_cost_ratio,
    parse_stage_ratio,
    resolution_step,
    round_depth,
    round_resolution,
    round_width,
    scale,
    with_stage_ratio,
)
from ._config import CMTConfig
from ._cost import Cost, estimate_cost
from ._presets import PAPER_TABLE, PRESETS, PaperFigures, get_preset
from ._reproduction import ReproductionRow, reproduce_presets
from ._solver import PHI_RANGE, Solution, solve
from ._timm_hook import register_with_timm
from ._units import check_int, counted, format_count, is_int, parse_count, parse_latency_ms

# Public names that need torch (and timm), by the module that defines them: loaded on first access.
_LAZY = {
    "CMT": "_model",
    "CMTBlock": "_blocks",
    "CMTStage": "_blocks",
    "build_cmt": "_model",
    "FlopProfile": "_profile",
    "count_flops": "_profile",
    "Throughput": "_throughput",
    "measure_throughput": "_throughput",
    "fuse_for_inference": "_inference",
    "tune_cpu_allocator": "_allocator",
    "checkpoint_filter_fn": "_checkpoint",
    "load_official_checkpoint": "_checkpoint",
    "read_checkpoint": "_checkpoint",
    "resize_position_bias": "_position_bias",
    "fused_kernels_available": "_fused",
    "set_fused_kernels": "_fused",
}

__all__ = [
    "CMTConfig",
    "CompoundCoefficients",
    "Cost",
    "FamilyMember",
    "PAPER_COEFFICIENTS",
    "PHI_LIMIT",
    "PHI_RANGE",
    "PAPER_TABLE",
    "PRESETS",
    "PaperFigures",
    "ReproductionRow",
    "Solution",
    "estimate_cost",
    "family",
    "check_int",
    "counted",
    "format_count",
    "is_int",
    "get_preset",
    "nominal_cost_ratio",
    "parse_count",
    "parse_latency_ms",
    "parse_stage_ratio",
    "reproduce_presets",
    "resolution_step",
    "round_depth",
    "round_resolution",
    "round_width",
    "scale",
    "solve",
    "with_stage_ratio",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


register_with_timm()
