"""CMT's building blocks, as the official code defines them: the local perception unit and lightweight
multi-head self-attention (`LightweightAttention`), the inverted residual FFN, the block, the stage with its
patch merging, and the stem's conv + GELU + BatchNorm. Activations stay channels-last (NHWC) inside a stage;
`scaling._model` assembles the network from these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, use_fused_attn
from torch.utils.checkpoint import checkpoint

from ._autocast_weights import HALF_DTYPES, autocast_weights
from ._fused import (
    act_batch_norm,
    depthwise_conv3x3,
    depthwise_conv3x3_act_bn,
    depthwise_patch_conv,
    is_cpu_inference,
    is_eager,
    layer_norm,
    lightweight_attention,
    patch_linear,
)
from ._pointwise_route import gemm_is_faster, route_key, timed_choice_enabled
from ._position_bias import resize_position_bias

__all__ = ["CMTBlock", "CMTStage", "ConvGeluBn", "InvertedResidualFFN", "LightweightAttention", "PatchMerging",
           "PointwiseLinear"]

# Norm epsilons of the official release: BatchNorm and patch-merging LayerNorm use PyTorch's default,
# the LayerNorms inside blocks use 1e-6. They change outputs, not counts, but loading released weights
# must reproduce its logits.
_BLOCK_LN_EPS = 1e-6
_MERGE_LN_EPS = 1e-5


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# Maps with at most this many positions take the GEMM: there oneDNN's 1x1 convolution loses to it. In CPU
# inference the route is timed per shape instead (`scaling._pointwise_route`), starting from a bound of 8x8,
# which is also the rule where nothing is timed (the timed choice off, a layer traced before any eager call):
# it takes CMT-S's 7x7 maps (stage 4, the reduced keys and values): at batch 1 PyTorch sends a 1x1 conv on a
# 7x7 map to its im2col fallback (`_slow_conv2d_forward`, about 25 GMAC/s), and at batch 8 oneDNN was 5-25%
# behind the GEMM on those shapes (benchmarks/RESULTS.md).
_GEMM_MAX_POSITIONS = 16
_GEMM_MAX_POSITIONS_INFERENCE = 64
# Off the CPU (CUDA) in bf16/fp16 (autocast or half weights) every 1x1 projection takes the GEMM: cuBLAS adds the
# bias in its epilogue, where cuDNN's 1x1 convolution leaves it to a separate broadcast add over the whole map
# (156 kernels in a CMT-S forward, about a fifth of its GPU time at batch 256); a CMT-S bf16 forward on an H200
# ran 1.13x as fast at batch 256 and 1.14x at batch 1. In fp32 the convolution stays: cuDNN runs it on TF32 tensor
# cores by PyTorch's default while the fp32 GEMM does not, and the GEMM route was 0.80x at batch 256
# (benchmarks/RESULTS.md). Flipped only to measure the old route.
_GEMM_OFF_CPU = True


class PointwiseLinear(nn.Linear):
    """A linear layer over the channels of an NHWC map, run as a 1x1 convolution or as a GEMM.

    Same weights, names and count as `nn.Linear` (and as the official 1x1 convs). On CPU oneDNN's
    channels-last 1x1 convolution is 2-3x faster than the BLAS GEMM behind ``F.linear`` in fp32 on maps of
    8x8 positions and more on AMD EPYCs, and the NHWC input is already in its layout: no copy. On the tiny
    maps of late stages at proxy resolutions (4x4, 2x2) it is the other way round, by 1.2-2x in training
    (benchmarks/RESULTS.md), so those take ``F.linear``: a rule by shape and mode only, so a training run is
    reproducible. In CPU inference the faster route is timed per shape, dtype and thread count instead
    (`scaling._pointwise_route`; a traced or compiled graph takes the layer's last eager route): it differs
    between machine kinds and between fp32 and bf16. Off the CPU, in bf16 and fp16, the GEMM is taken always
    (``_GEMM_OFF_CPU``). In eval mode with grad off under autocast the weight is cast once and kept
    (`scaling._autocast_weights`), not on every call: the outputs are autocast's own, to the bit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The route of the last eager CPU-inference forward (True: the GEMM), which a trace of this layer takes
        # (`fuse_for_inference(compile=True)` runs an eager forward with the same inputs just before); None
        # before any: the shape rule.
        self.eager_route: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return super().forward(x)
        # Once: a Module's parameter lookup costs about 0.5 us. Under autocast inference, the copies cast once.
        weight, bias = autocast_weights(self, x, self.weight, self.bias)
        if x.device.type != "cpu" and _GEMM_OFF_CPU and _in_half_precision(x, weight):
            return F.linear(x, weight, bias)
        inference = is_cpu_inference(x, self)
        takes_gemm = x.shape[1] * x.shape[2] <= (_GEMM_MAX_POSITIONS_INFERENCE if inference else _GEMM_MAX_POSITIONS)
        if inference and timed_choice_enabled():
            if is_eager() and type(x) is torch.Tensor:  # not a fake tensor or another subclass: timings are real
                key = route_key(x.shape, x.stride(), x.dtype, weight.shape, weight.dtype,
                                None if bias is None else bias.dtype)
                takes_gemm = gemm_is_faster(key, lambda: _pointwise_conv(x, weight, bias),
                                            lambda: F.linear(x, weight, bias), takes_gemm)
                if self.eager_route is not takes_gemm:
                    self.eager_route = takes_gemm
            elif self.eager_route is not None:  # traced or compiled: the route this layer last took eagerly
                takes_gemm = self.eager_route
        return F.linear(x, weight, bias) if takes_gemm else _pointwise_conv(x, weight, bias)


def _in_half_precision(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """bf16/fp16 input or weights, or autocast open on the input's device (asked only of a device that has one)."""
    device = x.device.type
    return (x.dtype in HALF_DTYPES or weight.dtype in HALF_DTYPES
            or (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)))


def _pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` on an NHWC map as oneDNN's 1x1 convolution on its channels-last NCHW view."""
    return _to_nhwc(F.conv2d(_to_nchw(x), weight.view(*weight.shape, 1, 1), bias))


class ConvGeluBn(nn.Module):
    """A stem layer: 3x3 conv, then GELU, then BatchNorm (the official order: activation before norm)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, 1)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_nchw(act_batch_norm(_to_nhwc(self.conv(x)), self.act, self.bn, overwrite=True))


class PatchMerging(nn.Module):
    """2x2 stride-2 conv + LayerNorm: halves the grid and sets the stage width. NCHW in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, 2, 2)
        self.norm = nn.LayerNorm(out_chs, eps=_MERGE_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = patch_linear(x, self.proj)  # CPU training: space-to-depth + GEMM, same weights
        if merged is None:
            proj = self.proj  # under autocast inference, its weight cast once (`scaling._autocast_weights`)
            merged = _to_nhwc(F.conv2d(x, *autocast_weights(proj, x, proj.weight, proj.bias), stride=proj.stride))
        return layer_norm(merged, self.norm)


class LightweightAttention(nn.Module):
    """Lightweight MHSA: keys and values come from a k x k depthwise stride-k conv (+ BN) of the input,
    so attention costs ``N * N/k^2`` instead of ``N^2``; a relative position bias is added to the logits.

    The fused path hands the bias to ``F.scaled_dot_product_attention`` as its float mask; the explicit
    path computes softmax(q k^T * scale + bias) v. The choice follows timm's ``use_fused_attn()`` on GPUs;
    on CPUs the explicit path is taken, because there SDPA scans its float mask for fully masked rows on
    every call (``aten::all``, ``isneginf``, ``where``: 4% of a CMT-S forward, benchmarks/RESULTS.md) for
    the same math. CPU training and CPU inference take a third: `lightweight_attention`, one fused kernel per
    direction in training and a forward-only one in inference (scaling/_fused.py).
    """

    fused_attn: Final[bool]

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.q = PointwiseLinear(dim, dim, bias=qkv_bias)
        self.k = PointwiseLinear(dim, dim, bias=qkv_bias)
        self.v = PointwiseLinear(dim, dim, bias=qkv_bias)
        self.proj = PointwiseLinear(dim, dim)
        self.kv: PointwiseLinear | None = None  # K and V as one projection, in an inference copy (`merge_key_value`)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio, groups=dim)
            self.sr_norm = nn.BatchNorm2d(dim)
        else:
            self.sr = None
            self.sr_norm = None

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The K/V reduction conv on NHWC ``x``: the fused kernel in CPU training and inference; otherwise
        oneDNN, kept in fp32 under CPU autocast, where its bf16 backward for strided depthwise convs is 10-20x
        slower than its fp32 one (measured, benchmarks/RESULTS.md)."""
        fused = depthwise_patch_conv(x, self.sr)
        if fused is not None:
            return fused
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return _to_nhwc(self.sr(_to_nchw(x).float()))
        return _to_nhwc(self.sr(_to_nchw(x)))

    @torch.no_grad()
    def merge_key_value(self) -> None:
        """Replace the K and V projections by one twice as wide (their weights stacked, the same products),
        which `forward` splits into two views: one GEMM instead of two on the same reduced map.

        Why: in CPU inference each projection call has a fixed cost (in bf16, oneDNN lays the weight out
        again on every call), and K and V act on the K/V map of only 49 positions at 224 px, so that cost
        is most of theirs; one call for both made a whole CMT-S bf16 forward at batch 1 1-4% faster and left
        fp32 unchanged within noise (AMD EPYC Zen 5, benchmarks/RESULTS.md). For inference copies
        (`scaling.fuse_for_inference` calls it): the parameter names change (``kv`` for ``k`` and ``v``), so a
        model to train or save keeps them apart.
        """
        if self.kv is not None:
            return
        k, v = self.k, self.v
        kv = PointwiseLinear(k.in_features, 2 * k.out_features, bias=k.bias is not None, device=k.weight.device,
                             dtype=k.weight.dtype)
        kv.weight.copy_(torch.cat([k.weight, v.weight]))
        if k.bias is not None:
            kv.bias.copy_(torch.cat([k.bias, v.bias]))
        kv.train(self.training)
        del self.k, self.v
        self.kv = kv

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        kv_in = x
        if self.sr is not None:
            kv_in = act_batch_norm(self._reduce(x), None, self.sr_norm, overwrite=True)
        q = self.q(x)
        if self.kv is None:
            k, v = self.k(kv_in), self.v(kv_in)
        else:
            k, v = self.kv(kv_in).chunk(2, dim=-1)
        fused = lightweight_attention(q, k, v, pos_bias, heads, self.scale, self)
        if fused is not None:
            return self.proj(fused)
        q = q.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
        k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        if self.fused_attn and q.device.type != "cpu":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=pos_bias.to(q.dtype).unsqueeze(0))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + pos_bias
            out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)


class InvertedResidualFFN(nn.Module):
    """IRFFN: 1x1 expand + GELU + BN, 3x3 depthwise conv with a residual + GELU + BN, 1x1 project + BN.

    The 1x1 convs are `PointwiseLinear` layers on the NHWC tokens: the official 1x1 conv weights a reshape
    apart (which `checkpoint_filter_fn` does), the same count, no layout change.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = PointwiseLinear(dim, hidden)
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(hidden)
        self.fc2 = PointwiseLinear(hidden, dim)
        self.norm3 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = act_batch_norm(self.fc1(x), self.act1, self.norm1, overwrite=True)  # fc outputs: fresh maps
        x = depthwise_conv3x3_act_bn(x, self.dwconv, self.act2, self.norm2)
        return act_batch_norm(self.fc2(x), None, self.norm3, overwrite=True)


class CMTBlock(nn.Module):
    """LPU (3x3 depthwise conv, residual) -> LN + lightweight MHSA (residual) -> LN + IRFFN (residual)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, sr_ratio: int, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.lpu = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_LN_EPS)
        self.attn = LightweightAttention(dim, num_heads, sr_ratio, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_LN_EPS)
        self.mlp = InvertedResidualFFN(dim, hidden)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor) -> torch.Tensor:
        x = depthwise_conv3x3(x, self.lpu, residual=True)
        x = x + self.drop_path(self.attn(layer_norm(x, self.norm1), pos_bias))
        return x + self.drop_path(self.mlp(layer_norm(x, self.norm2)))


class CMTStage(nn.Module):
    """Patch merging, then ``depth`` CMT blocks sharing one relative position bias (as in the paper).

    The bias is a parameter of shape ``heads x N x N/k^2`` for the grid the stage was built for; at any
    other grid it is resampled on the fly (`resize_position_bias`), so inputs of other sizes run.
    """

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        hidden: int,
        sr_ratio: int,
        qkv_bias: bool,
        grid: int,
        drop_paths: Iterable[float],
    ) -> None:
        super().__init__()
        self.sr_ratio = sr_ratio
        self.grid = (grid, grid)
        self.downsample = PatchMerging(in_chs, dim)
        kv = grid // sr_ratio
        self.relative_pos = nn.Parameter(torch.randn(num_heads, grid * grid, kv * kv))
        self.blocks = nn.ModuleList(
            CMTBlock(dim, num_heads, hidden, sr_ratio, qkv_bias, dp) for dp in list(drop_paths)[:depth]
        )
        self.grad_checkpointing = False

    def position_bias(self, height: int, width: int) -> torch.Tensor:
        """The bias for a ``height x width`` token grid (the stored one, or a resampled copy)."""
        k = self.sr_ratio
        return resize_position_bias(
            self.relative_pos,
            self.grid,
            (self.grid[0] // k, self.grid[1] // k),
            (height, width),
            (height // k, width // k),
        )

    def set_grid(self, grid: int) -> None:
        """Resample the stored bias to ``grid`` for good (timm's ``set_input_size``)."""
        with torch.no_grad():
            new = self.position_bias(grid, grid)
        self.relative_pos = nn.Parameter(new.detach().clone())
        self.grid = (grid, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        pos_bias = self.position_bias(x.shape[1], x.shape[2])
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, pos_bias, use_reentrant=False)
            else:
                x = block(x, pos_bias)
        return _to_nchw(x)
