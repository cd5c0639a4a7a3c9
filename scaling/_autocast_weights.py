"""Matmul weights cast once for autocast inference, so that a model as users build it
(``timm.create_model("cmt_s").eval()``, run under ``torch.inference_mode()`` and ``torch.autocast``) does not
cast every weight again on every forward.

Why: autocast casts an fp32 weight to its lower precision on each call of a linear or convolution, and keeps
the cast only where its cache applies: leaf tensors that require grad, in an autocast region with grad on or
under ``no_grad``, until the region ends. Under ``torch.inference_mode`` it caches nothing, so each bf16 forward
of CMT-S re-casts its 25M projection weights: 12% of a batch-1 forward on an AMD EPYC Zen 5
(benchmarks/RESULTS.md). Autocast passes a weight already in its dtype through untouched, so handing it a
copy cast beforehand gives the same operands, hence the same outputs to the bit.

What is kept: per module, the cast of its weight and bias for one dtype, with what it was cast from (the
parameter objects, their ``_version`` counters and storage addresses). Any change to the parameters (an
optimizer step or ``load_state_dict``, which bump ``_version``; ``.to()``, which moves the storage; a new
parameter) makes the next call cast again. Only eval-mode modules with grad off take it (in training the
weights change every step, and autocast's own cache serves), in eager mode (a compiled graph with freezing
casts once by itself), and not for parameters made under ``inference_mode`` (inference tensors track no
version, so an in-place change to them could not be seen). The copies live in a table keyed weakly by
module, not on the module: a saved, pickled or deep-copied model carries none, its state dict is unchanged,
and a module's entry goes when the module does. The cost is memory: a half-precision copy of the weights it
serves (for CMT-S about 50 MB beside the 100 MB of fp32 weights), held until the model is put in training
mode (`drop_cast_weights`).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn as nn

from ._pointwise_route import cpu_autocast_dtype

__all__ = ["HALF_DTYPES", "autocast_weights", "drop_cast_weights", "kept_cast"]

HALF_DTYPES = (torch.bfloat16, torch.float16)  # the lower precisions autocast and the mixed-precision copy take
# Flipped only to measure autocast's per-call casts (benchmarks/bench_model.py's "cast per call" row) or to
# compare against them in a test: every call site then passes the parameters through unchanged.
_ENABLED = True


class _CastWeights(NamedTuple):
    """A module's weight and bias cast to ``dtype``, and what identifies the parameters they came from."""

    dtype: torch.dtype
    weight_source: torch.Tensor
    bias_source: torch.Tensor | None
    state: tuple[int, ...]  # `_state` of the two when cast
    weight: torch.Tensor
    bias: torch.Tensor | None


_kept: weakref.WeakKeyDictionary[nn.Module, _CastWeights] = weakref.WeakKeyDictionary()


def _state(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, ...]:
    """The parameters' in-place version counters and storage addresses: any change to them changes these."""
    if bias is None:
        return weight._version, weight.data_ptr()
    return weight._version, weight.data_ptr(), bias._version, bias.data_ptr()


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """Autocast's dtype on ``x``'s device, None when it is off there. The CPU is asked first and directly: this
    runs on every projection call, where a device object and the availability check cost about 1 us."""
    if x.is_cpu:
        return cpu_autocast_dtype()
    device = x.device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def autocast_weights(module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` as the module's matmul should take them for input ``x``: cast once to autocast's dtype
    and kept (see the module docstring) when ``module`` is in eval mode with grad off, in eager mode, under
    autocast on ``x``'s device to bf16 or fp16, with fp32 weights; otherwise unchanged.

    The caller passes the result where it would pass the parameters (``F.linear``, ``F.conv2d``); autocast
    casts ``x`` as before and passes the weights through.
    """
    if not _ENABLED or module.training or torch.is_grad_enabled() or weight.dtype != torch.float32:
        return weight, bias
    dtype = _autocast_dtype(x)
    if (dtype not in HALF_DTYPES or torch.compiler.is_compiling() or weight.is_inference()
            or (bias is not None and bias.is_inference())):
        return weight, bias
    cached = _kept.get(module)
    state = _state(weight, bias)
    if (cached is None or cached.dtype != dtype or cached.weight_source is not weight
            or cached.bias_source is not bias or cached.state != state):
        cast_bias = None if bias is None else bias.detach().to(dtype)
        cached = _CastWeights(dtype, weight, bias, state, weight.detach().to(dtype), cast_bias)
        _kept[module] = cached
    return cached.weight, cached.bias


def kept_cast(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The cast ``(weight, bias)`` kept for ``module``, None if none (what a test or a memory count asks)."""
    cached = _kept.get(module)
    return None if cached is None else (cached.weight, cached.bias)


def drop_cast_weights(model: nn.Module) -> None:
    """Forget the cast copies of ``model`` and its submodules (the memory goes back; the next autocast
    inference call casts again). `scaling.CMT.train` calls it."""
    for module in model.modules():
        _kept.pop(module, None)
