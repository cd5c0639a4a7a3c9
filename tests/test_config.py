"""CMTConfig: the paper's presets, validation with clear messages, and persistence."""

from __future__ import annotations

import dataclasses
import json

import pytest

from scaling import PRESETS, CMTConfig, get_preset

# Table 1 of Guo et al. (CVPR 2022), typed from the paper: stem, widths, depths, heads, IRFFN ratio R,
# K/V reduction k per stage, input size.
PAPER_TABLE_1 = {
    "cmt_ti": dict(img_size=160, stem_channels=16, embed_dims=(46, 92, 184, 368), depths=(2, 2, 10, 2), R=3.6),
    "cmt_xs": dict(img_size=192, stem_channels=16, embed_dims=(52, 104, 208, 416), depths=(3, 3, 12, 3), R=3.8),
    "cmt_s": dict(img_size=224, stem_channels=32, embed_dims=(64, 128, 256, 512), depths=(3, 3, 16, 3), R=4.0),
    "cmt_b": dict(img_size=256, stem_channels=38, embed_dims=(76, 152, 304, 608), depths=(4, 4, 20, 4), R=4.0),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE_1))
def test_presets_follow_paper_table_1(name: str) -> None:
    cfg, paper = PRESETS[name], PAPER_TABLE_1[name]
    for key in ("img_size", "stem_channels", "embed_dims", "depths"):
        assert getattr(cfg, key) == paper[key]
    assert cfg.num_heads == (1, 2, 4, 8) and cfg.sr_ratios == (8, 4, 2, 1)
    # The paper rounds CMT-XS's ratio to 3.8; the release (and the author) use 3.77.
    assert all(abs(r - paper["R"]) <= 0.031 for r in cfg.mlp_ratios)


def test_hidden_width_truncates_like_the_official_code() -> None:
    assert PRESETS["cmt_ti"].hidden_dims == (165, 331, 662, 1324)  # int(46 * 3.6) = int(165.6)
    assert PRESETS["cmt_xs"].hidden_dims == (196, 392, 784, 1568)  # int(52 * 3.77) = int(196.04)


def _with(**changes):
    return PRESETS["cmt_s"].replace(**changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(embed_dims=(64, 128, 102, 512)),
         "embed_dims[2]=102 is not divisible by num_heads[2]=4; allowed: a multiple of 4"),
        (dict(img_size=100), "img_size=100 is not allowed; allowed: a positive multiple of 2**(stages+1) = 32"),
        (dict(img_size=0), "img_size=0"),
        (dict(sr_ratios=(8, 4, 3, 1)), "sr_ratios[2]=3 does not divide stage 2's token grid 14x14"),
        (dict(depths=(3, 3, 16)), "depths has 3 entries"),
        (dict(depths=(3, 0, 16, 3)), "depths[1]=0"),
        (dict(depths=(3, True, 16, 3)), "depths[1]=True must be an integer"),
        (dict(mlp_ratios=(4, 4, -1, 4)), "mlp_ratios[2]=-1"),
        (dict(drop_path_rate=1.5), "drop_path_rate=1.5 is not allowed; allowed: a number in [0, 1)"),
        (dict(num_classes=-1), "num_classes=-1"),
        (dict(stem_channels=2.5), "stem_channels=2.5 must be an integer"),
        (dict(embed_dims="64"), "embed_dims='64' must be a sequence"),
        (dict(qkv_bias="yes"), "qkv_bias='yes'"),
    ],
)
def test_bad_configs_raise_a_message_naming_field_and_value(changes, message) -> None:
    with pytest.raises(ValueError) as err:
        _with(**changes)
    assert message in str(err.value)


def test_config_is_frozen_and_hashable() -> None:
    cfg = PRESETS["cmt_s"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.img_size = 256  # type: ignore[misc]
    assert len({cfg, cfg.replace(img_size=224), cfg.replace(img_size=256)}) == 2


def test_lists_become_tuples_and_whole_floats_ints() -> None:
    cfg = _with(embed_dims=[64, 128, 256, 512], img_size=224.0)
    assert cfg == PRESETS["cmt_s"] and isinstance(cfg.embed_dims, tuple) and isinstance(cfg.img_size, int)


def test_dict_and_json_round_trip(tmp_path) -> None:
    cfg = PRESETS["cmt_xs"]
    assert CMTConfig.from_dict(cfg.to_dict()) == cfg
    assert CMTConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "member.json"
    cfg.to_json(path)
    assert json.loads(path.read_text())["embed_dims"] == [52, 104, 208, 416]
    assert CMTConfig.from_json(path) == cfg
    assert CMTConfig.from_json(str(path)) == cfg


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    data = PRESETS["cmt_s"].to_dict()
    with pytest.raises(ValueError, match=r"unknown CMTConfig field\(s\) \['embed_dim'\]"):
        CMTConfig.from_dict({**data, "embed_dim": 3})
    del data["depths"]
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['depths'\]"):
        CMTConfig.from_dict(data)
    with pytest.raises(ValueError, match="does not exist"):
        CMTConfig.from_json("no/such/file.json")


def test_more_or_fewer_than_four_stages_are_valid() -> None:
    three = CMTConfig(img_size=64, stem_channels=8, embed_dims=(8, 16, 32), depths=(1, 1, 1), num_heads=(1, 2, 4),
                      mlp_ratios=(2,) * 3, sr_ratios=(4, 2, 1))
    assert three.num_stages == 3 and three.total_stride == 16
    with pytest.raises(ValueError, match="multiple of 2\\*\\*\\(stages\\+1\\) = 16"):
        three.replace(img_size=72)


def test_get_preset_forgives_case_and_dash_and_names_choices() -> None:
    assert get_preset("CMT-S") is PRESETS["cmt_s"]
    with pytest.raises(ValueError, match="unknown preset 'cmt_l'; allowed: cmt_ti, cmt_xs, cmt_s, cmt_b"):
        get_preset("cmt_l")
