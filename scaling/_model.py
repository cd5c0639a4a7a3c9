"""The CMT network built from a `CMTConfig`: one stage class, looped, timm-native.

Layout choice, for speed: inside a stage the activations live as ``(B, H, W, C)`` tensors, which is the
token layout attention and LayerNorm want *and* the channels-last memory layout the convolutions want.
Going from one to the other is a ``permute``, a free view, never a copy; the official code instead
reshapes between ``(B, N, C)`` and contiguous NCHW three times per block. The input is made
channels-last once at the stem, and every conv then keeps that layout.

Module names follow timm (``stem``, ``stages``, ``head``); `checkpoint_filter_fn` in
``scaling._checkpoint`` maps the official release's names onto them. Parameter counts equal the
official implementation's for the same config, module for module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_, use_fused_attn
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ._config import CMTConfig
from ._fused import (
    act_batch_norm,
    depthwise_conv3x3,
    depthwise_patch_conv,
    layer_norm,
    lightweight_attention,
    patch_linear,
)
from ._position_bias import resize_position_bias

__all__ = ["CMT", "build_cmt"]

# Norm epsilons of the official release: BatchNorm and patch-merging LayerNorm use PyTorch's default,
# the LayerNorms inside blocks use 1e-6. They change outputs, not counts, but loading released weights
# must reproduce its logits.
_BLOCK_LN_EPS = 1e-6
_MERGE_LN_EPS = 1e-5


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# Maps with at most this many positions take the GEMM: there oneDNN's 1x1 convolution loses to it.
_GEMM_MAX_POSITIONS = 16


class PointwiseLinear(nn.Linear):
    """A linear layer over the channels of an NHWC map, run as a 1x1 convolution on larger maps.

    Same weights, names and count as `nn.Linear` (and as the official 1x1 convs). On CPU oneDNN's
    channels-last 1x1 convolution is 2-3x faster than the BLAS GEMM behind ``F.linear`` on maps of 8x8
    positions and more, and the NHWC input is already in its layout: no copy. On the tiny maps of late
    stages at proxy resolutions (4x4, 2x2) it is the other way round, by 1.2-2x in training
    (benchmarks/RESULTS.md), so those take ``F.linear``. The rule depends on the shape only, so a run
    is reproducible.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] * x.shape[2] <= _GEMM_MAX_POSITIONS:
            return super().forward(x)
        out = F.conv2d(_to_nchw(x), self.weight.view(*self.weight.shape, 1, 1), self.bias)
        return _to_nhwc(out)


class ConvGeluBn(nn.Module):
    """A stem layer: 3x3 conv, then GELU, then BatchNorm (the official order: activation before norm)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, 1)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_nchw(act_batch_norm(_to_nhwc(self.conv(x)), self.act, self.bn))


class PatchMerging(nn.Module):
    """2x2 stride-2 conv + LayerNorm: halves the grid and sets the stage width. NCHW in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, 2, 2)
        self.norm = nn.LayerNorm(out_chs, eps=_MERGE_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = patch_linear(x, self.proj)  # CPU training: space-to-depth + GEMM, same weights
        return layer_norm(_to_nhwc(self.proj(x)) if merged is None else merged, self.norm)


class LightweightAttention(nn.Module):
    """Lightweight MHSA: keys and values come from a k x k depthwise stride-k conv (+ BN) of the input,
    so attention costs ``N * N/k^2`` instead of ``N^2``; a relative position bias is added to the logits.

    The fused path hands the bias to ``F.scaled_dot_product_attention`` as its float mask; the explicit
    path computes softmax(q k^T * scale + bias) v. The choice follows timm's ``use_fused_attn()``. CPU
    training takes a third: `lightweight_attention`, one fused kernel per direction (scaling/_fused.py).
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
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio, groups=dim)
            self.sr_norm = nn.BatchNorm2d(dim)
        else:
            self.sr = None
            self.sr_norm = None

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The K/V reduction conv on NHWC ``x``: the fused kernel in CPU training; otherwise oneDNN, kept in
        fp32 under CPU autocast, where its bf16 backward for strided depthwise convs is 10-20x slower than
        its fp32 one (measured, benchmarks/RESULTS.md)."""
        fused = depthwise_patch_conv(x, self.sr)
        if fused is not None:
            return fused
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return _to_nhwc(self.sr(_to_nchw(x).float()))
        return _to_nhwc(self.sr(_to_nchw(x)))

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        kv_in = x
        if self.sr is not None:
            kv_in = act_batch_norm(self._reduce(x), None, self.sr_norm)
        q, k, v = self.q(x), self.k(kv_in), self.v(kv_in)
        fused = lightweight_attention(q, k, v, pos_bias, heads, self.scale, self)
        if fused is not None:
            return self.proj(fused)
        q = q.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
        k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        if self.fused_attn:
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
        x = act_batch_norm(self.fc1(x), self.act1, self.norm1)
        x = act_batch_norm(depthwise_conv3x3(x, self.dwconv, residual=True), self.act2, self.norm2)
        return act_batch_norm(self.fc2(x), None, self.norm3)


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


def _resolve_config(cfg: CMTConfig | Mapping[str, Any] | str | None, overrides: dict[str, Any]) -> CMTConfig:
    """Turn what timm's builder and users pass (a config, a dict, a JSON path, plus overrides) into one config."""
    if cfg is None:
        raise ValueError("a CMT needs a config: pass a CMTConfig, a dict, or a JSON file path as `config=`")
    if isinstance(cfg, Mapping):
        cfg = CMTConfig.from_dict(cfg)
    elif isinstance(cfg, str):
        cfg = CMTConfig.from_json(cfg)
    elif not isinstance(cfg, CMTConfig):
        raise ValueError(f"config must be a CMTConfig, a dict or a JSON path, got {type(cfg).__name__}")
    img_size = overrides.get("img_size")
    if isinstance(img_size, (tuple, list)):
        if len(set(img_size)) != 1:
            raise ValueError(f"img_size={tuple(img_size)} is not allowed; allowed: a square size (one integer)")
        overrides["img_size"] = int(img_size[0])
    changes = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**changes) if changes else cfg


class CMT(nn.Module):
    """A CMT built from a `CMTConfig`.

    Keyword overrides (``num_classes``, ``in_chans``, ``img_size``, ``drop_rate``, ``drop_path_rate``, or
    any other config field) are applied to the config first, so timm's ``create_model`` kwargs work.
    ``forward_features`` returns the ``fc_dim`` map after the head's 1x1 conv + BN + Swish (as timm's
    EfficientNet does); ``forward_head`` pools, drops out and classifies.

    Example:
        >>> from scaling import CMT, PRESETS
        >>> model = CMT(PRESETS["cmt_ti"], num_classes=10)
        >>> model(torch.randn(2, 3, 160, 160)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: CMTConfig | Mapping[str, Any] | str | None = None, **overrides: Any) -> None:
        super().__init__()
        global_pool = overrides.pop("global_pool", "avg")
        cfg = _resolve_config(config, overrides)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.fc_dim
        self.drop_rate = cfg.drop_rate
        self.global_pool = _check_pool(global_pool, cfg.num_classes)
        self.grad_checkpointing = False

        c = cfg.stem_channels
        self.stem = nn.Sequential(ConvGeluBn(cfg.in_chans, c, 2), ConvGeluBn(c, c, 1), ConvGeluBn(c, c, 1))
        drop_paths = torch.linspace(0, cfg.drop_path_rate, cfg.total_depth).tolist()
        stages, in_chs, start = [], c, 0
        self.feature_info: list[dict[str, Any]] = []
        for i in range(cfg.num_stages):
            depth = cfg.depths[i]
            stages.append(
                CMTStage(
                    in_chs, cfg.embed_dims[i], depth, cfg.num_heads[i], cfg.hidden_dims[i], cfg.sr_ratios[i],
                    cfg.qkv_bias, cfg.grid_size(i), drop_paths[start : start + depth],
                )
            )
            self.feature_info.append(dict(num_chs=cfg.embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
            in_chs, start = cfg.embed_dims[i], start + depth
        self.stages = nn.ModuleList(stages)
        # Head as in EfficientNet: 1x1 conv to fc_dim + BN + Swish on the map, then pool, dropout, linear.
        self.head_fc = PointwiseLinear(in_chs, cfg.fc_dim)
        self.head_norm = nn.BatchNorm2d(cfg.fc_dim)
        self.head_act = nn.SiLU()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.fc_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # ------------------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The relative position biases play the part of ViT's ``pos_embed``: no weight decay on them."""
        return {f"stages.{i}.relative_pos" for i in range(len(self.stages))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.(?:downsample|relative_pos)", (0,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.global_pool = _check_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.cfg = self.cfg.replace(num_classes=num_classes)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild the position biases for ``img_size`` (resampled, so trained weights carry over)."""
        cfg = _resolve_config(self.cfg, {"img_size": img_size})
        for i, stage in enumerate(self.stages):
            stage.set_grid(cfg.grid_size(i))
        self.cfg = cfg

    # ------------------------------------------------------------------------------------ forward
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # One cheap copy of a 3-channel image makes every later conv run channels-last.
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_head_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage output (NCHW) -> the ``fc_dim`` map: 1x1 conv + BN + Swish."""
        return self.head_act(self.head_norm(_to_nchw(self.head_fc(_to_nhwc(x)))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_head_map(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (NCHW, strides 4, 8, 16, 32 for four stages) for dense tasks, as timm's hierarchical models."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not allowed; allowed: 'NCHW' or 'NHWC'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.forward_stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x if output_fmt == "NCHW" else _to_nhwc(x))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.forward_head_map(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one (and the head), for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.head_fc, self.head_norm, self.head_act = nn.Identity(), nn.Identity(), nn.Identity()
            self.reset_classifier(0, "")
        return take_indices


def _check_pool(global_pool: str, num_classes: int) -> str:
    """'avg' or '' (no pooling: forward_head returns the map); a classifier needs pooled features."""
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool={global_pool!r} is not allowed; allowed: 'avg' or '' (no pooling)")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0; a classifier takes pooled features")
    return global_pool


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated-normal linears, fan-out Kaiming convs, unit norms, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_cmt(config: CMTConfig | Mapping[str, Any] | str, **overrides: Any) -> CMT:
    """Build the CMT that ``config`` describes (a `CMTConfig`, its dict, or a JSON file written by ``to_json``).

    Example:
        >>> from scaling import PRESETS, build_cmt
        >>> model = build_cmt(PRESETS["cmt_s"])
        >>> sum(p.numel() for p in model.parameters())
        26256160
    """
    return CMT(config, **overrides)
