"""Proxy training: real data sets, one fair protocol for CMT, DeiT and EfficientNet, fast on a CPU.

A package of its own because training is a responsibility apart from the family (`scaling`)
and from searching (`cmt_scale.search`): a search hands it a config and a protocol and gets a `TrialResult` back.
It never imports Optuna or Ray.
"""

from ._data import DATASET_NAMES, DatasetNotFound, ProxyData, StreamedFolder, data_for, load_dataset
from ._family import COMMON_KEYS, Family, Member, family_names, get_family, register_family
from ._family_baselines import build_baseline, checked_deit_patch, deit_patch_size
from ._family_cmt import compound_member, compound_values
from ._protocol import DEFAULT_PROTOCOL, LOW_RES_RULES, ProxyProtocol
from ._recipe import RECIPE_KEYS, Recipe, parse_recipes
from ._state import TrialState
from ._train import TrialPruned, TrialResult, resolve_device, train_and_evaluate

__all__ = [
    "COMMON_KEYS",
    "Family",
    "LOW_RES_RULES",
    "Member",
    "RECIPE_KEYS",
    "Recipe",
    "baseline_families",
    "compound_member",
    "compound_values",
    "family_names",
    "get_family",
    "parse_recipes",
    "register_family",
    "DATASET_NAMES",
    "DEFAULT_PROTOCOL",
    "DatasetNotFound",
    "ProxyData",
    "ProxyProtocol",
    "TrialPruned",
    "TrialResult",
    "TrialState",
    "build_baseline",
    "checked_deit_patch",
    "deit_patch_size",
    "data_for",
    "load_dataset",
    "StreamedFolder",
    "resolve_device",
    "train_and_evaluate",
]


def baseline_families() -> tuple[str, ...]:
    """The registered families with named members (what ``cmt-scale baselines`` trains)."""
    return tuple(name for name in family_names() if get_family(name).members)
