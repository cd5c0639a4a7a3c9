"""`CMTConfig`: one frozen value that is the whole CMT architecture.

Everything else in the toolkit (the model builder, both cost models, the compound rule, the solver and
the searches) takes a `CMTConfig` and nothing else, so a family member is data that can be hashed,
compared, saved as JSON and rebuilt anywhere. This module imports no torch, so configs can be made,
validated and costed in a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["CMTConfig"]

_TUPLE_FIELDS = ("embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios")


def _is_int(value: Any) -> bool:
    # bool is an int subclass; a depth of True is a typo, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class CMTConfig:
    """The architecture of one CMT (Guo et al., CVPR 2022), validated on construction.

    The network: a conv stem (three 3x3 convs, the first with stride 2, each followed by GELU and
    BatchNorm), then one stage per entry of the per-stage tuples, each stage being a 2x2 stride-2
    patch-merging conv + LayerNorm and ``depths[i]`` CMT blocks (LPU, lightweight MHSA with a relative
    position bias, IRFFN), then a 1x1 conv to ``fc_dim`` + BN + Swish, global average pooling, dropout
    and a linear classifier. The number of stages is the length of the tuples (the paper uses four).

    Args:
        img_size: the square input resolution the model is built for (the relative position biases are
            sized for it; other resolutions still run, by interpolating them). A multiple of
            ``2 ** (num_stages + 1)``.
        in_chans: input image channels.
        num_classes: classifier outputs; 0 builds the model without a classifier.
        stem_channels: width of the three stem convs.
        embed_dims: width of each stage.
        depths: number of CMT blocks in each stage.
        num_heads: attention heads in each stage; each width must be a multiple of its head count.
        mlp_ratios: IRFFN expansion ratio of each stage; the hidden width is ``int(dim * ratio)``
            (truncated, as in the official code: CMT-Ti's 46 * 3.6 gives 165).
        sr_ratios: K/V spatial reduction ``k`` of each stage (a k x k depthwise conv of stride k); each
            stage's token grid must be a multiple of it.
        fc_dim: width of the 1x1 conv before pooling.
        qkv_bias: whether the query, key and value projections have a bias.
        drop_rate: dropout before the classifier (the official code's ``dp``).
        drop_path_rate: stochastic-depth rate of the last block, growing linearly from 0 over all blocks.

    Example:
        >>> from scaling import CMTConfig
        >>> cfg = CMTConfig(img_size=160, stem_channels=16, embed_dims=(46, 92, 184, 368),
        ...                 depths=(2, 2, 10, 2), num_heads=(1, 2, 4, 8), mlp_ratios=(3.6,) * 4,
        ...                 sr_ratios=(8, 4, 2, 1))
        >>> cfg.hidden_dims
        (165, 331, 662, 1324)
        >>> CMTConfig.from_json(cfg.to_json()) == cfg
        True
    """

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    stem_channels: int
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    sr_ratios: tuple[int, ...]
    fc_dim: int = 1280
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name}={value!r} must be a sequence with one entry per stage")
            object.__setattr__(self, name, tuple(value))
        # A float that is a whole number (1e3, from JSON or YAML) is accepted as an int.
        for name in ("img_size", "in_chans", "num_classes", "stem_channels", "fc_dim"):
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))
        for name in ("embed_dims", "depths", "num_heads", "sr_ratios"):
            object.__setattr__(
                self, name, tuple(_as_int(f"{name}[{i}]", v) for i, v in enumerate(getattr(self, name)))
            )
        self._validate()

    # ----------------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        n = len(self.embed_dims)
        if n == 0:
            raise ValueError("embed_dims=() must have at least one stage")
        for name in _TUPLE_FIELDS:
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries {getattr(self, name)!r}; every "
                    f"per-stage field must have {n} (one per stage, as embed_dims)"
                )
        _require(self.in_chans >= 1, "in_chans", self.in_chans, "an integer >= 1")
        _require(self.num_classes >= 0, "num_classes", self.num_classes, "an integer >= 0")
        _require(self.stem_channels >= 1, "stem_channels", self.stem_channels, "an integer >= 1")
        _require(self.fc_dim >= 1, "fc_dim", self.fc_dim, "an integer >= 1")
        _require(isinstance(self.qkv_bias, bool), "qkv_bias", self.qkv_bias, "True or False")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            _require(_is_number(value) and 0.0 <= value < 1.0, name, value, "a number in [0, 1)")
        stride = self.total_stride
        _require(
            self.img_size >= stride and self.img_size % stride == 0,
            "img_size",
            self.img_size,
            f"a positive multiple of 2**(stages+1) = {stride} for {n} stages",
        )
        for i in range(n):
            dim, heads, depth = self.embed_dims[i], self.num_heads[i], self.depths[i]
            ratio, sr = self.mlp_ratios[i], self.sr_ratios[i]
            _require(dim >= 1, f"embed_dims[{i}]", dim, "an integer >= 1")
            _require(heads >= 1, f"num_heads[{i}]", heads, "an integer >= 1")
            _require(depth >= 1, f"depths[{i}]", depth, "an integer >= 1")
            if dim % heads:
                raise ValueError(
                    f"embed_dims[{i}]={dim} is not divisible by num_heads[{i}]={heads}; "
                    f"allowed: a multiple of {heads}"
                )
            _require(
                _is_number(ratio) and ratio > 0 and math.isfinite(dim * ratio) and dim * ratio < 2**31
                and int(dim * ratio) >= 1,
                f"mlp_ratios[{i}]",
                ratio,
                f"a number > 0 with 1 <= int(embed_dims[{i}] * ratio) < 2**31",
            )
            grid = self.grid_size(i)
            if sr < 1 or grid % sr:
                raise ValueError(
                    f"sr_ratios[{i}]={sr} does not divide stage {i}'s token grid {grid}x{grid} "
                    f"(img_size={self.img_size}); allowed: a divisor of {grid}"
                )

    # ---------------------------------------------------------------------------- derived figures
    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    @property
    def total_stride(self) -> int:
        """Input pixels per final-grid cell: the stem halves once, each stage halves once more."""
        return 2 ** (self.num_stages + 1)

    @property
    def hidden_dims(self) -> tuple[int, ...]:
        """IRFFN hidden width per stage, truncated as the official code does (``int(dim * ratio)``)."""
        return tuple(int(d * r) for d, r in zip(self.embed_dims, self.mlp_ratios))

    def grid_size(self, stage: int, img_size: int | None = None) -> int:
        """Side of stage ``stage``'s token grid for a square input of ``img_size`` (default: the config's)."""
        return (self.img_size if img_size is None else img_size) // 2 ** (stage + 2)

    @property
    def total_depth(self) -> int:
        return sum(self.depths)

    def replace(self, **changes: Any) -> CMTConfig:
        """A validated copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CMTConfig:
        """Inverse of `to_dict`; unknown keys are an error, so a typo never silently falls back to a default."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a CMTConfig must be built from a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CMTConfig field(s) {unknown}; allowed: {sorted(known)}")
        required = {f.name for f in fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"CMTConfig is missing required field(s) {missing}")
        return cls(**dict(data))

    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> CMTConfig:
        """Load from JSON text or from a JSON file's path (as written by `to_json` or ``cmt-scale --save``)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ValueError(f"config file {str(path)!r} does not exist (expected a JSON file or JSON text)")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from None
        return cls.from_dict(data)


def _as_int(name: str, value: Any) -> int:
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{name}={value!r} must be an integer")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
