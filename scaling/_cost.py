"""Closed-form cost of a CMT: multiply-adds and parameters from the config alone, no module built.

Counting convention (the CMT, DeiT and EfficientNet papers', and fvcore's): one fused multiply-add is
one FLOP, so "4.0G FLOPs" means 4.0e9 multiply-adds. Per operator the formulas are exactly fvcore's
handles, so that this model and `count_flops` agree to the last unit on every config:

- conv / linear / matmul: one MAC per weight per output position (biases are free);
- scaled-dot-product attention: ``heads * Nq * Nk * (d_qk + d_v)`` (the two matmuls);
- BatchNorm in eval mode: 2 per element; LayerNorm: 5 per element; average pooling: 1 per input
  element;
- element-wise work (GELU, Swish, softmax, residual adds, the position-bias add) counts zero.

The paper's Eq. 16 keeps only the dominant terms of the blocks; the stem, patch merging, norms and the
1280-d head are small but not nothing (about 4% of CMT-S), so they are counted here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._config import CMTConfig

__all__ = ["Cost", "estimate_cost"]

_LAYERNORM = 5  # fvcore's norm_flop_counter: 5 per element with an affine
_BATCHNORM_EVAL = 2  # fvcore's batchnorm_flop_jit in eval mode, with an affine


class CostFigures:
    """``gmacs`` and ``mparams`` for anything with ``macs`` and ``params`` (analytic or traced)."""

    macs: int
    params: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


@dataclass(frozen=True)
class Cost(CostFigures):
    """Cost of one image through the model: ``macs`` (multiply-adds, the papers' "FLOPs") and ``params``.

    ``macs_by_part`` and ``params_by_part`` split the totals over ``stem``, ``stage0`` .. ``stageN``
    and ``head``.
    """

    macs: int
    params: int
    img_size: int
    macs_by_part: dict[str, int] = field(default_factory=dict, compare=False)
    params_by_part: dict[str, int] = field(default_factory=dict, compare=False)


def _conv_macs(c_in: int, c_out: int, kernel: int, groups: int, out_positions: int) -> int:
    return c_out * (c_in // groups) * kernel * kernel * out_positions


def _conv_params(c_in: int, c_out: int, kernel: int, groups: int = 1, bias: bool = True) -> int:
    return c_out * (c_in // groups) * kernel * kernel + (c_out if bias else 0)


def _linear_params(c_in: int, c_out: int, bias: bool = True) -> int:
    return c_in * c_out + (c_out if bias else 0)


def _stem_cost(cfg: CMTConfig, img_size: int) -> tuple[int, int]:
    side = img_size // 2
    positions = side * side
    c = cfg.stem_channels
    macs = params = 0
    for c_in in (cfg.in_chans, c, c):
        macs += _conv_macs(c_in, c, 3, 1, positions) + _BATCHNORM_EVAL * c * positions
        params += _conv_params(c_in, c, 3) + 2 * c
    return macs, params


def _block_cost(dim: int, hidden: int, sr: int, qkv_bias: bool, tokens: int, kv_tokens: int) -> tuple[int, int]:
    """One CMT block: LPU, LayerNorm + lightweight MHSA, LayerNorm + IRFFN."""
    n, m = tokens, kv_tokens
    macs = _conv_macs(dim, dim, 3, dim, n)  # LPU: 3x3 depthwise
    params = _conv_params(dim, dim, 3, dim)
    # Lightweight MHSA
    macs += _LAYERNORM * n * dim + n * dim * dim  # norm1, query
    params += 2 * dim + _linear_params(dim, dim, qkv_bias)
    if sr > 1:  # k x k depthwise stride-k conv + BN shrinks the key/value grid
        macs += _conv_macs(dim, dim, sr, dim, m) + _BATCHNORM_EVAL * dim * m
        params += _conv_params(dim, dim, sr, dim) + 2 * dim
    macs += 2 * m * dim * dim  # key, value
    params += 2 * _linear_params(dim, dim, qkv_bias)
    macs += 2 * n * m * dim  # q @ k^T and attn @ v, all heads
    macs += n * dim * dim  # output projection
    params += _linear_params(dim, dim)
    # IRFFN: 1x1 expand + GELU + BN, 3x3 depthwise (residual) + GELU + BN, 1x1 project + BN
    macs += _LAYERNORM * n * dim
    params += 2 * dim
    macs += n * dim * hidden + _BATCHNORM_EVAL * n * hidden
    params += _linear_params(dim, hidden) + 2 * hidden
    macs += _conv_macs(hidden, hidden, 3, hidden, n) + _BATCHNORM_EVAL * n * hidden
    params += _conv_params(hidden, hidden, 3, hidden) + 2 * hidden
    macs += n * hidden * dim + _BATCHNORM_EVAL * n * dim
    params += _linear_params(hidden, dim) + 2 * dim
    return macs, params


def _stage_cost(cfg: CMTConfig, stage: int, c_in: int, img_size: int) -> tuple[int, int]:
    dim, sr = cfg.embed_dims[stage], cfg.sr_ratios[stage]
    side = cfg.grid_size(stage, img_size)
    tokens, kv_tokens = side * side, (side // sr) ** 2
    # patch merging: 2x2 stride-2 conv + LayerNorm
    macs = _conv_macs(c_in, dim, 2, 1, tokens) + _LAYERNORM * tokens * dim
    params = _conv_params(c_in, dim, 2) + 2 * dim
    # the relative position bias is sized for the config's own resolution, whatever img_size is
    built_side = cfg.grid_size(stage)
    params += cfg.num_heads[stage] * built_side**2 * (built_side // sr) ** 2
    block_macs, block_params = _block_cost(dim, cfg.hidden_dims[stage], sr, cfg.qkv_bias, tokens, kv_tokens)
    return macs + cfg.depths[stage] * block_macs, params + cfg.depths[stage] * block_params


def _head_cost(cfg: CMTConfig, img_size: int) -> tuple[int, int]:
    side = cfg.grid_size(cfg.num_stages - 1, img_size)
    positions = side * side
    c, fc = cfg.embed_dims[-1], cfg.fc_dim
    macs = positions * c * fc + _BATCHNORM_EVAL * positions * fc + positions * fc  # 1x1 conv, BN, pool
    params = _linear_params(c, fc) + 2 * fc
    if cfg.num_classes > 0:
        macs += fc * cfg.num_classes
        params += _linear_params(fc, cfg.num_classes)
    return macs, params


def estimate_cost(cfg: CMTConfig, img_size: int | None = None) -> Cost:
    """MACs and parameters of ``cfg`` for one square image of ``img_size`` (default ``cfg.img_size``).

    Exact, not approximate: the same per-operator rules as `count_flops` (fvcore), so the two agree on
    every valid config, at a few microseconds per call instead of a trace. Parameters count the relative
    position biases at the config's own resolution, as the built model holds them.

    Example:
        >>> from scaling import PRESETS, estimate_cost
        >>> cost = estimate_cost(PRESETS["cmt_s"])
        >>> round(cost.gmacs, 2), round(cost.mparams, 2)
        (4.09, 26.26)
    """
    size = cfg.img_size if img_size is None else int(img_size)
    if size < cfg.total_stride or size % cfg.total_stride:
        raise ValueError(f"img_size={img_size!r} is not allowed; allowed: a positive multiple of {cfg.total_stride}")
    macs_by_part: dict[str, int] = {}
    params_by_part: dict[str, int] = {}
    macs_by_part["stem"], params_by_part["stem"] = _stem_cost(cfg, size)
    c_in = cfg.stem_channels
    for i in range(cfg.num_stages):
        macs_by_part[f"stage{i}"], params_by_part[f"stage{i}"] = _stage_cost(cfg, i, c_in, size)
        c_in = cfg.embed_dims[i]
    macs_by_part["head"], params_by_part["head"] = _head_cost(cfg, size)
    return Cost(
        macs=sum(macs_by_part.values()),
        params=sum(params_by_part.values()),
        img_size=size,
        macs_by_part=macs_by_part,
        params_by_part=params_by_part,
    )
