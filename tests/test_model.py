"""The built model: shapes, the official logits, attention paths, other resolutions, gradients."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import random_config
from official_reference import official_forward, random_official_state_dict

from scaling import PRESETS, CMTConfig, build_cmt, checkpoint_filter_fn


def _official_and_ours(cfg: CMTConfig, seed: int = 0):
    sd = random_official_state_dict(cfg, seed)
    model = build_cmt(cfg).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    return sd, model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_forward_shape(name: str) -> None:
    cfg = PRESETS[name]
    model = build_cmt(cfg, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, cfg.img_size, cfg.img_size)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cmt_ti", "cmt_xs"])
def test_official_logits_on_presets(name: str) -> None:
    cfg = PRESETS[name]
    sd, model = _official_and_ours(cfg)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(sd, cfg, x), rtol=1e-4, atol=1e-4)


def test_official_logits_on_random_configs() -> None:
    rng = random.Random(7)
    for seed in range(8):
        cfg = random_config(rng)
        sd, model = _official_and_ours(cfg, seed)
        x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
        with torch.no_grad():
            expected = official_forward(sd, cfg, x)
            assert model(x).shape == ((2, cfg.num_classes) if cfg.num_classes else (2, cfg.fc_dim))
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cmt_ti", "cmt_s"])
def test_fused_and_explicit_attention_agree(name: str) -> None:
    cfg = PRESETS[name]
    model = build_cmt(cfg).eval()
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        fused = model(x)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        explicit = model(x)
    assert (fused - explicit).abs().max() < 1e-5


def test_model_built_at_224_runs_at_other_sizes(tiny_cfg) -> None:
    model = build_cmt(PRESETS["cmt_s"], num_classes=5).eval()
    with torch.no_grad():
        for size in (256, 192, 288):
            out = model(torch.randn(1, 3, size, size))
            assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_set_input_size_equals_on_the_fly_resize(tiny_cfg) -> None:
    model = build_cmt(tiny_cfg).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        on_the_fly = model(x)
        model.set_input_size(96)
        assert model.cfg.img_size == 96
        assert model.stages[0].relative_pos.shape == (1, 24 * 24, 3 * 3)
        torch.testing.assert_close(model(x), on_the_fly)


def test_resize_is_identity_at_the_native_grid_and_round_trips_smooth_biases() -> None:
    from scaling import resize_position_bias

    bias = torch.randn(2, 16, 4)
    assert resize_position_bias(bias, (4, 4), (2, 2), (4, 4), (2, 2)) is bias
    # A bias that is constant along each axis survives up- and down-sampling unchanged.
    flat = torch.ones(2, 16, 4) * torch.tensor([1.0, -2.0]).view(2, 1, 1)
    up = resize_position_bias(flat, (4, 4), (2, 2), (8, 8), (4, 4))
    assert up.shape == (2, 64, 16)
    torch.testing.assert_close(resize_position_bias(up, (8, 8), (4, 4), (4, 4), (2, 2)), flat)


def test_img_size_at_create_time_sizes_the_biases() -> None:
    model = build_cmt(PRESETS["cmt_ti"], img_size=224)
    assert model.cfg.img_size == 224
    assert model.stages[0].relative_pos.shape == (1, 56 * 56, 7 * 7)


def test_every_parameter_gets_a_gradient(tiny_cfg) -> None:
    model = build_cmt(tiny_cfg.replace(drop_path_rate=0.1, drop_rate=0.1)).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_config_fields_change_the_model(tiny_cfg) -> None:
    base = build_cmt(tiny_cfg)
    assert build_cmt(tiny_cfg.replace(in_chans=1)).stem[0].conv.in_channels == 1
    assert build_cmt(tiny_cfg.replace(fc_dim=32)).head.in_features == 32
    assert base.stages[1].blocks[0].attn.q.bias is not None
    assert build_cmt(tiny_cfg.replace(qkv_bias=False)).stages[1].blocks[0].attn.q.bias is None
    dropped = build_cmt(tiny_cfg.replace(drop_path_rate=0.2, drop_rate=0.3))
    assert dropped.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert dropped.head_drop.p == 0.3
    assert isinstance(build_cmt(tiny_cfg.replace(num_classes=0)).head, torch.nn.Identity)


def test_training_mode_batch_statistics_match_the_reference(tiny_cfg) -> None:
    """BatchNorm on channels-last views must normalise over the same axes in training mode too."""
    sd, model = _official_and_ours(tiny_cfg)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), official_forward(sd, tiny_cfg, x, training=True),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_inference_fusion_keeps_eval_outputs(seed: int) -> None:
    from scaling import fuse_for_inference

    cfg = random_config(random.Random(100 + seed)) if seed else PRESETS["cmt_ti"]
    _, model = _official_and_ours(cfg, seed)  # non-trivial BN statistics
    fused = fuse_for_inference(model)
    n_bn = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert n_bn(fused) < n_bn(model)
    x = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    assert model.stem[-1].bn is not None and isinstance(model.stem[-1].bn, torch.nn.BatchNorm2d)
