"""timm registration: ``timm.create_model("cmt_s")`` and friends, with full ``pretrained_cfg``.

Imported by ``scaling/__init__`` as soon as timm is (see ``_timm_hook``). It must not import
``scaling._model`` at module level: it may run while ``_model`` itself is importing timm.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._checkpoint import checkpoint_filter_fn, official_checkpoint_globals
from ._config import CMTConfig
from ._presets import PRESETS

__all__: list[str] = []


def _cfg(img_size: int, **kwargs: Any) -> dict[str, Any]:
    """The evaluation protocol of the official release: resize to 256/224 of the crop, bicubic, ImageNet stats."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, img_size, img_size),
        "pool_size": (img_size // 32, img_size // 32),  # four stages: total stride 32
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0.conv",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2107.06263",
        "paper_name": "CMT: Convolutional Neural Networks Meet Vision Transformers",
        "origin_url": "https://github.com/huawei-noah/Efficient-AI-Backbones/tree/master/cmt_pytorch",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {name: _cfg(cfg.img_size) for name, cfg in PRESETS.items()} | {"cmt_custom": _cfg(224)}
)


def _create_cmt(variant: str, pretrained: bool, config: CMTConfig | dict | str, **kwargs: Any):
    from ._model import CMT, _resolve_config

    overrides = {k: kwargs[k] for k in ("img_size", "in_chans") if kwargs.get(k) is not None}
    cfg = _resolve_config(config, overrides)
    if variant == "cmt_custom" or overrides:  # the pretrained_cfg follows the model actually built
        side = cfg.img_size
        overlay = dict(input_size=(cfg.in_chans, side, side), pool_size=(side // cfg.total_stride,) * 2)
        kwargs["pretrained_cfg_overlay"] = {**overlay, **(kwargs.get("pretrained_cfg_overlay") or {})}
    out_indices = kwargs.pop("out_indices", tuple(range(cfg.num_stages)))
    # timm reads a pretrained file with weights_only=True; the official files also hold an argparse.Namespace.
    with official_checkpoint_globals():
        return build_model_with_cfg(
            CMT,
            variant,
            pretrained,
            config=cfg,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


@register_model
def cmt_ti(pretrained: bool = False, **kwargs: Any):
    """CMT-Ti (paper Table 1): 160 px, widths 46-368, depths 2-2-10-2, 9.5M params, 0.65G MACs."""
    return _create_cmt("cmt_ti", pretrained, PRESETS["cmt_ti"], **kwargs)


@register_model
def cmt_xs(pretrained: bool = False, **kwargs: Any):
    """CMT-XS: 192 px, widths 52-416, depths 3-3-12-3, 15.2M params, 1.57G MACs."""
    return _create_cmt("cmt_xs", pretrained, PRESETS["cmt_xs"], **kwargs)


@register_model
def cmt_s(pretrained: bool = False, **kwargs: Any):
    """CMT-S: 224 px, widths 64-512, depths 3-3-16-3, 26.3M params, 4.09G MACs."""
    return _create_cmt("cmt_s", pretrained, PRESETS["cmt_s"], **kwargs)


@register_model
def cmt_b(pretrained: bool = False, **kwargs: Any):
    """CMT-B: 256 px, widths 76-608, depths 4-4-20-4, 45.7M params, 9.43G MACs."""
    return _create_cmt("cmt_b", pretrained, PRESETS["cmt_b"], **kwargs)


@register_model
def cmt_custom(pretrained: bool = False, config: CMTConfig | dict | str | None = None, **kwargs: Any):
    """Any family member: ``timm.create_model("cmt_custom", config=cfg_or_dict_or_json_path)``."""
    if config is None:
        raise ValueError("cmt_custom needs config=: a CMTConfig, its dict, or a JSON file from `cmt-scale --save`")
    return _create_cmt("cmt_custom", pretrained, config, **kwargs)
