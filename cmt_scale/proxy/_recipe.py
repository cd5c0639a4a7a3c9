"""`Recipe`: how one family is trained (optimiser settings), apart from how much it is trained.

Fairness between families has two halves. The budget, the number of images seen (the protocol's
``train_size`` x ``epochs``), is the same for every family. The recipe, the learning rate, its warm-up,
weight decay, label smoothing and stochastic depth, is each family's own, chosen by measurement
(`cmt-scale sweep-recipes`), because one learning rate for all measures which family happens to like
it: on Fashion-MNIST at 32 px EfficientNet-B0 gained 13.5 points from 2e-3 to 5e-3 while CMT did not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["RECIPE_KEYS", "Recipe", "parse_recipes"]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One family's training recipe; `applied_to` puts it into a protocol (the budget stays the protocol's)."""

    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "lr": (lambda v: v > 0, "a number > 0"),
            "weight_decay": (lambda v: v >= 0, "a number >= 0"),
            "warmup_epochs": (lambda v: v >= 0, "a number >= 0"),
            "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
            "drop_path_rate": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        }
        for name, (ok, allowed) in checks.items():
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not ok(value)):
                raise ValueError(f"recipe {name}={value!r} is not allowed; allowed: {allowed}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> Recipe:
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}={data!r} is not allowed; allowed: a mapping of {', '.join(RECIPE_KEYS)}")
        unknown = sorted(set(data) - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(f"{source}: {unknown[0]}={data[unknown[0]]!r} is not allowed; allowed: keys "
                             f"{', '.join(RECIPE_KEYS)}")
        return cls(**{k: data[k] for k in RECIPE_KEYS if k in data})

    @classmethod
    def of_protocol(cls, protocol: Any) -> Recipe:
        """The recipe a protocol's own fields spell (used for every family when no family recipes are given)."""
        return cls(lr=protocol.lr, weight_decay=protocol.weight_decay, warmup_epochs=protocol.warmup_epochs,
                   label_smoothing=protocol.label_smoothing)

    def updated(self, values: Mapping[str, Any]) -> Recipe:
        """This recipe with any recipe keys a trial sampled (a recipe sweep's grid) put over it."""
        changes = {k: values[k] for k in RECIPE_KEYS if values.get(k) is not None}
        return self.from_dict({**self.to_dict(), **changes}) if changes else self

    def applied_to(self, protocol: Any) -> Any:
        """``protocol`` with this recipe's optimiser fields; its images seen (train_size x epochs) unchanged.
        The warm-up is capped at the protocol's epochs (a recipe tuned on a long rung still fits a short one)."""
        return protocol.replace(lr=self.lr, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                                warmup_epochs=min(self.warmup_epochs, float(protocol.epochs)))


RECIPE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Recipe))


def parse_recipes(text: str | None) -> dict[str, Recipe]:
    """A protocol's ``recipes`` field (JSON ``{family: {lr: ...}}``) as recipes; ``None`` or ``{}``: none."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"recipes={text!r} is not allowed; allowed: JSON {{family: {{lr: ..., ...}}}}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"recipes={text!r} is not allowed; allowed: JSON {{family: {{lr: ..., ...}}}}")
    return {str(family): Recipe.from_dict(spec, f"recipes.{family}") for family, spec in data.items()}
