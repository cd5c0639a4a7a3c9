"""The family registry: one entry per model family, owning everything that differs between families.

A search, a study or a report never asks ``if family == ...``: it asks the family's registry entry. An
entry knows how a trial's values become a member at a resolution (`Family.member`), what the member
costs there (analytic for CMT, fvcore otherwise, always on what is trained), which space keys it takes,
which resolutions it builds at, how it adapts to small inputs (the protocol's ``low_res`` rule) and which
training recipe suits it. Adding a family (a ResNet sanity check, ConvNeXt) is one `register_family`
call; the driver, CLI and analysis do not change.

Example:
    >>> from cmt_scale.proxy import get_family, DEFAULT_PROTOCOL
    >>> member = get_family("deit").member({"model": "deit_nano"}, DEFAULT_PROTOCOL, num_classes=10)
    >>> member.config["patch_size"], member.macs  # doctest: +SKIP
    (8, 12015616)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._protocol import ProxyProtocol
from ._recipe import RECIPE_KEYS, Recipe, parse_recipes

__all__ = ["COMMON_KEYS", "Family", "Member", "family_names", "get_family", "register_family"]

# Keys any family's space may hold: the trial's seed, a member named outright by its config (what the
# reference rung retrains), and the recipe keys a recipe sweep samples.
COMMON_KEYS: frozenset[str] = frozenset({"seed", "config", *RECIPE_KEYS})


@dataclass(frozen=True)
class Member:
    """What a trial trains: its name, its config (the architecture's identity, JSON-able, enough to rebuild
    it with `Family.from_config`), its cost where it trains, and a builder (``reason`` when it cannot be built).

    ``build(drop_path_rate)`` returns the untrained module; the rate is the recipe's."""

    family: str
    name: str
    config: dict[str, Any]
    macs: int | None
    params: int | None
    build: Callable[[float], Any] | None = field(default=None, compare=False, repr=False)
    reason: str | None = None

    @property
    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


class Family(ABC):
    """A model family of the search: subclass, set the class attributes, and `register_family` an instance."""

    name: str
    description: str
    keys: frozenset[str] = frozenset()  # the family's own space keys (COMMON_KEYS are always allowed)
    required: tuple[tuple[str, ...], ...] = ()  # each tuple: the space must name one of these keys
    members: tuple[str, ...] = ()  # named members a baseline run trains (empty for searched families)
    sweep_values: Mapping[str, Any] = {}  # the small, typical member a recipe sweep trains
    recipe_from: str | None = None  # the family whose recipe this one shares when it has none of its own

    @abstractmethod
    def member(self, values: Mapping[str, Any], protocol: ProxyProtocol, num_classes: int) -> Member:
        """The member a trial's ``values`` name, built for ``protocol`` (resolution and ``low_res`` rule)."""

    @abstractmethod
    def from_config(self, config: Mapping[str, Any], num_classes: int) -> Member:
        """The member a result row's config names (the promotion rung retrains it from there)."""

    @abstractmethod
    def check_resolution(self, resolution: int, low_res: str, names: frozenset[str], fixed: Mapping[str, Any]) -> None:
        """A one-line `ValueError` when no member of a space with keys ``names`` (and ``fixed`` values) builds
        at ``resolution`` under the ``low_res`` rule: checked before anything trains, so a run does not fail
        trial by trial."""

    def check_space(self, names: frozenset[str], fixed: Mapping[str, Any],
                    params: Mapping[str, tuple]) -> tuple[str, Any, str] | None:
        """Why a space's keys are not enough for this family, as (key, value, what is allowed), or ``None``;
        ``params`` maps each categorical param to its choices."""
        for options in self.required:
            if not set(options) & names and "config" not in names:
                return f"params.{options[0]}", None, f"a value for {' or '.join(options)} ({self.description})"
        return None

    def recipe(self, protocol: ProxyProtocol) -> Recipe:
        """The family's recipe in ``protocol``: its entry in ``protocol.recipes`` (or that of the family it shares
        one with), else the protocol's own fields."""
        recipes = parse_recipes(protocol.recipes)
        return recipes.get(self.name) or recipes.get(self.recipe_from or "") or Recipe.of_protocol(protocol)

    def values_member(self, values: Mapping[str, Any], protocol: ProxyProtocol, num_classes: int) -> Member:
        """`member`, or `from_config` when the values name a member outright (``config``)."""
        config = values.get("config")
        if config is not None:
            try:
                data = json.loads(config) if isinstance(config, str) else dict(config)
                return self.from_config(data, num_classes)
            except (ValueError, TypeError) as err:
                return Member(self.name, "invalid", {"config": config}, None, None, reason=f"not a valid member: {err}")
        return self.member(values, protocol, num_classes)


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` under ``family.name`` (a second registration of a name replaces the first)."""
    _REGISTRY[family.name] = family
    return family


def family_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_REGISTRY))


def get_family(name: str) -> Family:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"family={name!r} is not allowed; allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_builtins() -> None:
    from . import _family_baselines, _family_cmt  # noqa: F401 - each module registers its families
