"""The paper's four CMT members as `CMTConfig` values, and the figures the paper prints for them.

The hyper-parameters are those of the paper's Table 1, cross-checked against the official release
(``cmt_pytorch/cmt.py`` of huawei-noah/Efficient-AI-Backbones): widths, depths, heads, IRFFN ratios,
K/V reduction ratios and stem width agree. Dropout rates are the release's training settings
(classifier dropout ``dp``: 0.1, 0.3 for CMT-B; stochastic depth from its README's commands).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ._config import CMTConfig

__all__ = ["PRESETS", "PAPER_TABLE", "PaperFigures", "get_preset"]

_HEADS = (1, 2, 4, 8)
_SR = (8, 4, 2, 1)

PRESETS: Mapping[str, CMTConfig] = MappingProxyType(
    {
        "cmt_ti": CMTConfig(
            img_size=160, stem_channels=16, embed_dims=(46, 92, 184, 368), depths=(2, 2, 10, 2),
            num_heads=_HEADS, mlp_ratios=(3.6,) * 4, sr_ratios=_SR, drop_rate=0.1, drop_path_rate=0.1,
        ),
        "cmt_xs": CMTConfig(
            img_size=192, stem_channels=16, embed_dims=(52, 104, 208, 416), depths=(3, 3, 12, 3),
            num_heads=_HEADS, mlp_ratios=(3.77,) * 4, sr_ratios=_SR, drop_rate=0.1, drop_path_rate=0.08,
        ),
        "cmt_s": CMTConfig(
            img_size=224, stem_channels=32, embed_dims=(64, 128, 256, 512), depths=(3, 3, 16, 3),
            num_heads=_HEADS, mlp_ratios=(4.0,) * 4, sr_ratios=_SR, drop_rate=0.1, drop_path_rate=0.1,
        ),
        "cmt_b": CMTConfig(
            img_size=256, stem_channels=38, embed_dims=(76, 152, 304, 608), depths=(4, 4, 20, 4),
            num_heads=_HEADS, mlp_ratios=(4.0,) * 4, sr_ratios=_SR, drop_rate=0.3, drop_path_rate=0.25,
        ),
    }
)


@dataclass(frozen=True)
class PaperFigures:
    """What the paper's Table 2 prints for a member: params (M), FLOPs (G, multiply-adds), ImageNet top-1."""

    params_m: float
    flops_g: float
    top1: float
    resolution: int


PAPER_TABLE: Mapping[str, PaperFigures] = MappingProxyType(
    {
        "cmt_ti": PaperFigures(params_m=9.49, flops_g=0.6, top1=79.1, resolution=160),
        "cmt_xs": PaperFigures(params_m=15.24, flops_g=1.5, top1=81.8, resolution=192),
        "cmt_s": PaperFigures(params_m=25.14, flops_g=4.0, top1=83.5, resolution=224),
        "cmt_b": PaperFigures(params_m=45.72, flops_g=9.3, top1=84.5, resolution=256),
    }
)


def get_preset(name: str) -> CMTConfig:
    """The preset called ``name`` (``cmt_ti``, ``cmt_xs``, ``cmt_s``, ``cmt_b``; ``-`` for ``_`` and case are
    forgiven)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[key]
