"""The family registry: every family builds at 32, 64 and 224 px with the cost it reports (fvcore on the
module that trains), the low-resolution rule halves each family's first downsampling alike, recipes are
applied per family, and a new family is one registration."""

from __future__ import annotations

import json

import pytest
import torch

from cmt_scale.proxy import (
    COMMON_KEYS,
    DEFAULT_PROTOCOL,
    Family,
    Member,
    ProxyProtocol,
    Recipe,
    family_names,
    get_family,
    register_family,
)
from cmt_scale.search import run_search, trial_protocol, trial_recipe
from scaling import CMTConfig, count_flops, estimate_cost
from search_spaces import space_from_dict

SMALL = {  # the smallest member of each family's space
    "cmt_compound": {"phi": -2.0, "base": "cmt_ti"},
    "cmt_free": get_family("cmt_free").sweep_values,
    "deit": {"model": "deit_nano"},
    "efficientnet": {"model": "tinynet_e"},
}


def test_the_shipped_families_are_registered() -> None:
    assert set(family_names()) == {"cmt_compound", "cmt_free", "deit", "efficientnet"}
    with pytest.raises(ValueError, match="family='resnet' is not allowed; allowed: cmt_compound, cmt_free, deit"):
        get_family("resnet")


@pytest.mark.parametrize("resolution", [32, 64, 224])
@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_family_builds_with_the_cost_it_reports(family: str, resolution: int) -> None:
    member = get_family(family).member(SMALL[family], DEFAULT_PROTOCOL.replace(resolution=resolution), 10)
    assert member.reason is None
    model = member.build(0.0).eval()
    profile = count_flops(model, img_size=resolution)  # fvcore on what trains, attention counted
    assert (member.macs, member.params) == (profile.macs, profile.params)
    with torch.no_grad():
        assert model(torch.randn(1, 3, resolution, resolution)).shape == (1, 10)
    rebuilt = get_family(family).from_config(json.loads(member.config_json), 10)
    assert (rebuilt.config, rebuilt.macs) == (member.config, member.macs)  # a row's config rebuilds the member


def _last_grid(family: str, low_res: str, resolution: int = 32) -> tuple[int, int]:
    member = get_family(family).member(SMALL[family], DEFAULT_PROTOCOL.replace(resolution=resolution,
                                                                                low_res=low_res), 10)
    model = member.build(0.0).eval()
    with torch.no_grad():
        if family == "deit":
            return tuple(model.patch_embed.grid_size)
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
    return tuple(features.shape[-2:])


@pytest.mark.parametrize("family", ["cmt_compound", "deit", "efficientnet"])
def test_the_low_resolution_rule_halves_every_family_s_first_downsampling(family: str) -> None:
    # native at 32 px: CMT and EfficientNet (stride 32) end on 1x1, DeiT (16-px patch) on a 2x2 token grid
    native, adapted = _last_grid(family, "native"), _last_grid(family, "adapt")
    assert native == ((2, 2) if family == "deit" else (1, 1))
    assert adapted == (native[0] * 2, native[1] * 2)
    # from 64 px on the rule changes nothing
    protocol = DEFAULT_PROTOCOL.replace(resolution=64)
    same = [get_family(family).member(SMALL[family], protocol.replace(low_res=rule), 10)
            for rule in ("adapt", "native")]
    assert same[0].macs == same[1].macs


def test_an_adapted_cmt_costs_exactly_the_native_member_at_twice_the_size() -> None:
    protocol = DEFAULT_PROTOCOL.replace(resolution=32, low_res="adapt")
    adapted = get_family("cmt_compound").member({"phi": -1.0, "base": "cmt_ti"}, protocol, 10)
    native64 = get_family("cmt_compound").member({"phi": -1.0, "base": "cmt_ti"}, protocol.replace(resolution=64), 10)
    assert adapted.macs == native64.macs == estimate_cost(CMTConfig.from_dict(native64.config)).macs
    assert adapted.config["stem_stride"] == 1 and "stem_stride" not in native64.config


def test_recipes_are_each_family_s_and_the_budget_stays_the_protocol_s() -> None:
    recipes = {"deit": {"lr": 1e-3, "warmup_epochs": 5.0}, "efficientnet": {"lr": 1e-2, "weight_decay": 0.01}}
    protocol = DEFAULT_PROTOCOL.replace(recipes=json.dumps(recipes), epochs=2, train_size=1000)
    deit = space_from_dict({"family": "deit", "params": {"model": {"type": "categorical", "choices": ["deit_nano"]}}})
    effnet = space_from_dict({"family": "efficientnet",
                              "params": {"model": {"type": "categorical", "choices": ["efficientnet_b0"]}}})
    free = space_from_dict({"family": "cmt_free", "params": {"dim_0": {"type": "categorical", "choices": [32]}},
                            "fixed": {k: v for k, v in SMALL["cmt_free"].items() if k != "dim_0"}})
    assert trial_recipe(deit, {}, protocol) == Recipe(lr=1e-3, warmup_epochs=5.0)
    assert trial_recipe(effnet, {}, protocol) == Recipe(lr=1e-2, weight_decay=0.01)
    assert trial_recipe(free, {}, protocol) == Recipe.of_protocol(protocol)  # no entry: the protocol's own
    assert trial_recipe(effnet, {"lr": 3e-3}, protocol).lr == 3e-3  # a sweep's sampled value goes over it
    member = get_family("deit").member({"model": "deit_nano"}, protocol, 10)
    trained = trial_protocol(protocol, {}, member, trial_recipe(deit, {}, protocol))
    assert (trained.lr, trained.warmup_epochs) == (1e-3, 2.0)  # warm-up capped at the rung's epochs
    assert (trained.train_size, trained.epochs) == (protocol.train_size, protocol.epochs)  # same images seen
    with pytest.raises(ValueError, match="recipes.deit: momentum=0.9 is not allowed"):
        ProxyProtocol(recipes=json.dumps({"deit": {"momentum": 0.9}}))


class _ResNetFamily(Family):
    """A sanity family: timm's ResNets, registered from outside the toolkit."""

    name = "resnet_test"
    description = "timm ResNet-10t / 14t"
    keys = frozenset({"model"})
    required = (("model",),)
    members = ("resnet10t", "resnet14t")

    def member(self, values, protocol, num_classes):
        return self.from_config({"model": values["model"], "img_size": protocol.resolution}, num_classes)

    def from_config(self, config, num_classes):
        import timm

        name, size = config["model"], int(config["img_size"])
        macs = count_flops(timm.create_model(name, num_classes=num_classes), img_size=size)
        return Member(self.name, name, dict(config), macs.macs, macs.params,
                      lambda rate: timm.create_model(name, num_classes=num_classes, drop_path_rate=rate))

    def check_resolution(self, resolution, low_res, names, fixed):
        return None


def test_a_new_family_is_one_registration(tmp_path) -> None:
    register_family(_ResNetFamily())
    try:
        assert "resnet_test" in family_names() and "seed" in COMMON_KEYS
        space = space_from_dict({"family": "resnet_test", "params": {"model": {"type": "categorical",
                                                                              "choices": ["resnet10t"]}}})
        protocol = ProxyProtocol(dataset="digits", train_size=200, val_size=100, resolution=32, epochs=1, threads=2)
        summary = run_search(space, protocol, tmp_path / "resnet", 1, promotion=None)
        assert [r["family"] for r in summary.rows] == ["resnet_test"] and summary.rows[0]["state"] == "complete"
    finally:
        from cmt_scale.proxy import _family

        _family._REGISTRY.pop("resnet_test", None)
