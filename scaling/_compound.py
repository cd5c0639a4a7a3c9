"""The paper's compound scaling (section 3.4), with every rounding rule named and explained.

The rule: from a base member (CMT-S, ``phi = 0``), depth grows as ``alpha**phi``, width ("dimension") as
``beta**phi`` and resolution as ``gamma**phi``, with ``alpha * beta**1.5 * gamma**2 ~= 2.5`` so that each
unit of ``phi`` costs about 2.5x. The paper uses alpha=1.2, beta=1.3, gamma=1.15.

Where the paper is loose, this module says what it does:

- The constants multiply to 1.2 * 1.3**1.5 * 1.15**2 = 2.35, not 2.5 (`nominal_cost_ratio` gives both).
- Cost does not scale as the rule's exponents say: the attention term of the paper's Eq. 16 grows with
  ``n**2`` tokens (resolution to the 4th power, softened by the K/V reduction), convolutions and linears
  with width squared, and integer rounding adds steps. `FamilyMember.realised_ratio` is the true cost
  ratio to the base from the exact cost model; for the paper's constants it runs above 2.35 per unit phi.
- Rounding (each a function below): resolution to a multiple of 32; each stage's width to a multiple of
  ``lcm(8, heads)``, never more than 10% below the exact value; depths to the nearest integer >= 1; the
  stem width like a stage width; the 1280-wide head, head counts, IRFFN ratios and K/V reductions as the
  base has them (the paper keeps all of them fixed across CMT-Ti .. CMT-B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._config import CMTConfig
from ._cost import estimate_cost
from ._presets import get_preset

__all__ = [
    "PAPER_COEFFICIENTS",
    "CompoundCoefficients",
    "FamilyMember",
    "family",
    "nominal_cost_ratio",
    "parse_stage_ratio",
    "round_depth",
    "round_resolution",
    "round_width",
    "resolution_step",
    "scale",
    "with_stage_ratio",
]

RESOLUTION_STEP = 32
PHI_LIMIT = 20
WIDTH_DIVISOR = 8
CONSTRAINT_TARGET = 2.5


@dataclass(frozen=True)
class CompoundCoefficients:
    """Per-unit-phi multipliers of depth (alpha), width (beta) and resolution (gamma). The defaults are the
    paper's (section 3.4), the one place they are written: everything else uses `PAPER_COEFFICIENTS`."""

    alpha: float = 1.2
    beta: float = 1.3
    gamma: float = 1.15

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 10:
                raise ValueError(f"{name}={value!r} is not allowed; allowed: a number in [1, 10]")

    @property
    def cost_multiplier(self) -> float:
        """``alpha * beta**1.5 * gamma**2``: the rule's own cost growth per unit phi (paper's target: 2.5)."""
        return self.alpha * self.beta**1.5 * self.gamma**2


PAPER_COEFFICIENTS = CompoundCoefficients()


def resolution_step(cfg: CMTConfig) -> int:
    """The smallest resolution step that keeps ``cfg`` valid: every stage grid divisible by its K/V reduction.

    32 for the paper's four stages with reductions 8-4-2-1 (the total stride); 64 for five stages.
    """
    return math.lcm(cfg.total_stride, *(2 ** (i + 2) * sr for i, sr in enumerate(cfg.sr_ratios)))


def round_resolution(value: float, step: int = RESOLUTION_STEP) -> int:
    """To the nearest multiple of ``step`` (32 for the paper's members, see `resolution_step`), at least one
    step: every stage grid then divides the K/V reductions (8, 4, 2, 1), and 32 is four stages' total stride."""
    return max(step, step * round(value / step))


def round_width(value: float, num_heads: int) -> int:
    """To a multiple of ``lcm(8, heads)``, as timm's ``make_divisible``: never below 90% of ``value``.

    A multiple of the head count is required (heads split the width evenly). A multiple of 8 is chosen for
    speed: oneDNN blocks channels by 8/16 on AVX-512 (and 32 for bf16 AMX), GPUs by 8 for tensor cores;
    the paper's own odd widths (CMT-Ti's 46) leave vector lanes idle. The 90% floor keeps rounding down
    from removing more than a tenth of a layer.
    """
    divisor = math.lcm(WIDTH_DIVISOR, num_heads)
    width = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if width < 0.9 * value:
        width += divisor
    return width


def round_depth(value: float) -> int:
    """To the nearest integer, at least 1 (half rounds up, unlike Python's banker's ``round``)."""
    return max(1, int(math.floor(value + 0.5)))


def parse_stage_ratio(ratio: str | Sequence[int]) -> tuple[int, ...]:
    """``"3:3:16:3"`` or ``(3, 3, 16, 3)`` -> a tuple of positive integers."""
    parts: Sequence[object] = ratio.split(":") if isinstance(ratio, str) else ratio
    try:
        values = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"stage_ratio={ratio!r} is not allowed; allowed: positive integers like 3:3:16:3") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"stage_ratio={ratio!r} is not allowed; allowed: positive integers like 3:3:16:3")
    return values


def split_depth(total: int, ratio: Sequence[int]) -> tuple[int, ...]:
    """Split ``total`` blocks across stages in proportion to ``ratio``, each stage >= 1 (largest remainder)."""
    if total < len(ratio):
        raise ValueError(f"total depth {total} cannot give {len(ratio)} stages at least one block each")
    weight = sum(ratio)
    exact = [total * r / weight for r in ratio]
    depths = [max(1, math.floor(e)) for e in exact]
    while sum(depths) < total:  # hand out the rest by largest remainder
        i = max(range(len(ratio)), key=lambda j: (exact[j] - depths[j], ratio[j]))
        depths[i] += 1
    while sum(depths) > total:  # the >=1 floor overshot: take from the stage most above its share
        i = max((j for j in range(len(ratio)) if depths[j] > 1), key=lambda j: depths[j] - exact[j])
        depths[i] -= 1
    return tuple(depths)


def with_stage_ratio(cfg: CMTConfig, ratio: str | Sequence[int], total_depth: int | None = None) -> CMTConfig:
    """``cfg`` with its blocks re-split across stages by ``ratio`` (the fourth scaling axis).

    Total depth stays ``cfg.total_depth`` unless ``total_depth`` is given. CMT-S is 3:3:16:3; 1:1:8:1 moves
    depth into stage 3 (cheaper per block at 14x14 than stage 1 at 56x56).
    """
    values = parse_stage_ratio(ratio)
    if len(values) != cfg.num_stages:
        raise ValueError(
            f"stage_ratio={ratio!r} has {len(values)} entries; allowed: {cfg.num_stages} (one per stage)"
        )
    return cfg.replace(depths=split_depth(cfg.total_depth if total_depth is None else total_depth, values))


def nominal_cost_ratio(phi: float, coefficients: CompoundCoefficients = PAPER_COEFFICIENTS) -> float:
    """What the rule promises: ``(alpha * beta**1.5 * gamma**2) ** phi`` (2.35**phi for the paper's constants)."""
    return coefficients.cost_multiplier**phi


def _resolve_base(base: CMTConfig | str) -> CMTConfig:
    return get_preset(base) if isinstance(base, str) else base


def scale(
    base: CMTConfig | str = "cmt_s",
    phi: float = 0.0,
    alpha: float = PAPER_COEFFICIENTS.alpha,
    beta: float = PAPER_COEFFICIENTS.beta,
    gamma: float = PAPER_COEFFICIENTS.gamma,
    stage_ratio: str | Sequence[int] | None = None,
    resolution: int | None = None,
) -> CMTConfig:
    """The member of the family at compound coefficient ``phi`` (0 gives ``base`` back).

    ``stage_ratio`` re-splits the scaled total depth across stages; ``resolution`` pins the input size
    instead of scaling it (then only depth and width follow ``phi``).

    Example:
        >>> from scaling import scale
        >>> member = scale("cmt_s", phi=1.0)
        >>> member.img_size, member.embed_dims, member.depths
        (256, (80, 168, 336, 664), (4, 4, 19, 4))
    """
    if not isinstance(phi, (int, float)) or isinstance(phi, bool) or not -PHI_LIMIT <= phi <= PHI_LIMIT:
        raise ValueError(f"phi={phi!r} is not allowed; allowed: a number in [-{PHI_LIMIT}, {PHI_LIMIT}]")
    coeffs = CompoundCoefficients(alpha, beta, gamma)
    cfg = _resolve_base(base)
    if phi == 0:  # the base itself (its own widths need not be on the rounding grid: CMT-Ti's 46)
        cfg = cfg if resolution is None else cfg.replace(img_size=int(resolution))
        return cfg if stage_ratio is None else with_stage_ratio(cfg, stage_ratio)
    depth_mult, width_mult = coeffs.alpha**phi, coeffs.beta**phi
    if stage_ratio is not None:
        depths = split_depth(round_depth(cfg.total_depth * depth_mult), parse_stage_ratio(stage_ratio))
        if len(depths) != cfg.num_stages:
            raise ValueError(f"stage_ratio={stage_ratio!r} has {len(depths)} entries; allowed: {cfg.num_stages}")
    else:
        depths = tuple(round_depth(d * depth_mult) for d in cfg.depths)
    step = resolution_step(cfg)
    img_size = round_resolution(cfg.img_size * coeffs.gamma**phi, step) if resolution is None else int(resolution)
    return cfg.replace(
        img_size=img_size,
        stem_channels=round_width(cfg.stem_channels * width_mult, 1),
        embed_dims=tuple(round_width(d * width_mult, h) for d, h in zip(cfg.embed_dims, cfg.num_heads)),
        depths=depths,
    )


@dataclass(frozen=True)
class FamilyMember:
    """One member of a compound family, with what the rule promised and what the member really costs."""

    phi: float
    config: CMTConfig
    macs: int
    params: int
    realised_ratio: float  # MACs / base MACs
    nominal_ratio: float  # cost_multiplier ** phi


def family(
    phis: Sequence[float],
    base: CMTConfig | str = "cmt_s",
    alpha: float = PAPER_COEFFICIENTS.alpha,
    beta: float = PAPER_COEFFICIENTS.beta,
    gamma: float = PAPER_COEFFICIENTS.gamma,
    stage_ratio: str | Sequence[int] | None = None,
    resolution: int | None = None,
) -> list[FamilyMember]:
    """Members at each ``phi`` with their exact MACs/params and realised vs nominal cost ratio to the base."""
    coeffs = CompoundCoefficients(alpha, beta, gamma)
    base_cfg = _resolve_base(base)
    base_macs = estimate_cost(base_cfg).macs
    members = []
    for phi in phis:
        cfg = scale(base_cfg, phi, alpha, beta, gamma, stage_ratio, resolution)  # raises naming what is invalid
        cost = estimate_cost(cfg)
        members.append(
            FamilyMember(phi, cfg, cost.macs, cost.params, cost.macs / base_macs, nominal_cost_ratio(phi, coeffs))
        )
    return members
