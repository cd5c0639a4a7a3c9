"""Fused CPU training kernels for CMT's BatchNorm + GELU, LayerNorm, depthwise convolutions and attention.

Why: at proxy resolutions a CMT training step on a CPU spends most of its time in BatchNorm, GELU,
LayerNorm and depthwise convolutions on odd channel counts (CMT-Ti's IRFFN widths are 165, 331, 662,
1324), where ATen and oneDNN fall off their fast paths, and in per-op overhead around tiny attention
matrices (1-64 keys per query). `scaling/_cpu_kernels.cpp` does "activation + BatchNorm with batch
statistics" in two passes each way, LayerNorm per row, the 3x3 and the k x k stride-k depthwise convs
directly on NHWC rows, and the whole lightweight attention (bias, softmax and both matmuls) on the
projection outputs, in fp32 or bf16. It is compiled on first use with ``torch.utils.cpp_extension`` for
the CPU capability torch reports, and cached (the first compile takes about 20-40 s).

The model calls `act_batch_norm`, `layer_norm`, `depthwise_conv3x3`, `depthwise_conv3x3_act_bn`,
`depthwise_patch_conv`, `lightweight_attention` and `patch_linear` (patch merging as a GEMM, no kernel of
its own); each takes the fast path only for a CPU module in training mode, outside tracing, scripting and
``torch.compile``, and otherwise runs (or lets the caller run) exactly the modules' own forward (the plain
path: it is also the reference the tests compare the kernels with). Inference has kernels of its own,
forward only: in eval mode under ``no_grad``, "activation + BatchNorm" becomes one pass with the running
statistics (`act_batch_norm`), written into the preceding conv's fresh output where the caller says it is
one (as timm's in-place activations do, so a forward hook on that conv sees the activated map), the IRFFN's
depthwise conv + residual + GELU + BatchNorm another (`depthwise_conv3x3_act_bn`), the LPU's depthwise
conv + residual a third (`depthwise_conv3x3`), the lightweight attention (bias, softmax and both matmuls)
a fourth (`lightweight_attention`), the K/V reduction conv a fifth (`depthwise_patch_conv`), and LayerNorm
on a bf16 map runs its training forward kernel (`layer_norm`): at batch 8 the first three cut CMT-S's CPU
inference time by a fifth (RESULTS.md).
Parameters, buffers and module names are untouched, so checkpoints, fvcore counts and `fuse_for_inference`
see the same model. The kernels' gradients are
first-order only (a double backward raises).
``CMT_SCALE_FUSED_KERNELS=0`` or `set_fused_kernels(False)` turns them off; if they cannot be built (no
C++ compiler), one warning says so and training takes the plain path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable

from ._kernel_build import _ACT_CODES, fused_kernels_available, set_fused_kernels

__all__ = [
    "act_batch_norm",
    "depthwise_conv3x3",
    "depthwise_conv3x3_act_bn",
    "depthwise_patch_conv",
    "fused_kernels_available",
    "is_cpu_inference",
    "is_depthwise",
    "is_eager",
    "layer_norm",
    "lightweight_attention",
    "patch_linear",
    "set_fused_kernels",
]

def is_eager() -> bool:
    """Not under tracing, scripting or ``torch.compile``: where ops opaque to a tracer (ours) may run."""
    return not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling()


def is_cpu_inference(x: torch.Tensor, module: nn.Module) -> bool:
    """An eval-mode ``module`` on a CPU tensor with gradients off (``torch.no_grad``, ``inference_mode``): the
    CPU inference the model's inference-only choices (kernels, GEMM bound, allocator) are made for."""
    return x.device.type == "cpu" and not module.training and not torch.is_grad_enabled()


def _kernels_apply_to(x: torch.Tensor) -> bool:
    """A CPU float32/bf16 tensor in eager mode, with the kernels switched on and built."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and is_eager()
        and fused_kernels_available()
    )


def _takes_kernels(x: torch.Tensor, module: nn.Module) -> bool:
    """The training kernels: a module in training mode."""
    return module.training and _kernels_apply_to(x)


def _takes_inference_kernels(x: torch.Tensor, module: nn.Module) -> bool:
    """The inference kernels (forward only, no autograd): an eval-mode module under ``torch.no_grad`` or
    ``torch.inference_mode``, as timm's validation, `measure_throughput` and the trainer's evaluation run.
    An eval-mode forward with gradients on (a saliency map, say), or with a forward-mode tangent (which
    ``no_grad`` does not switch off), keeps the plain, differentiable path."""
    return (is_cpu_inference(x, module) and _kernels_apply_to(x)
            and forward_ad.unpack_dual(x).tangent is None)


def _eval_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An eval-mode BatchNorm2d as per-channel ``scale * x + shift`` from its running statistics; None when
    it has none (``track_running_stats=False`` normalises with the batch's own statistics even in eval).
    Computed per call by one kernel op, never cached: weights and statistics stay the module's own."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return None
    weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
    return tuple(torch.ops.cmt_scale.bn_eval_affine(bn.running_mean, bn.running_var, weight, bias, bn.eps))


# ------------------------------------------------------------------------------- BatchNorm + activation
class _BatchNormAct(torch.autograd.Function):
    """``bn(act(x))`` with batch statistics over the rows of ``x`` (M, C); saves act(x) and act'(x).

    The running statistics are updated in place by the kernel (``factor`` is the averaging weight),
    as ``nn.BatchNorm2d`` does in training."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, factor: float, eps: float, act: int) -> torch.Tensor:
        out, y, d, mean, invstd = torch.ops.cmt_scale.act_bn_forward(
            x, weight, bias, running_mean, running_var, factor, eps, act)
        ctx.save_for_backward(y, d, mean, invstd, weight)
        ctx.act = act
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, d, mean, invstd, weight = ctx.saved_tensors
        dx, dweight, dbias = torch.ops.cmt_scale.act_bn_backward(grad, y, d, mean, invstd, weight, ctx.act)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None, None, None, None, None


def _averaging_factor(bn: nn.BatchNorm2d) -> float:
    """Count the batch and return the running-average weight, as ``nn.BatchNorm2d.forward`` does:
    ``momentum``, or with ``momentum=None`` a cumulative average (1 / batches seen)."""
    if not bn.track_running_stats:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def _act_code(act: nn.Module | None) -> int | None:
    """The kernel's code for ``act`` (None: not one the kernels know)."""
    if act is None or isinstance(act, nn.Identity):
        return _ACT_CODES["none"]
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return _ACT_CODES["gelu"]
    return None


def act_batch_norm(x: torch.Tensor, act: nn.Module | None, bn: nn.Module, overwrite: bool = False) -> torch.Tensor:
    """``bn(act(x))`` for an NHWC tensor ``x``: ``act`` an activation module (or None), ``bn`` a
    BatchNorm2d over the channels (or an Identity, as `fuse_for_inference` leaves it).

    The plain path is exactly the modules on the NCHW view; the fused one (exact GELU or no activation,
    a training-mode affine BatchNorm) gives the same values, gradients and running-statistics updates
    (tested), in two passes over memory each way. ``overwrite=True`` says ``x`` is a fresh intermediate
    no one else holds (a convolution's output): the inference kernel then writes into it.
    """
    code = _act_code(act)
    if code is not None and _takes_inference_kernels(x, bn):
        fused = _act_affine_inference(x, code, bn, overwrite)
        if fused is not None:
            return fused
    if code is None or not (isinstance(bn, nn.BatchNorm2d) and bn.affine and _takes_kernels(x, bn)):
        y = x if act is None else act(x)
        return bn(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    rows = x.reshape(-1, x.shape[-1])
    factor = _averaging_factor(bn)
    tracked = bn.track_running_stats and bn.running_mean is not None
    out = _BatchNormAct.apply(rows, bn.weight, bn.bias, bn.running_mean if tracked else None,
                              bn.running_var if tracked else None, factor, bn.eps, code)
    return out.view(x.shape)


def _act_affine_inference(x: torch.Tensor, code: int, bn: nn.Module, overwrite: bool) -> torch.Tensor | None:
    """``bn(act(x))`` in eval mode as one pass: the activation, then the BatchNorm's running-statistics affine
    (or none, for an Identity left by `fuse_for_inference`); None when ``bn`` normalises by batch statistics.
    In place when ``overwrite`` and ``x`` is contiguous (its rows are then a view of it)."""
    if isinstance(bn, nn.Identity):
        if code == _ACT_CODES["none"]:
            return x
        scale_shift = (None, None)
    else:
        scale_shift = _eval_affine(bn)
        if scale_shift is None:
            return None
    channels = x.shape[-1]
    if overwrite and x.is_contiguous():
        torch.ops.cmt_scale.act_affine_(x.view(-1, channels), *scale_shift, code)
        return x
    rows = x.reshape(-1, channels).contiguous()
    return torch.ops.cmt_scale.act_affine(rows, *scale_shift, code).view(x.shape)


# ------------------------------------------------------------------------------------ LayerNorm
class _LayerNorm(torch.autograd.Function):
    """LayerNorm over the last dimension of ``x`` (M, C); saves x and each row's mean and rstd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        y, mean, rstd = torch.ops.cmt_scale.layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        dx, dweight, dbias = torch.ops.cmt_scale.layer_norm_backward(grad, x, mean, rstd, weight)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None


def layer_norm(x: torch.Tensor, ln: nn.Module) -> torch.Tensor:
    """``ln(x)`` for a LayerNorm over the last dimension of ``x`` (NHWC tokens); fused in training, and in CPU
    inference on a bf16 map the same forward kernel alone, which keeps the map bf16 (float statistics
    inside). ATen's LayerNorm, on autocast's fp32 list, casts the map up, writes an fp32 output, and the
    next convolution casts it down again: 1.2-1.7x the time per call on CMT-S's stage-1 and stage-2 shapes
    at batch 8, and the whole bf16 forward 4.6% faster there (benchmarks/RESULTS.md). An fp32 map keeps
    ATen's LayerNorm: faster per call, the kernel gained nothing in a whole fp32 forward."""
    fusable = (
        isinstance(ln, nn.LayerNorm)
        and ln.elementwise_affine
        and ln.bias is not None
        and len(ln.normalized_shape) == 1
    )
    if fusable and x.dtype == torch.bfloat16 and _takes_inference_kernels(x, ln):
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        return torch.ops.cmt_scale.layer_norm_forward(rows, ln.weight, ln.bias, ln.eps)[0].view(x.shape)
    if not (fusable and _takes_kernels(x, ln)):
        return ln(x)
    rows = x.reshape(-1, x.shape[-1])
    return _LayerNorm.apply(rows, ln.weight, ln.bias, ln.eps).view(x.shape)


# ------------------------------------------------------------------------------ 3x3 depthwise conv
class _DepthwiseConv(torch.autograd.Function):
    """A depthwise conv on NHWC ``x`` by one of two kernels: 3x3, stride 1, padding 1, optionally with the
    input added (``patch=False``: LPU and IRFFN), or k x k, stride k, unpadded (``patch=True``: the K/V
    reduction, one weighted sum per patch and channel)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patch: bool,
                residual: bool) -> torch.Tensor:
        k = weight.shape[-1]
        taps = _taps(weight)
        ctx.save_for_backward(x, taps)
        ctx.k, ctx.patch, ctx.residual, ctx.has_bias = k, patch, residual, bias is not None
        if patch:
            return torch.ops.cmt_scale.patch_conv_forward(x, taps, bias, k)
        return torch.ops.cmt_scale.dwconv3x3_forward(x, taps, bias, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, taps = ctx.saved_tensors
        if ctx.patch:
            dx, dtaps, dbias = torch.ops.cmt_scale.patch_conv_backward(grad, x, taps, ctx.k)
        else:
            dx, dtaps, dbias = torch.ops.cmt_scale.dwconv3x3_backward(grad, x, taps, ctx.residual)
        dweight = dtaps.t().reshape(-1, 1, ctx.k, ctx.k).to(taps.dtype)  # taps: a view of the weight
        return dx, dweight, dbias.to(taps.dtype) if ctx.has_bias else None, None, None


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise conv's (C, 1, k, k) weight as the kernels' (k*k, C) taps: tap-major, channels innermost (a
    view)."""
    return weight.reshape(weight.shape[0], -1).t()


def _dwconv3x3_inference(x: torch.Tensor, conv: nn.Module, residual: bool, code: int = 0,
                         scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """The 3x3 depthwise kernel, forward only: ``conv(x)`` (+ ``x``), then act(.) * scale + shift if given."""
    return torch.ops.cmt_scale.dwconv3x3_forward(x.contiguous(), _taps(conv.weight), conv.bias, residual, code,
                                                 scale, shift)


def is_depthwise(conv: nn.Module) -> bool:
    """A Conv2d with one filter per channel (the LPU, the IRFFN's middle, the K/V reduction), whatever the
    width: at width 1 such a conv has ``groups == 1`` too, and it still goes to the depthwise kernels."""
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels


def _is_depthwise3x3(conv: nn.Module) -> bool:
    return (
        is_depthwise(conv)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
    )


def depthwise_conv3x3_act_bn(x: torch.Tensor, conv: nn.Module, act: nn.Module | None, bn: nn.Module) -> torch.Tensor:
    """``bn(act(x + conv(x)))`` on NHWC ``x``: the IRFFN's middle. In eval mode under ``no_grad`` one pass
    (convolution, residual, GELU and the BatchNorm's affine in registers: one output map instead of three);
    otherwise `depthwise_conv3x3` then `act_batch_norm`, each with its own training kernel or plain path."""
    code = _act_code(act)
    both_eval = _takes_inference_kernels(x, conv) and not bn.training  # BN re-estimation: eval conv, training BN
    if code is not None and _is_depthwise3x3(conv) and both_eval:
        scale_shift = _eval_affine(bn) if not isinstance(bn, nn.Identity) else (None, None)
        if scale_shift is not None:
            return _dwconv3x3_inference(x, conv, True, code, *scale_shift)
    return act_batch_norm(depthwise_conv3x3(x, conv, residual=True), act, bn)


def depthwise_conv3x3(x: torch.Tensor, conv: nn.Module, residual: bool) -> torch.Tensor:
    """``x + conv(x)`` (``residual=True``) or ``conv(x)`` for an NHWC tensor and a 3x3 depthwise conv: the
    kernel in training and, forward only, in eval under ``no_grad`` (the LPU: one pass and one output map
    where oneDNN's conv and the residual add make two)."""
    if _is_depthwise3x3(conv) and _takes_inference_kernels(x, conv):
        return _dwconv3x3_inference(x, conv, residual)
    if not (_is_depthwise3x3(conv) and _takes_kernels(x, conv)):
        x_nchw = x.permute(0, 3, 1, 2)
        out = conv(x_nchw)
        return (x_nchw + out if residual else out).permute(0, 2, 3, 1)
    return _DepthwiseConv.apply(x.contiguous(), conv.weight, conv.bias, False, residual)


# ------------------------------------------------------------------------------ lightweight attention
class _LightweightAttention(torch.autograd.Function):
    """softmax(scale * q k^T + bias) v per head, on (B, N, C) query rows and (B, M, C) key and value rows;
    saves q, k, v and the probabilities. The bias (heads, N, M) stays float32 and gets a float32 gradient."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int,
                scale: float) -> torch.Tensor:
        out, probs = torch.ops.cmt_scale.attention_forward(q, k, v, bias, heads, scale)
        ctx.save_for_backward(q, k, v, probs)
        ctx.heads, ctx.scale, ctx.bias_dtype = heads, scale, bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, k, v, probs = ctx.saved_tensors
        dq, dk, dv, dbias = torch.ops.cmt_scale.attention_backward(grad, q, k, v, probs, ctx.heads, ctx.scale)
        return dq, dk, dv, dbias.to(ctx.bias_dtype), None, None


def lightweight_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, heads: int,
                          scale: float, module: nn.Module) -> torch.Tensor | None:
    """The fused attention for NHWC projections ``q`` (B, H, W, C) and ``k``, ``v`` (B, h, w, C) with a
    ``heads x HW x hw`` bias, as (B, H, W, C); None when ``module`` does not take the kernels (the caller
    then runs its own path). Under autocast the keys and values are in the queries' dtype already.

    In training, the kernel pair that saves the probabilities for the backward; in CPU inference
    (`_takes_inference_kernels`), a forward-only kernel that keeps none and runs each head as small GEMMs
    in registers, R query rows at a time: 1.1-3x faster per call than ATen's explicit path on CMT-S's shapes,
    3-19% on a whole CMT-S forward (benchmarks/RESULTS.md)."""
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    inference = _takes_inference_kernels(q, module)
    if not (inference or _takes_kernels(q, module)):
        return None
    batch, height, width, dim = q.shape
    rows = lambda t: t.reshape(batch, -1, dim).contiguous()  # noqa: E731 - NHWC maps as token rows, no copy
    if inference:  # keys and values as views: the halves of a merged K/V projection are read in place
        views = lambda t: t.reshape(batch, -1, dim)  # noqa: E731
        out = torch.ops.cmt_scale.attention_inference(rows(q), views(k), views(v), bias, heads, scale)
    else:
        out = _LightweightAttention.apply(rows(q), rows(k), rows(v), bias, heads, scale)
    return out.view(q.shape)


# ---------------------------------------------------------------- k x k, stride-k convolutions
def _patch_size(conv: nn.Module, depthwise: bool) -> int:
    """k when ``conv`` is an unpadded, undilated k x k, stride-k Conv2d (one weighted sum per patch),
    depthwise or dense as asked; 0 otherwise."""
    if not isinstance(conv, nn.Conv2d):
        return 0
    k = conv.kernel_size[0]
    same_shape = conv.kernel_size == (k, k) and conv.stride == (k, k)
    plain = conv.padding == (0, 0) and conv.dilation == (1, 1)
    return k if same_shape and plain and (is_depthwise(conv) if depthwise else conv.groups == 1) else 0


def depthwise_patch_conv(x: torch.Tensor, conv: nn.Module) -> torch.Tensor | None:
    """``conv`` (a k x k, stride-k, unpadded depthwise conv) on NHWC ``x``, as NHWC; None when the kernels
    do not apply (the caller then runs its own path). In CPU inference the forward alone, in ``x``'s dtype:
    one pass over the NHWC map where oneDNN's conv needs the NCHW view (and, under autocast, the module's
    fp32 copy of it)."""
    k = _patch_size(conv, depthwise=True)
    if not (k and x.shape[1] >= k and x.shape[2] >= k):
        return None
    if _takes_inference_kernels(x, conv):
        return torch.ops.cmt_scale.patch_conv_forward(x.contiguous(), _taps(conv.weight), conv.bias, k)
    if not _takes_kernels(x, conv):
        return None
    return _DepthwiseConv.apply(x.contiguous(), conv.weight, conv.bias, True, False)


def patch_linear(x: torch.Tensor, conv: nn.Module) -> torch.Tensor | None:
    """``conv`` (a dense k x k, stride-k, unpadded conv: patch merging) on NCHW ``x``, as an NHWC map, run as
    space-to-depth + one GEMM; None when this path does not apply (the caller runs the conv).

    No custom kernel: oneDNN's strided-conv backward is far off the GEMM rate on these shapes (the
    184 -> 368 merge at 4x4 ran at 0.07 TFLOP/s in fp32), while a copy into (positions, k*k*C) patches
    and a GEMM run at the GEMM rate: +3.8% on a bf16 training step (benchmarks/RESULTS.md). Taken where
    the fused kernels are: CPU training, the kernels switched on."""
    k = _patch_size(conv, depthwise=False)
    if not (k and x.shape[2] >= k and x.shape[3] >= k and _takes_kernels(x, conv)):
        return None
    batch, channels, height, width = x.shape
    rows, cols = height // k, width // k
    nhwc = x.permute(0, 2, 3, 1)[:, : rows * k, : cols * k]
    patches = nhwc.reshape(batch, rows, k, cols, k, channels).permute(0, 1, 3, 2, 4, 5)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, k * k * channels)  # (out, u, v, C)
    return F.linear(patches.reshape(batch, rows, cols, k * k * channels), weight, conv.bias)
