"""Cost models against independent figures: the official layout, fvcore, the papers, hand arithmetic."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import random_config
from official_reference import official_param_count

from scaling import PAPER_TABLE, PRESETS, build_cmt, count_flops, estimate_cost


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_params_equal_the_official_layout_and_the_built_model(name: str) -> None:
    cfg = PRESETS[name]
    built = sum(p.numel() for p in build_cmt(cfg).parameters())
    assert estimate_cost(cfg).params == built == official_param_count(cfg)


@pytest.mark.parametrize("name", ["cmt_ti", "cmt_xs", "cmt_b"])
def test_params_match_the_paper_within_one_percent(name: str) -> None:
    paper = PAPER_TABLE[name].params_m * 1e6
    assert abs(estimate_cost(PRESETS[name]).params - paper) / paper < 0.01


def test_cmt_s_params_differ_from_the_paper_as_documented() -> None:
    """The release's CMT-S has 26.26M parameters; the paper prints 25.14M (see README, "CMT-S's 25.1M").

    No counting convention reproduces 25.14M while keeping Ti/XS/B at their printed counts, so the gap is
    asserted as it is: 1.12M (4.4%), in the release's favour of the code.
    """
    ours = estimate_cost(PRESETS["cmt_s"]).params
    assert ours == 26_256_160
    assert ours - PAPER_TABLE["cmt_s"].params_m * 1e6 == pytest.approx(1.116e6, abs=5e3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_macs_analytic_equals_fvcore_and_is_within_ten_percent_of_the_paper(name: str) -> None:
    cfg = PRESETS[name]
    analytic, profile = estimate_cost(cfg), count_flops(cfg)
    assert profile.unsupported_ops == {}
    assert analytic.macs == profile.macs  # the bar is 1%; the formulas are fvcore's, so they agree exactly
    assert analytic.macs_by_part == profile.by_part()
    paper = PAPER_TABLE[name].flops_g * 1e9
    assert abs(analytic.macs - paper) / paper < 0.10


def test_analytic_equals_fvcore_on_fifty_random_configs() -> None:
    rng = random.Random(20221)
    for _ in range(50):
        cfg = random_config(rng)
        analytic, profile = estimate_cost(cfg), count_flops(cfg)
        assert profile.unsupported_ops == {}, cfg
        assert analytic.params == profile.params, cfg
        assert abs(analytic.macs - profile.macs) <= 0.01 * profile.macs, cfg
        assert analytic.macs == profile.macs, cfg


def test_hand_computed_single_stage_model() -> None:
    from scaling import CMTConfig

    cfg = CMTConfig(img_size=16, in_chans=1, num_classes=2, stem_channels=2, embed_dims=(4,), depths=(1,),
                    num_heads=(2,), mlp_ratios=(2.0,), sr_ratios=(2,), fc_dim=8, qkv_bias=False)
    # stem at 8x8 = 64 positions, 2 channels: convs 2*1*9*64 + 2 * (2*2*9*64), BN 3 * 2*2*64
    stem = 1152 + 2 * 2304 + 3 * 256
    # stage at 4x4 = 16 tokens, dim 4, hidden 8, K/V grid 2x2 = 4 tokens
    merge = 4 * 2 * 4 * 16 + 5 * 16 * 4
    lpu = 4 * 9 * 16
    attn = 5 * 64 + 16 * 16 + (4 * 4 * 4 + 2 * 4 * 4) + 2 * 4 * 16 + 2 * 16 * 4 * 4 + 16 * 16
    ffn = 5 * 64 + (16 * 32 + 2 * 128) + (8 * 9 * 16 + 2 * 128) + (16 * 32 + 2 * 64)
    head = 16 * 4 * 8 + 2 * 16 * 8 + 16 * 8 + 8 * 2  # final 4x4 grid: 1x1 conv, BN, pool; classifier
    assert estimate_cost(cfg).macs == stem + merge + lpu + attn + ffn + head == count_flops(cfg).macs


class _AttentionOnly(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.reshape(2, 3, 10, 4)
        kv = q[:, :, :5]
        return F.scaled_dot_product_attention(q, kv, kv)


def test_sdpa_handle_hand_count() -> None:
    model = _AttentionOnly()
    from fvcore.nn import FlopCountAnalysis

    from scaling._profile import EXTRA_FLOP_HANDLES

    analysis = FlopCountAnalysis(model, torch.zeros(2, 120)).set_op_handle(**EXTRA_FLOP_HANDLES)
    assert analysis.total() == 2 * 3 * 10 * 5 * (4 + 4)
    assert analysis.unsupported_ops() == {}


@pytest.mark.parametrize(
    "name, size, paper_gflops",
    [("deit_tiny_patch16_224", 224, 1.3), ("deit_small_patch16_224", 224, 4.6), ("deit_base_patch16_224", 224, 17.6),
     ("efficientnet_b0", 224, 0.39)],
)
def test_baselines_match_their_papers(name: str, size: int, paper_gflops: float) -> None:
    timm = pytest.importorskip("timm")
    profile = count_flops(timm.create_model(name), img_size=size)
    assert profile.unsupported_ops == {}
    assert profile.gmacs == pytest.approx(paper_gflops, rel=0.05)


def test_cost_at_another_resolution_is_the_native_model_there() -> None:
    cfg = PRESETS["cmt_ti"]
    at_224 = estimate_cost(cfg, img_size=224)
    assert at_224.macs == estimate_cost(cfg.replace(img_size=224)).macs
    assert at_224.params == estimate_cost(cfg).params  # biases stay sized for 160
    with pytest.raises(ValueError, match="img_size=100 is not allowed"):
        estimate_cost(cfg, img_size=100)
