"""Exact cost of any built model by tracing it with fvcore, with every skipped op in plain view.

Counting convention: fvcore's, which is the CMT, DeiT and EfficientNet papers' too: one fused
multiply-add counts as one FLOP ("4.0G FLOPs" = 4.0e9 multiply-adds). fvcore has no handle for
``aten::scaled_dot_product_attention`` and silently drops it (timm's DeiT-S then shows 4.25G instead of
4.6G), so a handle for it is registered here. Element-wise ops (activations, adds, softmax) count zero
by that convention; they are listed separately from ops that fvcore could not count at all.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.nn as nn

from ._config import CMTConfig
from ._cost import CostFigures

__all__ = ["FlopProfile", "count_flops", "EXTRA_FLOP_HANDLES"]


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::scaled_dot_product_attention``: q k^T and attn v, i.e. ``B*H*Nq*Nk*(d_qk + d_v)`` MACs."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch_heads = prod(q[:-2])
    n_q, d_qk = q[-2], q[-1]
    n_k, d_v = k[-2], v[-1]
    return batch_heads * n_q * n_k * (d_qk + d_v)


def _mean_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::mean`` (squeeze-excite pooling in EfficientNet): one per input element, as fvcore counts
    ``adaptive_avg_pool2d``."""
    return prod(_shape(inputs[0]))


# Extra fvcore handles, by op name, with fvcore's handle signature (inputs, outputs) -> count.
EXTRA_FLOP_HANDLES: Mapping[str, Callable[[list[Any], list[Any]], int]] = {
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::mean": _mean_flop,
}

# Element-wise ops: zero MACs by the papers' convention (not a gap in the count).
_ELEMENTWISE_OPS = frozenset(
    f"aten::{name}"
    for name in (
        "add", "add_", "sub", "mul", "mul_", "div", "gelu", "silu", "silu_", "sigmoid", "softmax", "tanh",
        "hardswish", "hardswish_", "hardsigmoid", "relu6", "exp", "neg", "rsub", "pow", "sqrt", "rsqrt",
    )
)


@dataclass(frozen=True)
class FlopProfile(CostFigures):
    """fvcore's count of one image through a model.

    ``macs`` are multiply-adds (the papers' "FLOPs"); ``by_operator`` and ``by_module`` break them down
    (modules by their qualified name, ``""`` being the whole model). ``unsupported_ops`` are ops that
    fvcore could not count and that are not element-wise: a non-empty value means the total is too low.
    ``elementwise_ops`` were seen and count zero by convention.
    """

    macs: int
    params: int
    img_size: int
    by_operator: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    elementwise_ops: dict[str, int] = field(default_factory=dict)

    def by_part(self) -> dict[str, int]:
        """MACs split as `estimate_cost` splits them: ``stem``, ``stage0`` .. ``stageN``, and ``head`` (the rest)."""
        parts = {"stem": self.by_module.get("stem", 0)}
        i = 0
        while f"stages.{i}" in self.by_module:
            parts[f"stage{i}"] = self.by_module[f"stages.{i}"]
            i += 1
        parts["head"] = self.macs - sum(parts.values())
        return parts


def _input_size(model: nn.Module, img_size: int | None) -> tuple[int, int]:
    if img_size is not None:
        return int(img_size), getattr(getattr(model, "cfg", None), "in_chans", 3)
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, CMTConfig):
        return cfg.img_size, cfg.in_chans
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in pretrained:
        chans, height, _ = pretrained["input_size"]
        return int(height), int(chans)
    raise ValueError("img_size is required for a model without a CMTConfig or timm pretrained_cfg")


def count_flops(model_or_cfg: nn.Module | CMTConfig, img_size: int | None = None) -> FlopProfile:
    """Trace one ``img_size`` image through the model with fvcore and return a `FlopProfile`.

    A `CMTConfig` is built first (at ``img_size`` when given, so the count is for a model native to that
    size). Any ``nn.Module`` works (timm's DeiT, EfficientNet ...); its resolution comes from ``img_size``,
    its ``cfg`` or its timm ``pretrained_cfg``. The model is counted in eval mode and left as it was.

    Example:
        >>> from scaling import PRESETS, count_flops
        >>> profile = count_flops(PRESETS["cmt_ti"])
        >>> round(profile.gmacs, 3), profile.unsupported_ops
        (0.652, {})
    """
    with warnings.catch_warnings():  # heavy, and noisy about torch.jit.script: imported only when needed
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    if isinstance(model_or_cfg, CMTConfig):
        from ._model import build_cmt

        cfg = model_or_cfg if img_size is None else model_or_cfg.replace(img_size=int(img_size))
        model: nn.Module = build_cmt(cfg)
    elif isinstance(model_or_cfg, nn.Module):
        model = model_or_cfg
    else:
        raise ValueError(f"count_flops takes a CMTConfig or an nn.Module, got {type(model_or_cfg).__name__}")
    size, chans = _input_size(model, img_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, torch.zeros(1, chans, size, size, device=device, dtype=dtype))
            analysis.set_op_handle(**EXTRA_FLOP_HANDLES)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(analysis.total())
            by_operator = {op: int(v) for op, v in analysis.by_operator().items()}
            by_module = {name: int(v) for name, v in analysis.by_module().items()}
            skipped = Counter(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return FlopProfile(
        macs=total,
        params=sum(p.numel() for p in model.parameters()),
        img_size=size,
        by_operator=by_operator,
        by_module=by_module,
        unsupported_ops={op: n for op, n in skipped.items() if op not in _ELEMENTWISE_OPS},
        elementwise_ops={op: n for op, n in skipped.items() if op in _ELEMENTWISE_OPS},
    )
