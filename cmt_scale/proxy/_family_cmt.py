"""The CMT families: ``cmt_compound`` (the paper's compound rule from a preset) and ``cmt_free`` (every
stage's width, depth, heads and IRFFN ratio sampled).

Cost is analytic (`scaling.estimate_cost`, equal to fvcore to the multiply-add), also for an adapted
member: CMT with its first stem conv at stride 1 on an R-px input has exactly the layers, grids and
multiply-adds of the native member at 2R px (the first conv's output grid is R x R either way), so it
is built and costed as that member with the stride changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scaling import PAPER_COEFFICIENTS, CMTConfig, estimate_cost, get_preset, resolution_step, scale
from search_spaces import COMPOUND_POINT_KEYS

from ._family import Family, Member, register_family
from ._protocol import LOW_RES_BELOW, ProxyProtocol

__all__ = ["CMTCompoundFamily", "CMTFreeFamily", "compound_member", "compound_values"]

_ALPHA, _BETA, _GAMMA = PAPER_COEFFICIENTS.alpha, PAPER_COEFFICIENTS.beta, PAPER_COEFFICIENTS.gamma


def compound_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with a grid ``point`` (``"phi=1 alpha=1.2 ..."``) unpacked over the other values."""
    from search_spaces import parse_point

    out = {k: v for k, v in values.items() if k != "point"}
    if values.get("point") is not None:
        out.update(parse_point(values["point"]))
    return out


def compound_member(base: str | CMTConfig, values: Mapping[str, Any], resolution: int) -> CMTConfig:
    """The compound member of ``values``: scaled from the base (itself the preset at ``base_phi`` and the
    protocol resolution); its resolution follows ``gamma**phi`` only when ``scale_resolution`` is set."""
    if values.get("config") is not None and isinstance(values["config"], Mapping):  # a solved member
        cfg = CMTConfig.from_dict({k: v for k, v in values["config"].items() if k != "stem_stride"})
        return cfg if values.get("scale_resolution") else cfg.replace(img_size=resolution)
    start = scale(base, float(values.get("base_phi", 0.0)), resolution=resolution)
    return scale(start, float(values["phi"]), alpha=float(values.get("alpha", _ALPHA)),
                 beta=float(values.get("beta", _BETA)), gamma=float(values.get("gamma", _GAMMA)),
                 stage_ratio=values.get("stage_ratio"),
                 resolution=None if values.get("scale_resolution") else resolution)


def _cmt_member(family: str, name: str, cfg: CMTConfig, adapt: bool) -> Member:
    """A CMT member; ``adapt``: first stem conv at stride 1 (built and costed as the member at twice the size)."""
    cfg = cfg.replace(drop_path_rate=0.0)  # a training setting, the recipe's: not part of the identity
    built = cfg.replace(img_size=cfg.img_size * 2) if adapt else cfg
    cost = estimate_cost(built)
    config = {**cfg.to_dict(), **({"stem_stride": 1} if adapt else {})}

    def build(drop_path_rate: float):
        from scaling import build_cmt

        model = build_cmt(built.replace(drop_path_rate=drop_path_rate))
        if adapt:
            model.stem[0].conv.stride = (1, 1)
        return model

    return Member(family, name, config, cost.macs, cost.params, build)


def _cmt_from_config(family: str, config: Mapping[str, Any], num_classes: int) -> Member:
    data = dict(config)
    stride = data.pop("stem_stride", 2)
    if stride not in (1, 2):
        raise ValueError(f"stem_stride={stride!r} is not allowed; allowed: 1 (adapted) or 2")
    cfg = CMTConfig.from_dict(data).replace(num_classes=num_classes)
    return _cmt_member(family, _arch_name(cfg), cfg, stride == 1)


def _arch_name(cfg: CMTConfig) -> str:
    return f"cmt d{'-'.join(map(str, cfg.embed_dims))} L{'-'.join(map(str, cfg.depths))}"


class CMTCompoundFamily(Family):
    name = "cmt_compound"
    description = "CMT members by the paper's compound rule (phi, coefficients, stage ratio) from a preset"
    keys = frozenset({*COMPOUND_POINT_KEYS, "point", "base_phi", "scale_resolution", "base"})
    required = (("phi", "point"),)
    sweep_values = {"phi": -1.0, "base": "cmt_ti"}

    def member(self, values: Mapping[str, Any], protocol: ProxyProtocol, num_classes: int) -> Member:
        values = compound_values(values)
        try:
            cfg = compound_member(values.get("base", "cmt_ti"), values, protocol.resolution)
        except ValueError as err:
            return Member(self.name, "invalid", dict(values), None, None, reason=f"not a valid CMT: {err}")
        cfg = cfg.replace(num_classes=num_classes)
        adapt = protocol.low_res == "adapt" and cfg.img_size < LOW_RES_BELOW
        return _cmt_member(self.name, _compound_name(values, cfg), cfg, adapt)

    def from_config(self, config: Mapping[str, Any], num_classes: int) -> Member:
        return _cmt_from_config(self.name, config, num_classes)

    def check_resolution(self, resolution: int, low_res: str, names: frozenset[str], fixed: Mapping[str, Any]) -> None:
        if not fixed.get("scale_resolution"):
            base = fixed.get("base") or "cmt_ti"
            step = resolution_step(get_preset(base))
            if resolution % step:
                raise ValueError(f"resolution={resolution} is not allowed for the {base} compound family; allowed: a "
                                 f"positive multiple of {step}")

    def check_space(self, names, fixed, params) -> tuple[str, Any, str] | None:
        from search_spaces import parse_point

        for choice in params.get("point", ()):
            if not ({"phi", "config"} & set(parse_point(choice))) and "phi" not in names:
                return "params.point", choice, "a point with phi=... (or a fixed phi)"
        return super().check_space(names, fixed, params)


class CMTFreeFamily(Family):
    name = "cmt_free"
    description = "free-form CMT members: every stage's width, depth, heads, K/V reduction and IRFFN ratio"
    keys = frozenset({"stem_channels", "mlp_ratio", "fc_dim", "sr_ratios"}
                     | {f"{k}_{i}" for k in ("dim", "depth", "heads", "sr", "mlp_ratio") for i in range(8)})
    required = (("dim_0",),)
    recipe_from = "cmt_compound"  # the same blocks: a recipe swept on the compound family serves both
    sweep_values = {"dim_0": 32, "dim_1": 64, "dim_2": 128, "dim_3": 256, "depth_0": 1, "depth_1": 1, "depth_2": 4,
                    "depth_3": 1, "heads_0": 1, "heads_1": 2, "heads_2": 4, "heads_3": 8}

    def member(self, values: Mapping[str, Any], protocol: ProxyProtocol, num_classes: int) -> Member:
        stages = sum(1 for i in range(8) if f"dim_{i}" in values)
        sr = values.get("sr_ratios") or [values.get(f"sr_{i}", (8, 4, 2, 1)[i] if i < 4 else 1) for i in range(stages)]
        ratio = values.get("mlp_ratio", 4.0)
        try:
            cfg = CMTConfig(
                img_size=protocol.resolution, num_classes=num_classes,
                stem_channels=int(values.get("stem_channels", 16)),
                embed_dims=tuple(int(values[f"dim_{i}"]) for i in range(stages)),
                depths=tuple(int(values[f"depth_{i}"]) for i in range(stages)),
                num_heads=tuple(int(values[f"heads_{i}"]) for i in range(stages)),
                mlp_ratios=tuple(float(values.get(f"mlp_ratio_{i}", ratio)) for i in range(stages)),
                sr_ratios=tuple(int(s) for s in sr), fc_dim=int(values.get("fc_dim", 1280)),
            )
        except (ValueError, KeyError) as err:
            return Member(self.name, "invalid", dict(values), None, None, reason=f"not a valid CMT: {err}")
        return _cmt_member(self.name, _arch_name(cfg), cfg, protocol.adapts_low_res)

    def from_config(self, config: Mapping[str, Any], num_classes: int) -> Member:
        return _cmt_from_config(self.name, config, num_classes)

    def check_resolution(self, resolution: int, low_res: str, names: frozenset[str], fixed: Mapping[str, Any]) -> None:
        stride = 2 ** (sum(1 for i in range(8) if f"dim_{i}" in names) + 1)
        if resolution % stride:
            raise ValueError(f"resolution={resolution} is not allowed for this CMT space; allowed: a positive multiple "
                             f"of its total stride {stride}")


def _compound_name(values: Mapping[str, Any], cfg: CMTConfig) -> str:
    """``cmt phi=+1.00`` plus whatever departs from the paper's rule (coefficients, stage ratio, resolution)."""
    parts = [f"cmt phi={float(values['phi']):+.2f}"] if values.get("phi") is not None else [_arch_name(cfg)]
    coefficients = [values.get(k) for k in ("alpha", "beta", "gamma")]
    if any(c is not None for c in coefficients):
        parts.append("a/b/g=" + "/".join(f"{float(c if c is not None else d):g}"
                                          for c, d in zip(coefficients, (_ALPHA, _BETA, _GAMMA))))
    if values.get("stage_ratio"):
        parts.append(str(values["stage_ratio"]))
    if values.get("config") is not None:
        parts.append("solved")
    if values.get("scale_resolution"):
        parts.append(f"@{cfg.img_size}")
    return " ".join(parts)


register_family(CMTCompoundFamily())
register_family(CMTFreeFamily())
