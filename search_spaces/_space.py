"""Search spaces as data: a YAML file, validated, that becomes Optuna distributions or a Ray Tune space.

A space file has:

- ``family``: ``cmt_compound``, ``cmt_free``, ``deit`` or ``efficientnet`` (how sampled values become a model);
- ``base``: the preset a compound family scales from (``cmt_compound`` only);
- ``params``: sampled values, each ``{type: float|int, low, high[, step][, log]}`` or
  ``{type: categorical, choices: [...]}``;
- ``fixed``: values every trial gets;
- ``budget``: ``max_macs``, ``max_params``, ``max_latency_ms``, checked before any training;
- ``sampler``: ``tpe`` (default: the backend's model-based sampler) or ``grid`` (every combination of the
  categorical params exactly once: enqueued Optuna trials, Ray Tune's ``grid_search``), for studies
  whose candidates are fixed in advance (coefficient fits, ablations, proxy fidelity).

``cmt_compound`` values may also hold ``base_phi`` (the base is the preset scaled by the paper's rule to this
phi first), ``scale_resolution`` (true: the member's resolution follows ``gamma**phi`` from the protocol's,
and it trains at that resolution; default false: every member at the protocol resolution), and ``point``
(one grid entry naming several values at once, ``"phi=1 alpha=1.2 beta=1.3 gamma=1.15"``). Any family
may sample ``seed`` (the trial's protocol seed).

Files are parsed with ``yaml.safe_load`` (no object tags, nothing executed). Every problem is one
`ValueError` line naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling import get_preset, parse_count, parse_latency_ms

__all__ = ["SAMPLERS", "Budget", "Param", "SearchSpace", "builtin_space_path", "load_space", "space_from_dict"]

_TOP_KEYS = {"family", "base", "params", "fixed", "budget", "description", "sampler"}
SAMPLERS = ("tpe", "grid")
_PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One sampled value: a numeric range (optionally stepped or log-scaled) or a set of choices."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def to_optuna(self):
        import optuna.distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return d.FloatDistribution(self.low, self.high, step=self.step, log=self.log)

    def to_ray(self):
        from ray import tune

        if self.type == "categorical":
            return tune.choice(list(self.choices))
        if self.type == "int":
            step = int(self.step or 1)
            if self.log:
                return tune.lograndint(int(self.low), int(self.high) + 1)
            return tune.qrandint(int(self.low), int(self.high), step) if step > 1 else tune.randint(
                int(self.low), int(self.high) + 1)
        if self.log:
            return (tune.qloguniform(self.low, self.high, self.step) if self.step
                    else tune.loguniform(self.low, self.high))
        return tune.quniform(self.low, self.high, self.step) if self.step else tune.uniform(self.low, self.high)


@dataclass(frozen=True)
class Budget:
    """Hard limits on a candidate's cost at the protocol resolution; ``None`` means no limit."""

    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None

    def violations(self, macs: float, params: float, latency_ms: float | None = None) -> list[str]:
        """Why a candidate is over budget (empty when it fits)."""
        out = []
        if self.max_macs is not None and macs > self.max_macs:
            out.append(f"MACs {macs / 1e6:.1f}M > max_macs {self.max_macs / 1e6:.1f}M")
        if self.max_params is not None and params > self.max_params:
            out.append(f"params {params / 1e6:.2f}M > max_params {self.max_params / 1e6:.2f}M")
        if self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms:
            out.append(f"latency {latency_ms:.2f}ms > max_latency_ms {self.max_latency_ms:.2f}ms")
        return out


@dataclass(frozen=True)
class SearchSpace:
    family: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    budget: Budget = Budget()
    base: str | None = None
    source: str = "<dict>"
    sampler: str = "tpe"

    @property
    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the categorical params, in file order (``sampler: grid``)."""
        import itertools

        names = [p.name for p in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*(p.choices for p in self.params))]

    def to_optuna(self) -> dict[str, Any]:
        """``{name: optuna distribution}`` for ``study.ask(...)`` / ``OptunaSearch(space=...)``."""
        return {p.name: p.to_optuna() for p in self.params}

    def to_ray(self) -> dict[str, Any]:
        """A Ray Tune ``param_space``: the sampled params as Tune domains (``grid_search`` lists for a grid
        space), the fixed values as constants."""
        if self.sampler == "grid":
            from ray import tune

            return {**{p.name: tune.grid_search(list(p.choices)) for p in self.params}, **dict(self.fixed)}
        return {**{p.name: p.to_ray() for p in self.params}, **dict(self.fixed)}

    def trial_values(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """What a trial builds from: the sampled values over the fixed ones (and the base a family scales from)."""
        return {**({"base": self.base} if self.base else {}), **dict(self.fixed), **dict(sampled)}


def builtin_space_path(name: str) -> Path:
    """The path of a space shipped with the toolkit (``cmt_compound`` -> ``search_spaces/cmt_compound.yaml``)."""
    return Path(__file__).with_name(f"{name}.yaml")


def _fail(source: str, key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{source}: {key}={value!r} is not allowed; allowed: {allowed}")


def _number(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, key, value, "a finite number")
    return float(value)


def _param(source: str, name: str, spec: Any) -> Param:
    key = f"params.{name}"
    if not isinstance(spec, Mapping):
        raise _fail(source, key, spec,
                    "a mapping like {type: float, low: 0, high: 1} or {type: categorical, choices: [...]}")
    kind = spec.get("type")
    if kind not in _PARAM_TYPES:
        raise _fail(source, f"{key}.type", kind, ", ".join(_PARAM_TYPES))
    extra = set(spec) - {"type", "low", "high", "step", "log", "choices"}
    if extra:
        raise _fail(source, f"{key}.{sorted(extra)[0]}", spec[sorted(extra)[0]], "type, low, high, step, log, choices")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(source, f"{key}.choices", choices, "a non-empty list")
        for i, c in enumerate(choices):
            if not isinstance(c, (str, int, float, bool)) and c is not None:
                raise _fail(source, f"{key}.choices[{i}]", c, "strings, numbers, booleans or null")
        return Param(name, kind, choices=tuple(choices))
    low, high = _number(source, f"{key}.low", spec.get("low")), _number(source, f"{key}.high", spec.get("high"))
    if not low <= high:
        raise _fail(source, f"{key}.high", spec.get("high"), f"a number >= low ({spec.get('low')})")
    step = spec.get("step")
    if step is not None and _number(source, f"{key}.step", step) <= 0:
        raise _fail(source, f"{key}.step", step, "a number > 0")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise _fail(source, f"{key}.log", log, "true or false (true needs low > 0)")
    if log and step is not None and not (kind == "int" and float(step) == 1):
        raise _fail(source, f"{key}.step", step, "no step with log: true (Optuna samples log ranges unstepped)")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise _fail(source, key, spec, "integer low, high and step for type int")
    return Param(name, kind, low, high, None if step is None else float(step), log)


def _budget(source: str, spec: Any) -> Budget:
    if spec is None:
        return Budget()
    if not isinstance(spec, Mapping):
        raise _fail(source, "budget", spec, "a mapping with max_macs, max_params, max_latency_ms")
    unknown = set(spec) - {"max_macs", "max_params", "max_latency_ms"}
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(source, f"budget.{key}", spec[key], "keys max_macs, max_params, max_latency_ms")
    try:
        return Budget(
            max_macs=None if spec.get("max_macs") is None else parse_count(spec["max_macs"], "budget.max_macs"),
            max_params=None if spec.get("max_params") is None else parse_count(spec["max_params"], "budget.max_params"),
            max_latency_ms=None if spec.get("max_latency_ms") is None
            else parse_latency_ms(spec["max_latency_ms"], "budget.max_latency_ms"),
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def space_from_dict(data: Any, source: str = "<dict>") -> SearchSpace:
    """Validate a parsed space (see the module docstring) and return it."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a search space must be a mapping with family and params, "
                         f"got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(source, key, data[key], f"top-level keys {', '.join(sorted(_TOP_KEYS))}")
    from cmt_scale.proxy import family_names, get_family

    family = data.get("family")
    if family not in family_names():
        raise _fail(source, "family", family, ", ".join(family_names()))
    params = data.get("params") or {}
    if not isinstance(params, Mapping) or not params:
        raise _fail(source, "params", data.get("params"), "a non-empty mapping of name -> distribution")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise _fail(source, "fixed", fixed, "a mapping of name -> value")
    overlap = set(params) & set(fixed)
    if overlap:
        key = sorted(overlap)[0]
        raise _fail(source, f"fixed.{key}", fixed[key], "a name that is not also in params")
    base = data.get("base")
    if "base" in get_family(family).keys:  # a family scaled from a preset
        try:
            get_preset(base or "")
        except ValueError as err:
            raise ValueError(f"{source}: base={base!r}: {err}") from None
    elif base is not None:
        scaled = [name for name in family_names() if "base" in get_family(name).keys]
        raise _fail(source, "base", base, f"no base (only {', '.join(scaled)} scales from one)")
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _fail(source, "sampler", sampler, ", ".join(SAMPLERS))
    space = SearchSpace(family, tuple(_param(source, str(n), s) for n, s in params.items()), dict(fixed),
                        _budget(source, data.get("budget")), base, source, sampler)
    if sampler == "grid":
        numeric = next((p for p in space.params if p.type != "categorical"), None)
        if numeric is not None:
            raise _fail(source, f"params.{numeric.name}.type", numeric.type,
                        "categorical (sampler: grid lists choices)")
    _check_family_keys(space)
    return space


def _check_family_keys(space: SearchSpace) -> None:
    """Every key is one the family's registry entry (or every family) takes, and the family's required ones
    are there."""
    from cmt_scale.proxy import COMMON_KEYS, get_family

    family = get_family(space.family)
    allowed = family.keys | COMMON_KEYS
    for name in [p.name for p in space.params] + list(space.fixed):
        if name not in allowed:
            raise _fail(space.source, name, name, f"for family {space.family}: {', '.join(sorted(allowed)[:12])}"
                        + (" ..." if len(allowed) > 12 else ""))
    names = frozenset({p.name for p in space.params} | set(space.fixed))
    missing = family.check_space(names, space.fixed, {p.name: p.choices for p in space.params
                                                      if p.type == "categorical"})
    if missing:
        raise _fail(space.source, *missing)


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Load and validate a space file (or a built-in one by name: ``cmt_compound``, ``cmt_free``, ``deit``,
    ``efficientnet``)."""
    import yaml

    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = builtin_space_path(str(path_or_name))
    if not path.is_file():
        raise ValueError(f"search space {str(path_or_name)!r} not found; allowed: a YAML file or one of "
                         f"{', '.join(_builtin_names())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML (safe subset, no object tags): {first}") from None
    # A shipped space is named by its place in the toolkit, not by this machine's path to it.
    shipped = path.resolve().parent == builtin_space_path("x").resolve().parent
    return space_from_dict(data, f"search_spaces/{path.name}" if shipped else str(path))


def _builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_space_path("x").parent.glob("*.yaml") if p.stem != "recipes")
