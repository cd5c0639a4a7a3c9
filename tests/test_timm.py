"""timm integration: registry, pretrained_cfg, features, classifier handling, and the cheap import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

from scaling import PRESETS  # noqa: E402


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_create_model_for_every_preset(name: str) -> None:
    cfg = PRESETS[name]
    model = timm.create_model(name, num_classes=10).eval()
    assert model.pretrained_cfg["input_size"] == (3, cfg.img_size, cfg.img_size)
    assert model.pretrained_cfg["first_conv"] == "stem.0.conv" and model.pretrained_cfg["classifier"] == "head"
    assert model.pretrained_cfg["crop_pct"] == 0.875 and model.pretrained_cfg["interpolation"] == "bicubic"
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first_conv, torch.nn.Conv2d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, cfg.img_size, cfg.img_size)).shape == (1, 10)


def test_list_models_and_data_config() -> None:
    assert {"cmt_ti", "cmt_xs", "cmt_s", "cmt_b", "cmt_custom"} <= set(timm.list_models("cmt_*"))
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model("cmt_xs"))
    assert data_cfg["input_size"] == (3, 192, 192) and data_cfg["crop_pct"] == 0.875


def test_features_only_shapes() -> None:
    model = timm.create_model("cmt_ti", features_only=True).eval()
    assert model.feature_info.channels() == [46, 92, 184, 368]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 160, 160))
    assert [tuple(f.shape) for f in feats] == [(1, 46, 40, 40), (1, 92, 20, 20), (1, 184, 10, 10), (1, 368, 5, 5)]
    some = timm.create_model("cmt_ti", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in some(torch.randn(1, 3, 160, 160))] == [92, 368]


def test_forward_intermediates_and_head_split() -> None:
    model = timm.create_model("cmt_ti").eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 4 and final.shape == (1, 1280, 5, 5)
        torch.testing.assert_close(model.forward_head(final), model(x))
        assert model.forward_head(final, pre_logits=True).shape == (1, 1280)


def test_reset_classifier_and_no_weight_decay() -> None:
    model = timm.create_model("cmt_s")
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {f"stages.{i}.relative_pos" for i in range(4)}
    assert model.no_weight_decay() <= set(names)
    from timm.optim import create_optimizer_v2

    groups = create_optimizer_v2(model, "adamw", weight_decay=0.05).param_groups
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert any(p is names["stages.0.relative_pos"] for g in no_decay for p in g["params"])


def test_group_matcher_covers_every_parameter() -> None:
    from timm.models import group_parameters

    model = timm.create_model("cmt_ti")
    for coarse in (True, False):
        grouped = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sum(len(v) for v in grouped.values()) == len(list(model.parameters()))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    model = timm.create_model("cmt_ti", num_classes=4, img_size=64).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    model(x).sum().backward()
    plain = model.stages[2].blocks[0].attn.q.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    model(x).sum().backward()
    torch.testing.assert_close(model.stages[2].blocks[0].attn.q.weight.grad, plain)


def test_img_size_kwarg_and_custom_member(tmp_path) -> None:
    model = timm.create_model("cmt_ti", img_size=224)
    assert model.stages[0].relative_pos.shape == (1, 56 * 56, 7 * 7)
    cfg = PRESETS["cmt_ti"].replace(embed_dims=(32, 64, 128, 256), depths=(1, 1, 2, 1))
    path = tmp_path / "member.json"
    cfg.to_json(path)
    custom = timm.create_model("cmt_custom", config=str(path), num_classes=5)
    assert custom.cfg == cfg.replace(num_classes=5)
    assert custom.pretrained_cfg["input_size"] == (3, 160, 160)
    with pytest.raises(ValueError, match="cmt_custom needs config="):
        timm.create_model("cmt_custom")


def test_import_scaling_is_cheap_and_registers_when_timm_comes_later() -> None:
    code = (
        "import sys, scaling\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
        "cfg = scaling.PRESETS['cmt_s']; scaling.estimate_cost(cfg)\n"
        "assert 'torch' not in sys.modules\n"
        "import timm\n"
        "print(sorted(timm.list_models('cmt_*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cmt_s" in out and "cmt_custom" in out


def test_global_pool_and_custom_pretrained_cfg_follow_the_model() -> None:
    features = timm.create_model("cmt_ti", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert features(torch.randn(1, 3, 160, 160)).shape == (1, 1280, 5, 5)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        timm.create_model("cmt_ti", num_classes=10).reset_classifier(10, "")
    custom = timm.create_model("cmt_custom", config=PRESETS["cmt_ti"], img_size=96, in_chans=1)
    assert custom.pretrained_cfg["input_size"] == (1, 96, 96) and custom.pretrained_cfg["pool_size"] == (3, 3)
