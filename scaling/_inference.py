"""An inference-only CMT: BatchNorm folded into the adjacent linear maps wherever the algebra is exact.

In eval mode a BatchNorm is a per-channel affine map ``a*x + b``. Next to a convolution without padding
(a 1x1 conv, the k x k stride-k K/V reduction, the 2x2 patch merge) it can be absorbed into that
conv's weights and bias exactly. Next to a *padded* conv it cannot (the zero padding is not mapped by
the affine), so the BNs after the stem's first two convs and inside the IRFFN before its depthwise
conv stay. What folds, per block: the K/V reduction's BN, the IRFFN's last two BNs (one on each side of
its projection); plus the head's BN and the stem's last BN. That removes about half of the
BatchNorm passes over memory; outputs equal the eval-mode model's to float rounding (tested at 1e-4).
Each attention's K and V projections also become one (`LightweightAttention.merge_key_value`): the same
products in one call instead of two.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from ._allocator import tune_cpu_allocator
from ._autocast_weights import HALF_DTYPES, drop_cast_weights
from ._fused import is_depthwise
from ._model import CMT
from ._pointwise_route import cpu_autocast_dtype

__all__ = ["fuse_for_inference"]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``scale * x + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_bn_after(layer: nn.Module, bn: nn.BatchNorm2d) -> None:
    """``bn(layer(x))`` -> ``layer'(x)``: scale each output channel's weights, shift its bias."""
    scale, shift = _bn_affine(bn)
    weight = layer.weight
    layer.weight.copy_(weight * scale.reshape(-1, *([1] * (weight.ndim - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
    new_bias = bias * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _fold_bn_before(layer: nn.Module, bn: nn.BatchNorm2d) -> None:
    """``layer(bn(x))`` for an unpadded, ungrouped layer -> ``layer'(x)``: scale input channels, shift the bias."""
    scale, shift = _bn_affine(bn)
    weight = layer.weight  # (out, in) or (out, in, kh, kw)
    extra = (weight * shift.reshape(1, -1, *([1] * (weight.ndim - 2)))).flatten(1).sum(1)
    layer.weight.copy_(weight * scale.reshape(1, -1, *([1] * (weight.ndim - 2))))
    if layer.bias is None:
        layer.bias = nn.Parameter(extra)
    else:
        layer.bias.add_(extra)


class _MixedPrecision(nn.Module):
    """An inference copy that runs under ``torch.autocast(dtype)`` with its matmul weights already in ``dtype``.

    Autocast casts an fp32 weight to the lower precision on every call of a convolution or linear (its cast
    cache is off under ``inference_mode`` and emptied when each autocast region ends), and it passes a weight
    already in that dtype through untouched. So casting those weights once gives the same operands, hence
    the same outputs to the bit (when the 1x1 projections take the same routes: the timed route keys on the
    weight dtype), without the per-call casts: for CMT-S about 25M weights per forward. Depthwise convolutions
    stay fp32: the CPU kernels take their taps in fp32 under autocast, which keeps their numerics unchanged;
    where the kernels do not run (fp16, CUDA, kernels off) autocast still casts those small weights per call.
    The copy's dtype wins over a caller's autocast region of another dtype. Meant for a copy
    (`fuse_for_inference`): the weights are a snapshot. ``forward``, ``forward_features`` and ``forward_head``
    run under the autocast region; anything else of the model is at ``.model``, outside it.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        for module in model.modules():
            if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and not is_depthwise(module)):
                for name in ("weight", "bias"):
                    value = getattr(module, name)
                    if value is not None:
                        setattr(module, name, nn.Parameter(value.detach().to(dtype), value.requires_grad))
        self.model = model
        self.dtype = dtype
        self.eval()

    def _region(self, x: torch.Tensor) -> torch.autocast:
        """The copy's autocast region, on the device ``x`` is on."""
        return torch.autocast(x.device.type, dtype=self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._region(x):
            return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._region(x):
            return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        with self._region(x):
            return self.model.forward_head(x, pre_logits=pre_logits)


class _FrozenCompiled(nn.Module):
    """``torch.compile`` with Inductor's freezing, for an inference-only copy.

    The option has to be in Inductor's config while Dynamo traces, not only in ``torch.compile``'s
    ``options``: Dynamo reads it there to decide whether parameters are constants (torch 2.14), and with the
    option alone CMT-S compiled no faster than without it (51 against 28 ms, bf16, batch 1, Zen 5). So each
    call runs under ``torch._inductor.config.patch(freezing=True)``, which restores the setting on exit:
    nothing else in the process is compiled with freezing. ``dynamic=False``: each batch size gets a static
    graph of its own. With torch's default a second batch size recompiles with a symbolic batch, which lost
    what freezing gains: CMT-S bf16 at batch 8 after batch 1 ran 219 ms compiled against 135 ms eager, and
    126 ms static (Zen 5, benchmarks/RESULTS.md)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(model, dynamic=False, options={"freezing": True})
        self._eager = (model,)  # the same module, unregistered (its parameters are the compiled copy's)
        self._signatures_seen: set[tuple[Any, ...]] = set()
        self.eval()  # an inference-only copy says so (a new Module starts in training mode)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch._inductor import config as inductor_config

        signature = _call_signature(args, kwargs)
        if signature not in self._signatures_seen:  # eagerly first: the 1x1 routes it times are what a trace takes
            self._eager[0](*args, **kwargs)
            drop_cast_weights(self._eager[0])  # the frozen graph holds its own: no second copy kept for eager
            self._signatures_seen.add(signature)
        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def _call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What a new trace (and new 1x1 routes) may depend on: the tensors' shapes, strides and dtypes, the grad
    and autocast modes, the thread count."""
    tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
    return (tuple((tuple(t.shape), t.stride(), t.dtype) for t in tensors), torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(), cpu_autocast_dtype(), torch.get_num_threads())


@torch.no_grad()
def fuse_for_inference(model: CMT, channels_last: bool = True, compile: bool = False,
                       tune_allocator: bool = True, amp_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` for inference: eval mode, BatchNorms folded, K and V merged, channels-last weights.

    ``compile=True`` also wraps it in ``torch.compile`` with Inductor's ``freezing`` option: under ``no_grad``
    or ``inference_mode`` the weights become constants, so oneDNN's packed (and, under bf16 autocast,
    already cast) weights are made once instead of on every call, and the element-wise work is fused. That
    is the fast path for bf16 autocast on CPUs with native bf16: CMT-S at batch 1 went from 38.8 to 28.8 ms
    on an AMD EPYC Zen 5, where compiling without freezing made it slower than eager (52.9 ms;
    benchmarks/RESULTS.md). In fp32 the eager copy with the inference kernels is about as fast (within 3%). The
    first call pays the compilation (about a minute for CMT-S on 2 cores), after one eager forward that times
    the 1x1 projections' routes for the trace to take (`scaling._pointwise_route`). The copy's weights are frozen
    into the compiled graph: fuse again after changing the model. ``tune_allocator`` (default) calls
    `tune_cpu_allocator`, which keeps freed activation memory in the process: process-wide, see
    `scaling._allocator`. The original model is not changed.

    ``amp_dtype`` (``torch.bfloat16`` or ``torch.float16``) makes a mixed-precision copy: its forward runs
    under ``torch.autocast`` to that dtype on the input's device (whether or not the caller opened one), and
    the weights autocast would cast on every call (the convolutions' and linears', depthwise ones excepted,
    which the CPU kernels take in fp32) are cast once, here. The outputs are autocast's own, to the bit, when
    the 1x1 projections take the same routes (``CMT_SCALE_POINTWISE_ROUTE=rule``; timed routes may pick another
    kernel for bf16 weights, equal up to rounding); without the per-call casts a CMT-S bf16 forward at batch 1
    ran 1.07-1.10x as fast (Zen 5, benchmarks/RESULTS.md). ``forward``, ``forward_features`` and
    ``forward_head`` run under the copy's autocast; the wrapped model is at ``.model``.

    Example:
        >>> fast = fuse_for_inference(build_cmt(PRESETS["cmt_s"]))  # doctest: +SKIP
        >>> bf16 = fuse_for_inference(build_cmt(PRESETS["cmt_s"]), amp_dtype=torch.bfloat16)  # doctest: +SKIP
        >>> with torch.inference_mode():  # doctest: +SKIP
        ...     logits = bf16(images)  # bf16 logits, as under torch.autocast
    """
    if not isinstance(model, CMT):
        raise ValueError(f"fuse_for_inference takes a CMT model, got {type(model).__name__}")
    if amp_dtype is not None and amp_dtype not in HALF_DTYPES:
        raise ValueError(f"amp_dtype={amp_dtype!r} is not allowed; allowed: {', '.join(map(str, HALF_DTYPES))} or None")
    fused = copy.deepcopy(model).eval()
    identity = nn.Identity
    last_stem = fused.stem[-1]
    if len(fused.stages):
        _fold_bn_before(fused.stages[0].downsample.proj, last_stem.bn)
        last_stem.bn = identity()
    for stage in fused.stages:
        for block in stage.blocks:
            attn, mlp = block.attn, block.mlp
            if attn.sr is not None:
                _fold_bn_after(attn.sr, attn.sr_norm)
                attn.sr_norm = identity()
            attn.merge_key_value()
            _fold_bn_before(mlp.fc2, mlp.norm2)
            _fold_bn_after(mlp.fc2, mlp.norm3)
            mlp.norm2, mlp.norm3 = identity(), identity()
    if isinstance(fused.head_norm, nn.BatchNorm2d):
        _fold_bn_after(fused.head_fc, fused.head_norm)
        fused.head_norm = identity()
    fused.eval()  # the Identity modules put in above start in training mode
    if tune_allocator:
        tune_cpu_allocator()
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if amp_dtype is not None:
        fused = _MixedPrecision(fused, amp_dtype)
    return _FrozenCompiled(fused) if compile else fused
