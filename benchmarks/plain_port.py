"""A plain port of the official CMT code: the baseline that `bench_train.py` measures our model against.

It keeps the official release's layout and idioms, as a user who copied ``cmt.py`` would run it: token
tensors ``(B, N, C)`` between blocks, a transpose-and-reshape to an NCHW view around every convolution,
``nn.Linear`` for q/k/v, 1x1 ``nn.Conv2d`` in the IRFFN, explicit ``softmax(q k^T * scale + bias) v``
attention, a contiguous NCHW copy between stages, the autograd-Function Swish in the head, and the
official module names (``stem_conv1``, ``blocks_a``, ``_fc``...). Nothing here is tuned. The port is
written from the paper and the release's documented structure; `check_port` proves it faithful by
loading its weights into our model through `scaling.checkpoint_filter_fn` and comparing logits, so the
speed comparison is between two implementations of one network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from scaling import CMTConfig, build_cmt, checkpoint_filter_fn

__all__ = ["PlainCMT", "check_port"]


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    batch, _, channels = x.shape
    return x.permute(0, 2, 1).reshape(batch, channels, height, width)


class Mlp(nn.Module):
    """IRFFN as released: 1x1 conv + GELU + BN, depthwise 3x3 with residual + GELU + BN, 1x1 conv + BN."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.BatchNorm2d(hidden))
        self.proj = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.proj_act = nn.GELU()
        self.proj_bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.conv1(_tokens_to_map(x, height, width))
        x = self.proj_bn(self.proj_act(self.proj(x) + x))
        return self.conv2(x).flatten(2).permute(0, 2, 1)


class Attention(nn.Module):
    """Lightweight MHSA as released: K/V from a depthwise stride-k conv + BN, explicit softmax attention."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Sequential(nn.Conv2d(dim, dim, sr_ratio, sr_ratio, groups=dim), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor, height: int, width: int, relative_pos: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q = self.q(x).reshape(batch, tokens, self.heads, -1).permute(0, 2, 1, 3)
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr(_tokens_to_map(x, height, width)).reshape(batch, dim, -1).permute(0, 2, 1)
        k = self.k(kv).reshape(batch, -1, self.heads, dim // self.heads).permute(0, 2, 1, 3)
        v = self.v(kv).reshape(batch, -1, self.heads, dim // self.heads).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + relative_pos
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Block(nn.Module):
    """LPU (depthwise 3x3 + residual on a reshaped map), then LN + attention and LN + IRFFN, each residual."""

    def __init__(self, dim: int, heads: int, hidden: int, sr_ratio: int, qkv_bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr_ratio, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, height: int, width: int, relative_pos: torch.Tensor) -> torch.Tensor:
        feature_map = _tokens_to_map(x, height, width)
        x = (self.proj(feature_map) + feature_map).flatten(2).permute(0, 2, 1)
        x = x + self.attn(self.norm1(x), height, width, relative_pos)
        return x + self.mlp(self.norm2(x), height, width)


class _SwishFunction(torch.autograd.Function):
    """The release's "memory-efficient" Swish: saves the input, recomputes the sigmoid in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(x)
        return grad * (sig * (1 + x * (1 - sig)))


class MemoryEfficientSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwishFunction.apply(x)


class PatchEmbed(nn.Module):
    """2x2 stride-2 conv, flattened to tokens, LayerNorm."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 2, 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class PlainCMT(nn.Module):
    """The official network for any `CMTConfig`, one attribute per stage as in the release."""

    def __init__(self, cfg: CMTConfig) -> None:
        super().__init__()
        self.letters = "abcdefgh"[: cfg.num_stages]
        s = cfg.stem_channels
        for i, c_in in enumerate((cfg.in_chans, s, s), start=1):
            setattr(self, f"stem_conv{i}", nn.Conv2d(c_in, s, 3, 2 if i == 1 else 1, 1))
            setattr(self, f"stem_relu{i}", nn.GELU())
            setattr(self, f"stem_norm{i}", nn.BatchNorm2d(s))
        c_in = s
        for i, letter in enumerate(self.letters):
            dim, k, heads, grid = cfg.embed_dims[i], cfg.sr_ratios[i], cfg.num_heads[i], cfg.grid_size(i)
            setattr(self, f"patch_embed_{letter}", PatchEmbed(c_in, dim))
            setattr(self, f"relative_pos_{letter}", nn.Parameter(torch.randn(heads, grid * grid, (grid // k) ** 2)))
            setattr(self, f"blocks_{letter}", nn.ModuleList(
                Block(dim, heads, cfg.hidden_dims[i], k, cfg.qkv_bias) for _ in range(cfg.depths[i])))
            c_in = dim
        self._fc = nn.Conv2d(c_in, cfg.fc_dim, 1)
        self._bn = nn.BatchNorm2d(cfg.fc_dim)
        self._swish = MemoryEfficientSwish()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.fc_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            conv, act, norm = (getattr(self, f"stem_{part}{i}") for part in ("conv", "relu", "norm"))
            x = norm(act(conv(x)))
        batch = x.shape[0]
        for letter in self.letters:
            x, height, width = getattr(self, f"patch_embed_{letter}")(x)
            for block in getattr(self, f"blocks_{letter}"):
                x = block(x, height, width, getattr(self, f"relative_pos_{letter}"))
            if letter != self.letters[-1]:
                # as released: each stage hands the next a contiguous NCHW copy
                x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
        x = self._swish(self._bn(self._fc(_tokens_to_map(x, height, width))))
        return self.head(self._drop(self._avg_pooling(x).flatten(1)))


def check_port(cfg: CMTConfig, resolution: int) -> float:
    """Load a random plain port's weights into our model and return the largest logit difference.

    Raises `AssertionError` when the two differ beyond float32 noise: then the port is not the network
    we claim to compare against.
    """
    torch.manual_seed(0)
    port = PlainCMT(cfg).eval()
    ours = build_cmt(cfg).eval()
    ours.load_state_dict(checkpoint_filter_fn(port.state_dict(), ours))
    ports_params = sum(p.numel() for p in port.parameters())
    our_params = sum(p.numel() for p in ours.parameters())
    assert ports_params == our_params, f"plain port has {ports_params} parameters, ours {our_params}"
    x = torch.randn(2, cfg.in_chans, resolution, resolution)
    with torch.no_grad():
        gap = (port(x) - ours(x)).abs().max().item()
    assert gap < 1e-3, f"plain port and our model differ by {gap} in logits"
    return gap
