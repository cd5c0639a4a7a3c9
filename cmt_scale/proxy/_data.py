"""Proxy data sets by name, loaded once into memory as uint8 tensors.

Small proxy sets (Fashion-MNIST, CIFAR, digits) fit in memory many times over, so they are decoded once
into ``uint8`` tensors and every batch is made by tensor ops (resize, grey -> 3 channels, normalise,
augment): no per-sample PIL work in the training loop. Names:

- ``fashion-mnist``: the idx files of Zalando's Fashion-MNIST (MIT). Looked for in ``data_root`` (and
  torchvision's ``<root>/FashionMNIST/raw`` layout below it) when one is given, and only there; otherwise
  in ``$CMT_SCALE_DATA`` and Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
  With ``download=True`` torchvision fetches it.
- ``cifar10``, ``cifar100``: torchvision's loaders (they download when allowed and online).
- ``imagefolder:PATH``: class folders of images; ``PATH/train`` and ``PATH/val`` (or ``test``) when
  present, else one folder split 80/20. Decoded once at ``load_size`` in parallel and cached on disk when
  it fits the memory budget, streamed from disk otherwise (`_folder.py`).
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images; no download ever), for tests.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._folder import StreamedFolder

if TYPE_CHECKING:
    from ._protocol import ProxyProtocol

__all__ = ["DATASET_NAMES", "DatasetNotFound", "ProxyData", "StreamedFolder", "data_for", "default_data_memory_gb",
           "load_dataset"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "digits", "imagefolder:PATH")


class DatasetNotFound(FileNotFoundError):
    """A data set that is not on this machine: the message says where it looked and how to get it."""


@dataclass(frozen=True)
class ProxyData:
    """A data set in memory: ``uint8`` images ``N x C x H x W`` and ``int64`` labels, train and test."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: tuple[str, ...] = ()  # unreadable files left out (image folders)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the training images in [0, 1] (the normalisation is per data set)."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def _make(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          num_classes: int) -> ProxyData:
    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, copy=True))  # idx buffers are read-only; torch wants writable memory
        return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()  # NHW -> N1HW, NHWC -> NCHW

    train_images = images(train_x)
    mean, std = _channel_stats(train_images)
    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.int64)  # a copy: idx buffers are read-only

    return ProxyData(name, train_images, labels(train_y), images(test_x), labels(test_y), num_classes, mean, std)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format): magic, dims, then raw uint8 data; gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist(root: str | None, download: bool) -> ProxyData:
    # A root the user names is the only place looked in: silently training on another copy would hide a typo.
    named = root or os.environ.get("CMT_SCALE_DATA")
    places = [q for p in ([Path(named)] if named else []) for q in (p, p / "fashion-mnist", p / "FashionMNIST" / "raw")]
    if not root:
        places.append(DEBIAN_FASHION_MNIST)
    for folder in places:
        files = [_find_idx(folder, stem) for stem in _FASHION_FILES]
        if all(files):
            arrays = [_read_idx(f) for f in files]  # type: ignore[arg-type]
            return _make("fashion-mnist", arrays[0], arrays[1], arrays[2], arrays[3], 10)
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path(root or "data")
        train, test = (FashionMNIST(str(target), train=t, download=True) for t in (True, False))
        return _make("fashion-mnist", train.data.numpy(), train.targets.numpy(), test.data.numpy(),
                     test.targets.numpy(), 10)
    raise DatasetNotFound(
        "data set 'fashion-mnist' not found: looked for train-images-idx3-ubyte.gz and the three other idx files "
        f"in {', '.join(str(p) for p in places)}; get it with `apt-get install dataset-fashion-mnist` (Debian), "
        "pass --data-root DIR holding the idx files, or allow a torchvision download"
    )


def _cifar(name: str, root: str | None, download: bool) -> ProxyData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, classes = (CIFAR10, 10) if name == "cifar10" else (CIFAR100, 100)
    target = root or os.environ.get("CMT_SCALE_DATA") or "data"
    try:
        train, test = (cls(target, train=t, download=download) for t in (True, False))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFound(
            f"data set {name!r} not found in {target!r} ({err}); pass --data-root DIR holding torchvision's "
            f"{cls.base_folder}, or allow a download (needs internet)"
        ) from None
    return _make(name, train.data, np.array(train.targets), test.data, np.array(test.targets), classes)


def _digits() -> ProxyData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFound("data set 'digits' needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))  # fixed split: 2/3 train, 1/3 test
    cut = 2 * len(images) // 3
    train, test = order[:cut], order[cut:]
    return _make("digits", images[train], bunch.target[train], images[test], bunch.target[test], 10)


def _image_folder(path: str, load_size: int, memory_gb: float | None, workers: int | None
                  ) -> ProxyData | StreamedFolder:
    """The folder in memory (decoded in parallel, cached on disk) when its decoded size fits ``memory_gb``
    (default `default_data_memory_gb`), else streamed from disk (`_folder.py`)."""
    from ._folder import decode_folder, decoded_bytes, folder_stats, index_folder

    index = index_folder(path)
    budget = default_data_memory_gb() if memory_gb is None else memory_gb
    name = f"imagefolder:{path}"
    if decoded_bytes(index, load_size) > budget * 2**30:
        mean, std = folder_stats(index, load_size, workers)
        return StreamedFolder(name, index, _labels([label for _, label in index.train]),
                              _labels([label for _, label in index.test]), len(index.classes), mean, std,
                              load_size)
    decoded = decode_folder(index, load_size, workers)
    return ProxyData(name, torch.from_numpy(decoded["train_images"]), torch.from_numpy(decoded["train_labels"]),
                     torch.from_numpy(decoded["test_images"]), torch.from_numpy(decoded["test_labels"]),
                     len(index.classes), decoded["mean"], decoded["std"], decoded["skipped"])


def _labels(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values), dtype=torch.int64)


def default_data_memory_gb() -> float:
    """The default memory budget for a data set held in memory: a quarter of this machine's RAM (a search
    also needs memory for models, workers and the page cache)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30
    except (ValueError, OSError, AttributeError):
        return 4.0


_CACHE: dict[tuple, ProxyData] = {}


def data_for(protocol: ProxyProtocol) -> ProxyData | StreamedFolder:
    """The data set ``protocol`` trains on, held or streamed as its memory budget and workers say."""
    return load_dataset(protocol.dataset, protocol.data_root, protocol.download, load_size=protocol.resolution,
                        memory_gb=protocol.data_memory_gb, workers=protocol.workers)


def load_dataset(name: str, root: str | None = None, download: bool = False, load_size: int = 64,
                 memory_gb: float | None = None, workers: int | None = None) -> ProxyData | StreamedFolder:
    """The data set called ``name`` (see the module docstring), cached in memory per process.

    ``load_size`` matters only to an image folder (decoded at that size); the other data sets come at their
    own size whatever it is, so they are cached once. One copy per data set is kept: a new size replaces the
    folder's old one rather than piling up. An image folder whose decoded size exceeds ``memory_gb``
    (default: `default_data_memory_gb`) comes back as a `StreamedFolder`, read from disk while training;
    ``workers`` decode it (default: one per core).

    Raises `DatasetNotFound` (a `FileNotFoundError`) naming the data set, where it looked, and how to get it.
    """
    folder = name.startswith("imagefolder:")
    key = (name, root, (load_size, memory_gb) if folder else None)
    if key in _CACHE:
        return _CACHE[key]
    loaders: dict[str, Callable[[], ProxyData]] = {
        "fashion-mnist": lambda: _fashion_mnist(root, download),
        "cifar10": lambda: _cifar("cifar10", root, download),
        "cifar100": lambda: _cifar("cifar100", root, download),
        "digits": _digits,
    }
    if name.startswith("imagefolder:"):
        data = _image_folder(name.split(":", 1)[1], load_size, memory_gb, workers)
    elif name in loaders:
        data = loaders[name]()
    else:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    for stale in [k for k in _CACHE if k[:2] == key[:2]]:
        del _CACHE[stale]
    _CACHE[key] = data
    return data
