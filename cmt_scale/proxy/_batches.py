"""Batches for training and evaluation, from one of two sources behind one interface.

- `TensorSource`: the data set is in memory as ``uint8`` tensors; every batch is made by tensor ops
  (normalise, pad-crop-flip, grey to 3 channels). No per-sample PIL work: the fastest path on a CPU.
- `LoaderSource`: a `torch.utils.data.DataLoader` with worker processes and timm's transforms
  (`timm.data.create_transform`), reading a `StreamedFolder` from disk, or the in-memory images when the
  protocol names one of timm's per-sample augmentations (random-resized crop, RandAugment...).

The two sources give the same batches for the same protocol where that is possible: a loader without a
timm augmentation resizes and centre-crops each image as the in-memory decode does, then applies the
same tensor augmentation to the batch. Mixup and CutMix (timm's `Mixup`) act on either source's batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmt_scale.imagedecode import load_rgb

from ._data import ProxyData, StreamedFolder
from ._folder import decode_workers, seed_worker, worker_context
from ._protocol import AUGMENTS_ALLOWED, TENSOR_AUGMENTS, ProxyProtocol

__all__ = ["LoaderSource", "TensorSource", "make_source"]

log = logging.getLogger("cmt_scale.data")

_PREPARED: dict[tuple[str, str], tuple[int, ProxyData, torch.Tensor, torch.Tensor]] = {}


def resized(data: ProxyData, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images resized once to the protocol resolution (uint8, cached): no resize per batch.

    One resolution is kept per data set (by name) and split: studies that scale resolution would otherwise
    keep a resized copy of the whole split per member (60k images at 192 px is 6.6 GB)."""
    key = (data.name, split)
    cached = _PREPARED.get(key)
    if cached is None or cached[0] != resolution or cached[1] is not data:
        images = data.train_images if split == "train" else data.test_images
        labels = data.train_labels if split == "train" else data.test_labels
        if images.shape[-1] != resolution or images.shape[-2] != resolution:
            chunks = [
                F.interpolate(images[i : i + 4096].float(), size=(resolution, resolution), mode="bilinear",
                              align_corners=False, antialias=True).round_().clamp_(0, 255).to(torch.uint8)
                for i in range(0, len(images), 4096)
            ]
            images = torch.cat(chunks)
        _PREPARED[key] = cached = (resolution, data, images, labels)
    return cached[2], cached[3]


class _Finish:
    """What every batch gets last: the protocol's tensor augmentation, grey to 3 channels, channels-last."""

    def __init__(self, protocol: ProxyProtocol, in_chans: int) -> None:
        self.protocol, self.in_chans = protocol, in_chans

    def __call__(self, x: torch.Tensor, augment: bool, gen: torch.Generator | None) -> torch.Tensor:
        if augment and self.protocol.augment in ("crop", "crop-flip"):
            x = self._augment(x, gen)
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last)

    def _augment(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad))  # zero = the data set's mean after normalisation
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        out = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
        if self.protocol.augment == "crop-flip":
            flip = torch.rand(n, generator=gen) < 0.5
            out[flip] = out[flip].flip(-1)
        return out


class TensorSource:
    """Batches cut from in-memory ``uint8`` tensors resized once to the protocol's resolution."""

    def __init__(self, data: ProxyData, protocol: ProxyProtocol, train_idx: torch.Tensor, val_idx: torch.Tensor,
                 in_chans: int, device: torch.device) -> None:
        self.data, self.protocol, self.device, self.train_idx = data, protocol, device, train_idx
        self.images, self.labels = resized(data, "train", protocol.resolution)
        self.val = (self.images[val_idx], self.labels[val_idx])
        self.mean = torch.tensor(data.mean).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(data.std).view(1, -1, 1, 1).to(device)
        self.finish = _Finish(protocol, in_chans)
        self.skipped = len(data.skipped)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_idx) / self.protocol.batch_size)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255)
        return (x - self.mean) / self.std

    def train_batches(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=gen)]
        for i in range(0, len(order), self.protocol.batch_size):
            idx = order[i : i + self.protocol.batch_size]
            x = self.finish(self._normalised(self.images[idx]), True, gen)
            yield x, self.labels[idx].to(self.device)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.val if split == "val" else resized(self.data, "test", self.protocol.resolution)
        step = self.protocol.batch_size * 2
        for i in range(0, len(labels), step):
            yield self.finish(self._normalised(images[i : i + step]), False, None), labels[i : i + step].to(self.device)

    def close(self) -> None:
        pass


class _Samples(torch.utils.data.Dataset):
    """(transformed image, label, path or None) for positions into ``indices``: read from a file of a
    `StreamedFolder` or from the in-memory ``uint8`` images. An unreadable file yields ``None`` and its
    name, so the batch goes on without it."""

    def __init__(self, data: ProxyData | StreamedFolder, split: str, indices: torch.Tensor, transform) -> None:
        self.data, self.indices, self.transform = data, indices.tolist(), transform
        self.streamed = isinstance(data, StreamedFolder)
        if self.streamed:
            self.items = data.index.train if split == "train" else data.index.test
        else:
            self.images = data.train_images if split == "train" else data.test_images
            self.labels = data.train_labels if split == "train" else data.test_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[Any, int, str | None]:
        from PIL import Image

        i = self.indices[k]
        if self.streamed:
            path, label = self.items[i]
            image = load_rgb(path)
            if isinstance(image, str):
                return None, label, f"{path} ({image})"
            return self.transform(image), label, None
        pixels = self.images[i].numpy()
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).convert("RGB")
        return self.transform(image), int(self.labels[i]), None


class _PhaseBatches(torch.utils.data.Sampler):
    """The index batches of one loader over train, val and test laid end to end (a `ConcatDataset`), for the
    phase set before each pass: a training epoch in the order drawn from the trainer's generator, exactly as
    `TensorSource` draws it (the same protocol and seed see the same images in the same order on either
    source), in batches of ``batch_size``; or one evaluation split in order, in batches of twice that."""

    def __init__(self, sizes: dict[str, int], batch_size: int) -> None:
        self.sizes, self.batch_size = sizes, batch_size
        self.offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()]).tolist()))
        self.phase, self.gen = "train", None

    def _step(self, phase: str) -> int:
        return self.batch_size * (1 if phase == "train" else 2)

    def batches_in(self, phase: str) -> int:
        """Batches in one pass of ``phase``."""
        return math.ceil(self.sizes[phase] / self._step(phase))

    def __len__(self) -> int:
        return self.batches_in(self.phase)

    def __iter__(self):
        n, step = self.sizes[self.phase], self._step(self.phase)
        order = (torch.randperm(n, generator=self.gen).tolist() if self.phase == "train"
                 else list(range(self.offsets[self.phase], self.offsets[self.phase] + n)))
        for i in range(0, n, step):
            yield order[i : i + step]


def _collate(batch: list[tuple[Any, int, str | None]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    kept = [(x, y) for x, y, bad in batch if bad is None]
    skipped = [bad for _, _, bad in batch if bad is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), skipped


def timm_transform(protocol: ProxyProtocol, mean: tuple[float, ...], std: tuple[float, ...], training: bool):
    """timm's transform for one image: for training with a timm augmentation, random-resized crop, flip
    and the named policy (``rrc-flip`` names none); otherwise resize and centre-crop to the resolution."""
    from timm.data import create_transform

    if training and protocol.augment not in TENSOR_AUGMENTS:
        policy = None if protocol.augment == "rrc-flip" else protocol.augment
        return create_transform(protocol.resolution, is_training=True, auto_augment=policy, color_jitter=0.0,
                                interpolation="bilinear", mean=mean, std=std)
    return create_transform(protocol.resolution, is_training=False, crop_pct=1.0, interpolation="bilinear",
                            mean=mean, std=std)


def check_augment(protocol: ProxyProtocol) -> None:
    """A one-line ``ValueError`` for an augmentation name timm cannot build (a mistyped policy)."""
    if protocol.augment in TENSOR_AUGMENTS:
        return
    try:
        timm_transform(protocol, (0.5,) * 3, (0.5,) * 3, True)
    except Exception as err:  # timm raises assorted errors for a malformed policy string
        raise ValueError(f"augment={protocol.augment!r} is not allowed: timm cannot build it ({type(err).__name__}: "
                         f"{err}); allowed: {AUGMENTS_ALLOWED}") from None


class LoaderSource:
    """Batches from a DataLoader with ``protocol.workers`` processes (default one per core) and timm's
    transforms, pinned for a GPU; unreadable files are skipped with a warning naming each, and counted."""

    def __init__(self, data: ProxyData | StreamedFolder, protocol: ProxyProtocol, train_idx: torch.Tensor,
                 val_idx: torch.Tensor, in_chans: int, device: torch.device) -> None:
        self.data, self.protocol, self.device = data, protocol, device
        mean = data.mean if len(data.mean) == 3 else data.mean * 3  # images reach the transform as RGB
        std = data.std if len(data.std) == 3 else data.std * 3
        self.finish = _Finish(protocol, in_chans)
        self.workers = decode_workers(protocol.workers)
        self.skipped = len(getattr(data, "skipped", ()))
        self._seen_bad: set[str] = set()
        evaluate = timm_transform(protocol, mean, std, False)
        splits = {"train": _Samples(data, "train", train_idx, timm_transform(protocol, mean, std, True)),
                  "val": _Samples(data, "train", val_idx, evaluate),
                  "test": _Samples(data, "test", torch.arange(len(data.test_labels)), evaluate)}
        self.batches = _PhaseBatches({name: len(samples) for name, samples in splits.items()}, protocol.batch_size)
        self.loader = self._loader(torch.utils.data.ConcatDataset(list(splits.values())))

    def _loader(self, samples: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        """One loader and one set of persistent workers for training and evaluation alike. A loader per split
        would fork its own workers from the trainer at every evaluation, beside the idle training workers:
        measured, CMT-Ti at 224 px streaming with 2 workers peaked 0.4 GiB higher while evaluating."""
        return torch.utils.data.DataLoader(
            samples, batch_sampler=self.batches, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            # its own generator for the workers' seeds: drawing them from torch's global one would change the
            # model's dropout draws, and the two sources would no longer train alike
            generator=torch.Generator().manual_seed(self.protocol.seed + 2),
            persistent_workers=self.workers > 0, worker_init_fn=seed_worker,
            multiprocessing_context=worker_context() if self.workers else None,
            prefetch_factor=4 if self.workers > 0 else None)

    def steps_per_epoch(self) -> int:
        return self.batches.batches_in("train")

    def _pass(self, phase: str, augment: bool, gen) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of ``phase``; the phase is set when the pass starts, since the loader draws its first
        batches of indices then (one pass at a time: a new pass resets the workers' queue)."""
        self.batches.phase, self.batches.gen = phase, gen
        for x, y, skipped in self.loader:
            for bad in skipped:
                if bad not in self._seen_bad:
                    self._seen_bad.add(bad)
                    self.skipped += 1
                    log.warning("skipped unreadable image %s", bad)
            if len(y):
                x = x.to(self.device, non_blocking=True)
                yield self.finish(x, augment, gen), y.to(self.device, non_blocking=True)

    def train_batches(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._pass("train", True, gen)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._pass(split, False, None)

    def close(self) -> None:
        """Drops the loader, which ends its persistent workers now rather than at the next collection."""
        self.loader = None


def uses_loader(data: ProxyData | StreamedFolder, protocol: ProxyProtocol) -> bool:
    """Whether batches come through the DataLoader: for a streamed folder, or a per-sample timm augmentation."""
    return isinstance(data, StreamedFolder) or protocol.augment not in TENSOR_AUGMENTS


def make_source(data: ProxyData | StreamedFolder, protocol: ProxyProtocol, train_idx: torch.Tensor,
                val_idx: torch.Tensor, in_chans: int, device: torch.device) -> TensorSource | LoaderSource:
    """The batch source ``protocol`` needs for ``data`` (see the module docstring)."""
    kind = LoaderSource if uses_loader(data, protocol) else TensorSource
    return kind(data, protocol, train_idx, val_idx, in_chans, device)


def mixer(protocol: ProxyProtocol, num_classes: int):
    """timm's `Mixup` for the protocol's mixup/cutmix alphas (``None`` when both are 0); it also applies the
    label smoothing, so the loss is a soft-target cross-entropy."""
    if not (protocol.mixup or protocol.cutmix):
        return None
    from timm.data import Mixup

    np.random.seed(protocol.seed)  # timm's Mixup draws from NumPy's global generator
    return Mixup(mixup_alpha=protocol.mixup, cutmix_alpha=protocol.cutmix, label_smoothing=protocol.label_smoothing,
                 num_classes=num_classes)
