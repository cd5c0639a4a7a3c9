"""The baseline families, built by timm: ``deit`` (VisionTransformer with DeiT's shapes) and ``efficientnet``.

Each is a small family of named members, so it draws a front, not a point. Their cost is counted by
fvcore on the module that trains (attention included), once per (member, resolution, rule) per process.

Low-resolution rule (the protocol's ``low_res``; the same halving for every family, CMT included):
below 64 px a native DeiT's 16-px patch leaves a 2x2 token grid at 32 px and a native EfficientNet ends
on a 1x1 map, so ``adapt`` halves the first downsampling: DeiT's patch becomes 8 px (a 4x4 grid at
32 px) and EfficientNet's stem conv gets stride 1 (a 2x2 last map), as CMT's first stem conv does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ._family import Family, Member, register_family
from ._protocol import LOW_RES_BELOW, ProxyProtocol

__all__ = ["DeiTFamily", "EfficientNetFamily", "build_baseline"]

# name -> (embed_dim, depth, heads): DeiT-Ti/S as published, plus a narrower and a shallower member.
DEIT_SHAPES: dict[str, tuple[int, int, int]] = {
    "deit_nano": (96, 6, 2),
    "deit_micro": (144, 9, 3),
    "deit_tiny": (192, 12, 3),
    "deit_small": (384, 12, 6),
}
DEIT_PATCH = 16


def deit_patch_size(resolution: int, low_res: str = "native") -> int:
    """DeiT's 16-px patch, halved to 8 px below 64 px under the ``adapt`` rule."""
    return DEIT_PATCH // 2 if low_res == "adapt" and resolution < LOW_RES_BELOW else DEIT_PATCH


def checked_deit_patch(resolution: int, low_res: str = "native") -> int:
    """`deit_patch_size`, refusing a resolution the patch does not divide (no DeiT builds there)."""
    patch = deit_patch_size(resolution, low_res)
    if resolution % patch:
        allowed = ("a multiple of 8 below 64, of 16 from 64" if low_res == "adapt" else "a multiple of 16")
        raise ValueError(f"resolution={resolution} is not allowed for DeiT (its patch there is {patch} px, "
                         f"low_res={low_res!r}); allowed: {allowed}")
    return patch


def build_baseline(name: str, num_classes: int, resolution: int, in_chans: int = 3, low_res: str = "native",
                   drop_path_rate: float = 0.0):
    """A baseline from timm for ``resolution`` px with ``num_classes`` outputs (untrained), under the
    ``low_res`` rule (the protocol's default, ``native``, unless told otherwise)."""
    family = _family_of(name)
    return family.build(name, num_classes, resolution, in_chans, low_res, drop_path_rate)


def _family_of(name: str) -> _NamedMembers:
    for family in (DEIT, EFFICIENTNET):
        if name in family.buildable:
            return family
    raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(DEIT.buildable + EFFICIENTNET.buildable)}")


@functools.lru_cache(maxsize=128)
def _cost(name: str, num_classes: int, resolution: int, low_res: str) -> tuple[int, int]:
    from scaling import count_flops

    profile = count_flops(build_baseline(name, num_classes, resolution, low_res=low_res), img_size=resolution)
    return profile.macs, profile.params


class _NamedMembers(Family):
    """A family of timm models named outright (``model``), costed by fvcore at the protocol resolution."""

    keys = frozenset({"model"})
    required = (("model",),)
    buildable: tuple[str, ...] = ()  # every name this family builds: its members and a few more

    def build(self, name: str, num_classes: int, resolution: int, in_chans: int, low_res: str,
              drop_path_rate: float) -> Any:
        raise NotImplementedError

    def _config(self, name: str, resolution: int, low_res: str) -> dict[str, Any]:
        return {"model": name, "img_size": resolution, "low_res": low_res}

    def _member(self, name: str, resolution: int, low_res: str, num_classes: int) -> Member:
        if name not in self.buildable:
            return Member(self.name, str(name), {"model": name}, None, None,
                          reason=f"model={name!r} is not a {self.name} member; allowed: {', '.join(self.buildable)}")
        macs, params = _cost(name, num_classes, resolution, low_res)
        return Member(self.name, name, self._config(name, resolution, low_res), macs, params,
                      lambda rate: self.build(name, num_classes, resolution, 3, low_res, rate))

    def member(self, values: Mapping[str, Any], protocol: ProxyProtocol, num_classes: int) -> Member:
        return self._member(str(values["model"]), protocol.resolution, protocol.low_res, num_classes)

    def from_config(self, config: Mapping[str, Any], num_classes: int) -> Member:
        return self._member(str(config["model"]), int(config["img_size"]), str(config.get("low_res", "adapt")),
                            num_classes)

    def check_resolution(self, resolution: int, low_res: str, names: frozenset[str], fixed: Mapping[str, Any]) -> None:
        return None


class DeiTFamily(_NamedMembers):
    name = "deit"
    description = "timm VisionTransformer with DeiT's shapes (nano, micro, tiny), 16-px patch (8 below 64 px)"
    # DeiT-S builds too (``build_baseline("deit_small", ...)``) but is no default member: at 32 px it costs
    # 365M MACs, 4x DeiT-Ti and 15x CMT-Ti, and would take most of a baseline run's time on 2 cores.
    members = ("deit_nano", "deit_micro", "deit_tiny")
    buildable = tuple(DEIT_SHAPES)
    sweep_values = {"model": "deit_nano"}

    def build(self, name, num_classes, resolution, in_chans, low_res, drop_path_rate):
        import timm

        dim, depth, heads = DEIT_SHAPES[name]
        return timm.create_model("vit_tiny_patch16_224", img_size=resolution,
                                 patch_size=checked_deit_patch(resolution, low_res), embed_dim=dim, depth=depth,
                                 num_heads=heads, num_classes=num_classes, in_chans=in_chans,
                                 drop_path_rate=drop_path_rate)

    def _config(self, name: str, resolution: int, low_res: str) -> dict[str, Any]:
        return {**super()._config(name, resolution, low_res), "patch_size": deit_patch_size(resolution, low_res)}

    def check_resolution(self, resolution: int, low_res: str, names: frozenset[str], fixed: Mapping[str, Any]) -> None:
        checked_deit_patch(resolution, low_res)


class EfficientNetFamily(_NamedMembers):
    name = "efficientnet"
    description = ("timm EfficientNet B0-B3 and the TinyNets (B0 scaled down in resolution, width and depth, "
                   "Han et al. 2020); stem stride 1 below 64 px")
    # B0 and B2 with two TinyNets below them: a front spanning 7x in MACs (B1 and B3 build too)
    members = ("tinynet_e", "tinynet_c", "efficientnet_b0", "efficientnet_b2")
    buildable = members + ("efficientnet_b1", "efficientnet_b3")
    sweep_values = {"model": "efficientnet_b0"}  # the EfficientNet paper's base member

    def build(self, name, num_classes, resolution, in_chans, low_res, drop_path_rate):
        import timm

        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
        if low_res == "adapt" and resolution < LOW_RES_BELOW:
            model.conv_stem.stride = (1, 1)  # 3x3 conv, padding 1: same padding at stride 1
        return model


DEIT = register_family(DeiTFamily())
EFFICIENTNET = register_family(EfficientNetFamily())
