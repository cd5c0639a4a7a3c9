"""`ProxyProtocol`: the one fixed training recipe every candidate (CMT, DeiT, EfficientNet) gets.

A front compares models only if they were trained the same way, so the protocol is a frozen, hashable
value saved with every result; its `protocol_hash` tells at a glance whether two results are comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["DEFAULT_PROTOCOL", "ProxyProtocol"]

_AUGMENTS = ("crop-flip", "crop", "none")
_PRECISIONS = ("fp32", "bf16")
_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class ProxyProtocol:
    """How a candidate is trained and scored.

    The validation split (``val_size`` images) is held out from the training split with the protocol's
    seed; searches score on it. The data set's test split is used only when ``eval_test`` is set, for
    final reports. The default trains a CMT-Ti-sized model in about a minute on 2 CPU cores.
    """

    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = 8000  # None: the whole training split minus the validation images
    val_size: int = 2000
    resolution: int = 32
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    augment: str = "crop-flip"
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    eval_test: bool = False

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
        need(self.augment in _AUGMENTS, "augment", ", ".join(_AUGMENTS))
        need(is_int(self.seed), "seed", "an integer")
        need(self.threads is None or (is_int(self.threads) and self.threads >= 1), "threads", "an integer >= 1")
        need(self.device in _DEVICES, "device", ", ".join(_DEVICES))
        need(self.precision in _PRECISIONS, "precision", ", ".join(_PRECISIONS))

    def replace(self, **changes: Any) -> "ProxyProtocol":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxyProtocol":
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

        Threads, device and compilation change speed, not what is learned, and the seed only draws another
        sample of the same recipe (results keep it in their own ``seed`` column), so they are left out.
        """
        data = {k: v for k, v in self.to_dict().items() if k not in ("threads", "device", "compile", "seed")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_PROTOCOL = ProxyProtocol()
