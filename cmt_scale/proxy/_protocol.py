"""`ProxyProtocol`: the one fixed training recipe every candidate (CMT, DeiT, EfficientNet) gets.

A front compares models only if they were trained the same way, so the protocol is a frozen, hashable
value saved with every result; its `protocol_hash` tells at a glance whether two results are comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DEFAULT_PROTOCOL", "LOW_RES_BELOW", "LOW_RES_RULES", "TENSOR_AUGMENTS", "ProxyProtocol"]

# Batch-level augmentations made by tensor ops (any data path); the rest are timm's per-image ones.
TENSOR_AUGMENTS = ("crop-flip", "crop", "none")
# rrc-flip: timm's random-resized crop and flip; a timm auto-augment policy adds to it (e.g. rand-m9-mstd0.5).
_TIMM_POLICY_PREFIXES = ("rand-", "augmix-", "original", "v0", "3a")
AUGMENTS_ALLOWED = "none, crop, crop-flip, rrc-flip or a timm auto-augment policy (rand-m9-mstd0.5, augmix-m5, ...)"


def _is_timm_policy(text: str) -> bool:
    """A timm auto-augment string each of whose options carries its value (``m9``, ``mstd0.5``; RandAugment's
    ``t...`` names a transform set). Why: timm skips an option without a number, so ``rand-foo`` would
    quietly train with plain RandAugment; such a section is a typo, refused here."""
    if not text.startswith(_TIMM_POLICY_PREFIXES):
        return False
    name, *options = text.split("-")
    return all(re.fullmatch(r"[a-z]+\d[\d.]*", option) or (name == "rand" and re.fullmatch(r"t\w+", option))
               for option in options)
_PRECISIONS = ("fp32", "bf16", "fp16")
# Fields added after results were recorded: hashed only when set, so older protocols keep their hashes.
_HASHED_WHEN_SET = {"mixup": 0.0, "cutmix": 0.0}
# Fields that change speed or memory, not what is learned (the seed: another sample of the same recipe).
_NOT_HASHED = ("threads", "device", "compile", "seed", "workers", "data_memory_gb")
_DEVICES = ("auto", "cpu", "cuda")
LOW_RES_RULES = ("adapt", "native")
# Below this input size a native CMT or EfficientNet ends on a 1x1 map and a native DeiT on a 2x2 token grid.
LOW_RES_BELOW = 64


@dataclass(frozen=True, kw_only=True)
class ProxyProtocol:
    """How a candidate is trained and scored.

    The validation split (``val_size`` images) is held out from the training split with the protocol's
    seed; searches score on it. The data set's test split is used only when ``eval_test`` is set, for
    final reports.

    The default is a search's cheap rung: Fashion-MNIST at 32 px, every training image but the 2000 held
    out for validation (58,000), one epoch, no augmentation, a 0.1-epoch warm-up. It was chosen by
    measurement (README, "Fair fronts"): with the old 8000 images x 3 epochs, a 0.5-epoch warm-up and
    crop-flip augmentation, 375 optimiser steps were too few for ViTs and EfficientNets from scratch, and
    the baselines scored below a linear classifier; under this one each family's small member passes 84%.
    It trains a CMT-Ti-sized member in about 1.5 minutes on 2 CPU cores.

    ``lr``, ``weight_decay``, ``warmup_epochs`` and ``label_smoothing`` are the shared recipe: what a model
    trains with when ``recipes`` (JSON ``{family: recipe}``, see `Recipe`) names no recipe for its family.
    Searches fill ``recipes`` with the shipped per-family recipes unless told otherwise; ``"{}"`` means the
    shared recipe for every family. ``low_res`` is the rule for inputs below 64 px, the same for every
    family: ``native`` (default) keeps the published strides, ``adapt`` halves each family's first
    downsampling (CMT's first stem conv and EfficientNet's stem conv get stride 1, DeiT's 16-px patch
    becomes 8 px). Measured on the cheap rung (benchmarks/RESULTS.md), adapting costs 4x the MACs and
    2.4-3.3x the time for +1.6 points on EfficientNet-B0, none on DeiT and -3.5 on CMT: the default is native.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = None  # None: the whole training split minus the validation images
    val_size: int = 2000
    resolution: int = 32
    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.1
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    augment: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    eval_test: bool = False
    recipes: str | None = None
    low_res: str = "native"
    workers: int | None = None
    data_memory_gb: float | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; allowed: {allowed}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(isinstance(self.dataset, str) and bool(self.dataset), "dataset", "a data set name")
        need(self.train_size is None or (is_int(self.train_size) and self.train_size >= 1), "train_size",
             "an integer >= 1 or None (all)")
        need(is_int(self.val_size) and self.val_size >= 1, "val_size", "an integer >= 1")
        need(is_int(self.resolution) and self.resolution >= 8, "resolution", "an integer >= 8")
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "lr", "a number > 0")
        need(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"a number in [0, epochs={self.epochs}]")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)")
        need(isinstance(self.augment, str) and (self.augment in (*TENSOR_AUGMENTS, "rrc-flip")
                                                or _is_timm_policy(self.augment)),
             "augment", AUGMENTS_ALLOWED)
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf, name,
                 "a Beta-distribution alpha >= 0 (0: off)")
        need(self.workers is None or (is_int(self.workers) and self.workers >= 0), "workers",
             "an integer >= 0 (0: load in the training process) or None (one per core)")
        need(self.data_memory_gb is None or (isinstance(self.data_memory_gb, (int, float))
                                             and not isinstance(self.data_memory_gb, bool)
                                             and 0 <= self.data_memory_gb < math.inf),
             "data_memory_gb", "a number of GiB >= 0 (0: always stream an image folder) or None (a quarter of RAM)")
        need(is_int(self.seed), "seed", "an integer")
        need(self.threads is None or (is_int(self.threads) and self.threads >= 1), "threads", "an integer >= 1")
        need(self.device in _DEVICES, "device", ", ".join(_DEVICES))
        need(self.precision in _PRECISIONS, "precision", ", ".join(_PRECISIONS))
        need(self.low_res in LOW_RES_RULES, "low_res", ", ".join(LOW_RES_RULES))
        need(self.recipes is None or isinstance(self.recipes, str), "recipes", "JSON {family: recipe} or None")
        from ._recipe import parse_recipes

        parse_recipes(self.recipes)  # one line naming the bad family and key

    @property
    def adapts_low_res(self) -> bool:
        """Whether members are adapted to this protocol's resolution (see ``low_res``)."""
        return self.low_res == "adapt" and self.resolution < LOW_RES_BELOW

    def replace(self, **changes: Any) -> ProxyProtocol:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyProtocol:
        if not isinstance(data, Mapping):
            raise ValueError(f"a protocol must be a JSON object of fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ProxyProtocol field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))

    @property
    def protocol_hash(self) -> str:
        """12 hex digits of the protocol's canonical JSON; equal hashes mean comparable results.

        Threads, device, compilation, data workers and the memory budget change speed, not what is learned,
        and the seed only draws another sample of the same recipe (results keep it in their own ``seed``
        column), so they are left out. Mixup and CutMix enter only when on, so protocols from before they
        existed keep their hashes.
        """
        data = {k: v for k, v in self.to_dict().items()
                if k not in _NOT_HASHED and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_PROTOCOL = ProxyProtocol()
