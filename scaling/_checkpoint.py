"""Loading the official CMT release's checkpoints into our modules, safely.

The official code names every stage's parts separately (``stem_conv1..3``, ``patch_embed_a..d``,
``relative_pos_a..d``, ``blocks_a..d``, ``_fc``, ``_bn``, ``head``) and writes its 1x1 convs as 4-D
conv weights; our model has one stage class in a list and uses `nn.Linear` for the 1x1 convs.
`checkpoint_filter_fn` (timm's hook for this) renames and reshapes; nothing else changes, so a loaded
model computes the official logits.

Checkpoints are read with ``torch.load(weights_only=True)``: no code in a downloaded file is ever run.
The official training script also pickles its ``argparse.Namespace`` under ``'args'``, so exactly that
class is allow-listed; anything else that needs unpickling is refused with a message that names it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._position_bias import resize_position_bias

__all__ = ["checkpoint_filter_fn", "load_official_checkpoint", "read_checkpoint", "official_checkpoint_globals"]

_STAGE_KEY = re.compile(r"^(patch_embed|relative_pos|blocks)_([a-z])(.*)$")
_STEM_KEY = re.compile(r"^stem_(conv|norm)(\d+)\.(.*)$")

# Official block sub-module names -> ours (after ``blocks_X.N.``).
_BLOCK_RENAMES = (
    ("proj.", "lpu."),
    ("attn.sr.0.", "attn.sr."),
    ("attn.sr.1.", "attn.sr_norm."),
    ("mlp.conv1.0.", "mlp.fc1."),
    ("mlp.conv1.2.", "mlp.norm1."),
    ("mlp.proj_bn.", "mlp.norm2."),
    ("mlp.proj.", "mlp.dwconv."),
    ("mlp.conv2.0.", "mlp.fc2."),
    ("mlp.conv2.1.", "mlp.norm3."),
)
_HEAD_RENAMES = (("_fc.", "head_fc."), ("_bn.", "head_norm."))
# Official 1x1 convs that are nn.Linear here: their weights lose the trailing 1x1.
_LINEAR_FROM_CONV = re.compile(r"(mlp\.fc1|mlp\.fc2|head_fc)\.weight$")


@contextlib.contextmanager
def official_checkpoint_globals() -> Iterator[None]:
    """Allow-list the one non-tensor class the official checkpoints pickle (``argparse.Namespace``)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        yield


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file without executing any code from it, and return its state dict.

    Unwraps the usual containers (``'model'``, ``'state_dict'``, ``'model_ema'``) and DDP's ``module.``
    prefix. Raises `FileNotFoundError` for a missing file and `ValueError` for a file that would need
    anything but tensors, plain containers and ``argparse.Namespace`` to load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with official_checkpoint_globals():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "an object that is not a tensor or plain container"
        raise ValueError(
            f"refusing to load {str(path)!r}: unpickling it would need {what}, which is not allow-listed "
            "(only tensors, plain containers and argparse.Namespace are read; nothing in the file is executed)"
        ) from None
    return unwrap_state_dict(obj)


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The state dict inside a training checkpoint (``'model'``, ``'state_dict'``, ...), DDP prefixes removed."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def _rename_official(key: str) -> str:
    if match := _STEM_KEY.match(key):
        kind, index, rest = match.groups()
        return f"stem.{int(index) - 1}.{'conv' if kind == 'conv' else 'bn'}.{rest}"
    if match := _STAGE_KEY.match(key):
        kind, letter, rest = match.groups()
        stage = f"stages.{ord(letter) - ord('a')}"
        if kind == "patch_embed":
            return f"{stage}.downsample{rest}"
        if kind == "relative_pos":
            return f"{stage}.relative_pos"
        block, _, inner = rest.lstrip(".").partition(".")
        for old, new in _BLOCK_RENAMES:
            if inner.startswith(old):
                inner = new + inner[len(old):]
                break
        return f"{stage}.blocks.{block}.{inner}"
    for old, new in _HEAD_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _square_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"a relative position bias over {tokens} tokens is not a square grid")
    return side


def _fit_position_bias(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resample a checkpoint's bias to the model's grid (a model built at another resolution)."""
    if value.shape == target.shape:
        return value
    if value.shape[0] != target.shape[0]:
        raise ValueError(f"relative position bias has {value.shape[0]} heads, the model {target.shape[0]}")
    q, k = _square_side(value.shape[1]), _square_side(value.shape[2])
    nq, nk = _square_side(target.shape[1]), _square_side(target.shape[2])
    return resize_position_bias(value, (q, q), (k, k), (nq, nq), (nk, nk))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """Map an official-layout (or our own) CMT state dict onto ``model``'s parameter names and shapes.

    timm calls this with ``pretrained_filter_fn``; `load_official_checkpoint` calls it directly.
    Relative position biases are resampled when the model was built for another resolution.
    """
    state_dict = unwrap_state_dict(state_dict)
    targets = model.state_dict()
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new_key = _rename_official(key)
        if _LINEAR_FROM_CONV.search(new_key) and value.ndim == 4:
            value = value.flatten(1)
        if new_key.endswith("relative_pos") and new_key in targets:
            value = _fit_position_bias(value, targets[new_key])
        out[new_key] = value
    return out


def load_official_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> Any:
    """Load an official CMT release checkpoint (e.g. ``cmt_small.pth``) into ``model``.

    Example:
        >>> model = timm.create_model("cmt_s")                     # doctest: +SKIP
        >>> load_official_checkpoint(model, "cmt_small.pth")      # doctest: +SKIP
    """
    return model.load_state_dict(checkpoint_filter_fn(read_checkpoint(path), model), strict=strict)
