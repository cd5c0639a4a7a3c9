"""Proxy training: real data sets, one fair protocol for CMT, DeiT and EfficientNet, fast on a CPU.

A top-level package of its own because training is a responsibility apart from the family (`scaling`)
and from searching (`search`): a search hands it a config and a protocol and gets a `TrialResult` back.
It never imports Optuna or Ray.
"""

from ._baselines import BASELINE_FAMILIES, baseline_names, build_baseline, checked_deit_patch, deit_patch_size
from ._data import DATASET_NAMES, DatasetNotFound, ProxyData, load_dataset
from ._protocol import DEFAULT_PROTOCOL, ProxyProtocol
from ._train import TrialPruned, TrialResult, resolve_device, train_and_evaluate

__all__ = [
    "BASELINE_FAMILIES",
    "DATASET_NAMES",
    "DEFAULT_PROTOCOL",
    "DatasetNotFound",
    "ProxyData",
    "ProxyProtocol",
    "TrialPruned",
    "TrialResult",
    "baseline_names",
    "build_baseline",
    "checked_deit_patch",
    "deit_patch_size",
    "load_dataset",
    "resolve_device",
    "train_and_evaluate",
]
