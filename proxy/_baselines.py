"""DeiT and EfficientNet baselines, built by timm at the protocol's resolution, as small families.

Each family gives a front, not a point, so the comparison is front against front:

- DeiT (`deit_*`): timm's VisionTransformer with DeiT's widths, depths and heads. At proxy resolutions
  a 16-pixel patch leaves almost no tokens (2x2 at 32 px), so the patch is ``resolution // 4``: a 4x4
  token grid at any resolution. Why not finer: an 8x8 grid makes DeiT-Ti cost 15x CMT-Ti's MACs at 32 px
  (370M vs 25M) and 13 minutes per default trial on 2 cores, putting the whole family far right of the
  CMT front; 4x4 keeps it in the same cost range (91M) so the fronts overlap and can be compared. The
  patch is saved with each result's config and the MACs are counted at it.
- EfficientNet (`efficientnet_b0..b3`): timm's builders with their width/depth multipliers, at the
  protocol's resolution (their own compound resolutions are ImageNet's, not the proxy's).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import torch.nn as nn

__all__ = ["BASELINE_FAMILIES", "baseline_names", "build_baseline", "deit_patch_size"]

# name -> (embed_dim, depth, heads): DeiT-Ti/S as published, plus a narrower and a shallower member.
_DEIT = {
    "deit_nano": (96, 6, 2),
    "deit_micro": (144, 9, 3),
    "deit_tiny": (192, 12, 3),
    "deit_small": (384, 12, 6),
}
_EFFICIENTNET = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")

BASELINE_FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"deit": tuple(_DEIT), "efficientnet": _EFFICIENTNET}
)


def baseline_names(family: str) -> tuple[str, ...]:
    if family not in BASELINE_FAMILIES:
        raise ValueError(f"unknown baseline family {family!r}; allowed: {', '.join(BASELINE_FAMILIES)}")
    return BASELINE_FAMILIES[family]


DEIT_GRID = 4


def deit_patch_size(resolution: int) -> int:
    """``resolution // 4`` (a 4x4 token grid), at least 2 and at most DeiT's own 16."""
    return max(2, min(16, resolution // DEIT_GRID))


def checked_deit_patch(resolution: int) -> int:
    """`deit_patch_size`, refusing a resolution the patch does not divide (no DeiT builds there)."""
    patch = deit_patch_size(resolution)
    if resolution % patch:
        raise ValueError(f"resolution={resolution} is not allowed for DeiT (its patch, resolution // 4 between 2 "
                         f"and 16, is {patch}); allowed: a multiple of 4 below 64, of 16 from 64")
    return patch


def build_baseline(name: str, num_classes: int, resolution: int, in_chans: int = 3) -> nn.Module:
    """A baseline from timm at ``resolution`` with ``num_classes`` outputs (untrained)."""
    import timm

    if name in _DEIT:
        dim, depth, heads = _DEIT[name]
        patch = checked_deit_patch(resolution)
        return timm.create_model("vit_tiny_patch16_224", img_size=resolution, patch_size=patch, embed_dim=dim,
                                 depth=depth, num_heads=heads, num_classes=num_classes, in_chans=in_chans)
    if name in _EFFICIENTNET:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    allowed = ", ".join(n for names in BASELINE_FAMILIES.values() for n in names)
    raise ValueError(f"unknown baseline {name!r}; allowed: {allowed}")
