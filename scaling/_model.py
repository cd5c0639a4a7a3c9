"""The CMT network built from a `CMTConfig`: one stage class, looped, timm-native.

Layout choice, for speed: inside a stage the activations live as ``(B, H, W, C)`` tensors, which is the
token layout attention and LayerNorm want *and* the channels-last memory layout the convolutions want.
Going from one to the other is a ``permute``, a free view, never a copy; the official code instead
reshapes between ``(B, N, C)`` and contiguous NCHW three times per block. The input is made
channels-last once at the stem, and every conv then keeps that layout.

Module names follow timm (``stem``, ``stages``, ``head``); `checkpoint_filter_fn` in
``scaling._checkpoint`` maps the official release's names onto them. Parameter counts equal the
official implementation's for the same config, module for module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ._allocator import tune_cpu_allocator
from ._autocast_weights import autocast_weights, drop_cast_weights
from ._blocks import CMTStage, ConvGeluBn, PointwiseLinear, _to_nchw, _to_nhwc
from ._config import CMTConfig
from ._fused import is_cpu_inference, is_eager

__all__ = ["CMT", "build_cmt"]


def _stage_indices(stages: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """The stages ``forward_intermediates`` returns, by timm's convention (None: all; an int n: the last n; a
    list: those positions, negative from the end), and the last one needed. timm keeps its own helper for this
    private (``timm.models._features``), so the rule is written here."""
    if indices is None:
        indices = stages
    if isinstance(indices, int):
        if not 0 < indices <= stages:
            raise ValueError(f"indices={indices} is not allowed; allowed: 1 to {stages} (the last n stages)")
        wanted = list(range(stages - indices, stages))
    else:
        wanted = [i + stages if i < 0 else i for i in indices]
        if not wanted or any(not 0 <= i < stages for i in wanted):
            raise ValueError(f"indices={list(indices)} is not allowed; allowed: stage positions in "
                             f"[{-stages}, {stages - 1}]")
    return wanted, max(wanted)


def _resolve_config(cfg: CMTConfig | Mapping[str, Any] | str | None, overrides: dict[str, Any]) -> CMTConfig:
    """Turn what timm's builder and users pass (a config, a dict, a JSON path, plus overrides) into one config."""
    if cfg is None:
        raise ValueError("a CMT needs a config: pass a CMTConfig, a dict, or a JSON file path as `config=`")
    if isinstance(cfg, Mapping):
        cfg = CMTConfig.from_dict(cfg)
    elif isinstance(cfg, str):
        cfg = CMTConfig.from_json(cfg)
    elif not isinstance(cfg, CMTConfig):
        raise ValueError(f"config must be a CMTConfig, a dict or a JSON path, got {type(cfg).__name__}")
    img_size = overrides.get("img_size")
    if isinstance(img_size, (tuple, list)):
        if len(set(img_size)) != 1:
            raise ValueError(f"img_size={tuple(img_size)} is not allowed; allowed: a square size (one integer)")
        overrides["img_size"] = int(img_size[0])
    changes = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**changes) if changes else cfg


class CMT(nn.Module):
    """A CMT built from a `CMTConfig`.

    Keyword overrides (``num_classes``, ``in_chans``, ``img_size``, ``drop_rate``, ``drop_path_rate``, or
    any other config field) are applied to the config first, so timm's ``create_model`` kwargs work.
    ``forward_features`` returns the ``fc_dim`` map after the head's 1x1 conv + BN + Swish (as timm's
    EfficientNet does); ``forward_head`` pools, drops out and classifies.

    Example:
        >>> from scaling import CMT, PRESETS
        >>> model = CMT(PRESETS["cmt_ti"], num_classes=10)
        >>> model(torch.randn(2, 3, 160, 160)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: CMTConfig | Mapping[str, Any] | str | None = None, **overrides: Any) -> None:
        super().__init__()
        global_pool = overrides.pop("global_pool", "avg")
        cfg = _resolve_config(config, overrides)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = cfg.fc_dim
        self.drop_rate = cfg.drop_rate
        self.global_pool = _check_pool(global_pool, cfg.num_classes)
        self.grad_checkpointing = False

        c = cfg.stem_channels
        self.stem = nn.Sequential(ConvGeluBn(cfg.in_chans, c, 2), ConvGeluBn(c, c, 1), ConvGeluBn(c, c, 1))
        drop_paths = torch.linspace(0, cfg.drop_path_rate, cfg.total_depth).tolist()
        stages, in_chs, start = [], c, 0
        self.feature_info: list[dict[str, Any]] = []
        for i in range(cfg.num_stages):
            depth = cfg.depths[i]
            stages.append(
                CMTStage(
                    in_chs, cfg.embed_dims[i], depth, cfg.num_heads[i], cfg.hidden_dims[i], cfg.sr_ratios[i],
                    cfg.qkv_bias, cfg.grid_size(i), drop_paths[start : start + depth],
                )
            )
            self.feature_info.append(dict(num_chs=cfg.embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
            in_chs, start = cfg.embed_dims[i], start + depth
        self.stages = nn.ModuleList(stages)
        # Head as in EfficientNet: 1x1 conv to fc_dim + BN + Swish on the map, then pool, dropout, linear.
        self.head_fc = PointwiseLinear(in_chs, cfg.fc_dim)
        self.head_norm = nn.BatchNorm2d(cfg.fc_dim)
        self.head_act = nn.SiLU()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.fc_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # ------------------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The relative position biases play the part of ViT's ``pos_embed``: no weight decay on them."""
        return {f"stages.{i}.relative_pos" for i in range(len(self.stages))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.(?:downsample|relative_pos)", (0,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.global_pool = _check_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.cfg = self.cfg.replace(num_classes=num_classes)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild the position biases for ``img_size`` (resampled, so trained weights carry over)."""
        cfg = _resolve_config(self.cfg, {"img_size": img_size})
        for i, stage in enumerate(self.stages):
            stage.set_grid(cfg.grid_size(i))
        self.cfg = cfg

    # ------------------------------------------------------------------------------------ forward
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if is_cpu_inference(x, self) and is_eager():
            tune_cpu_allocator()  # once per process; keeps the early stages' freed maps (scaling._allocator)
        # One cheap copy of a 3-channel image makes every later conv run channels-last.
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_head_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage output (NCHW) -> the ``fc_dim`` map: 1x1 conv + BN + Swish."""
        return self.head_act(self.head_norm(_to_nchw(self.head_fc(_to_nhwc(x)))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_head_map(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.head_drop(x)
        if pre_logits:
            return x
        head = self.head
        if type(head) is nn.Linear:  # under autocast inference, its weight cast once (`scaling._autocast_weights`)
            return F.linear(x, *autocast_weights(head, x, head.weight, head.bias))
        return head(x)

    def train(self, mode: bool = True) -> CMT:
        """As `nn.Module.train`; training mode also lets go of the weights cast once for autocast inference."""
        if mode:
            drop_cast_weights(self)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (NCHW, strides 4, 8, 16, 32 for four stages) for dense tasks, as timm's hierarchical models."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not allowed; allowed: 'NCHW' or 'NHWC'")
        take_indices, max_index = _stage_indices(len(self.stages), indices)
        intermediates = []
        x = self.forward_stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x if output_fmt == "NCHW" else _to_nhwc(x))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.forward_head_map(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one (and the head), for feature extraction."""
        take_indices, max_index = _stage_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.head_fc, self.head_norm, self.head_act = nn.Identity(), nn.Identity(), nn.Identity()
            self.reset_classifier(0, "")
        return take_indices


def _check_pool(global_pool: str, num_classes: int) -> str:
    """'avg' or '' (no pooling: forward_head returns the map); a classifier needs pooled features."""
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool={global_pool!r} is not allowed; allowed: 'avg' or '' (no pooling)")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0; a classifier takes pooled features")
    return global_pool


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated-normal linears, fan-out Kaiming convs, unit norms, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_cmt(config: CMTConfig | Mapping[str, Any] | str, **overrides: Any) -> CMT:
    """Build the CMT that ``config`` describes (a `CMTConfig`, its dict, or a JSON file written by ``to_json``).

    Example:
        >>> from scaling import PRESETS, build_cmt
        >>> model = build_cmt(PRESETS["cmt_s"])
        >>> sum(p.numel() for p in model.parameters())
        26256160
    """
    return CMT(config, **overrides)
