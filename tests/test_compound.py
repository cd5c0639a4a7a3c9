"""Compound scaling: the paper's rule, its rounding, the stage-ratio axis and the reproduction table."""

from __future__ import annotations

import pytest

from scaling import (
    PAPER_COEFFICIENTS,
    PRESETS,
    count_flops,
    estimate_cost,
    family,
    nominal_cost_ratio,
    parse_count,
    parse_latency_ms,
    reproduce_presets,
    round_depth,
    round_resolution,
    round_width,
    scale,
    with_stage_ratio,
)


def test_paper_constants_multiply_to_2_35_not_2_5() -> None:
    assert PAPER_COEFFICIENTS.cost_multiplier == pytest.approx(1.2 * 1.3**1.5 * 1.15**2)
    assert PAPER_COEFFICIENTS.cost_multiplier == pytest.approx(2.352, abs=1e-3)
    assert nominal_cost_ratio(2.0) == pytest.approx(2.3523**2, rel=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_phi_zero_is_the_base(name: str) -> None:
    assert scale(name, 0.0) == PRESETS[name]  # even CMT-Ti, whose width 46 is off the rounding grid


def test_five_stage_base_scales_with_its_own_resolution_step() -> None:
    from scaling import CMTConfig, resolution_step, solve

    five = CMTConfig(img_size=128, stem_channels=16, embed_dims=(16, 32, 64, 128, 256), depths=(1, 1, 2, 1, 1),
                     num_heads=(1, 2, 4, 8, 8), mlp_ratios=(4,) * 5, sr_ratios=(8, 4, 2, 1, 1))
    assert resolution_step(five) == 64 and resolution_step(PRESETS["cmt_s"]) == 32
    member = scale(five, 1.0)
    assert member.img_size % 64 == 0
    target = estimate_cost(scale(five, 0.5)).macs
    assert abs(solve(target_flops=target, base=five).error) <= 0.02


def test_rounding_rules() -> None:
    assert round_resolution(224 * 1.15) == 256 and round_resolution(10) == 32
    for value, heads in [(83.2, 1), (166.4, 2), (332.8, 4), (665.6, 8), (37.9, 1), (20.0, 8)]:
        width = round_width(value, heads)
        assert width % 8 == 0 and width % heads == 0 and width >= 0.9 * value
        assert abs(width - value) <= 8
    assert round_width(12, 16) == 16  # lcm(8, 16)
    assert [round_depth(x) for x in (0.2, 1.5, 2.5, 16 * 1.2)] == [1, 2, 3, 19]


def test_scale_follows_the_rule_at_phi_one() -> None:
    member = scale("cmt_s", 1.0)
    assert member.img_size == 256  # 224 * 1.15 = 257.6 -> 256
    assert member.embed_dims == (80, 168, 336, 664)  # 64, 128, 256, 512 * 1.3 -> multiples of 8
    assert member.depths == (4, 4, 19, 4)  # 3, 3, 16, 3 * 1.2 = 3.6, 3.6, 19.2, 3.6
    assert member.num_heads == (1, 2, 4, 8) and member.fc_dim == 1280 and member.mlp_ratios == (4.0,) * 4


def test_family_is_monotone_in_phi_and_realised_ratio_is_reported() -> None:
    phis = [round(-3 + 0.05 * i, 2) for i in range(121)]
    members = family(phis)
    macs = [m.macs for m in members]
    assert all(b >= a for a, b in zip(macs, macs[1:]))
    params = [m.params for m in members]
    assert all(b >= a for a, b in zip(params, params[1:]))
    at_one = next(m for m in members if m.phi == 1.0)
    assert at_one.realised_ratio == pytest.approx(at_one.macs / estimate_cost(PRESETS["cmt_s"]).macs)
    assert at_one.realised_ratio > at_one.nominal_ratio  # attention and rounding grow faster than 2.35x


def test_stage_ratio_resplit_keeps_total_depth_and_changes_cost_by_the_blocks_moved() -> None:
    base = PRESETS["cmt_ti"]  # 2:2:10:2
    moved = with_stage_ratio(base, "4:2:8:2")
    assert moved.total_depth == base.total_depth == 16 and moved.depths == (4, 2, 8, 2)
    # Expected change from fvcore: per-block cost of stage 0 and stage 2, measured on the built models.
    base_macs = count_flops(base).macs
    block0 = count_flops(base.replace(depths=(3, 2, 10, 2))).macs - base_macs
    block2 = count_flops(base.replace(depths=(2, 2, 11, 2))).macs - base_macs
    assert estimate_cost(moved).macs == base_macs + 2 * block0 - 2 * block2
    assert with_stage_ratio(base, "1:1:1:1").depths == (4, 4, 4, 4)
    assert with_stage_ratio(base, "1:1:8:1", total_depth=11).depths == (1, 1, 8, 1)
    with pytest.raises(ValueError, match="stage_ratio='1:2' has 2 entries; allowed: 4"):
        with_stage_ratio(base, "1:2")
    with pytest.raises(ValueError, match="stage_ratio='3:x:1:1' is not allowed"):
        with_stage_ratio(base, "3:x:1:1")


def test_scale_with_stage_ratio_and_pinned_resolution() -> None:
    member = scale("cmt_s", 1.0, stage_ratio="1:1:8:1", resolution=224)
    assert member.img_size == 224 and member.total_depth == round_depth(25 * 1.2) == 30
    # 30 * (1, 1, 8, 1) / 11 = 2.73, 2.73, 21.82, 2.73: floors 2, 2, 21, 2 and three more blocks by
    # largest remainder (0.82 first, then the first two 0.73s).
    assert member.depths == (3, 3, 22, 2)


def test_reproduction_table() -> None:
    """The rule from CMT-S lands within 3% of each preset's MACs, with visibly different shapes."""
    rows = {r.preset: r for r in reproduce_presets()}
    assert set(rows) == {"cmt_ti", "cmt_xs", "cmt_b"}
    for row in rows.values():
        assert abs(row.macs_gap) < 0.03
        assert row.rule.img_size == row.paper.img_size  # the rule's resolution matches the paper's choice
    assert rows["cmt_ti"].phi < rows["cmt_xs"].phi < 0 < rows["cmt_b"].phi
    # CMT-B's widths are 76 = 64 * 1.19, not the rule's 64 * 1.3**phi rounded to a multiple of 8.
    assert rows["cmt_b"].paper.embed_dims[0] == 76 and rows["cmt_b"].rule.embed_dims[0] % 8 == 0
    assert rows["cmt_b"].rule.depths != rows["cmt_b"].paper.depths


@pytest.mark.parametrize("text, value", [("4G", 4e9), ("4e9", 4e9), ("400M", 4e8), ("4.0GFLOPs", 4e9),
                                         ("25M", 25e6), ("4GMACs", 4e9), ("1.5 G", 1.5e9), ("2500000", 2.5e6)])
def test_parse_count(text: str, value: float) -> None:
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-4G", "abc", "4X", "", "inf", "nan"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="target_flops="):
        parse_count(text, "target_flops")


def test_parse_latency() -> None:
    assert parse_latency_ms("20ms") == 20 and parse_latency_ms("0.02s") == 20 and parse_latency_ms("500us") == 0.5
    with pytest.raises(ValueError, match="latency='fast'"):
        parse_latency_ms("fast")
