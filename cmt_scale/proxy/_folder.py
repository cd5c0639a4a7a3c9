"""Image folders: indexed once, then either decoded into memory (in parallel, cached on disk) or streamed.

A folder of a few thousand small images fits in memory many times over, and a batch made by tensor
ops from memory is the fastest thing a CPU can train on. A folder of 100k photographs does not: decoded
at 224 px it is 15 GB. So `load_image_folder` estimates the decoded size first and, above the memory
budget, returns a `StreamedFolder` (file paths and labels) that the trainer reads through a
`torch.utils.data.DataLoader` with workers and timm's transforms (`_stream.py`).

The in-memory path decodes with worker processes (`cmt_scale.imagedecode`) straight into one
preallocated ``uint8`` array, so its peak is about the decoded size (the earlier list-stack-copy-permute
chain peaked at about 9x). When the cache is on (the default), that array is a ``.npy`` file under
``$CMT_SCALE_CACHE`` (default ``~/.cache/cmt_scale/data``) named by a hash of the folder's file list,
sizes and times and the decode size: the second search on the same folder memory-maps it and starts at
once.

Unreadable images are skipped with a warning naming each file, and counted (``skipped``); a folder
without images, or train and validation folders with different classes, is one clear error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["IMAGE_EXTENSIONS", "FolderIndex", "StreamedFolder", "cache_dir", "decoded_bytes", "index_folder",
           "worker_context"]

log = logging.getLogger("cmt_scale.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_CACHE_FORMAT = 1  # bump when the cached arrays' layout or decoding changes
_STATS_SAMPLE = 2000  # images the per-folder mean/std is taken over (same sample on both paths)


@dataclass(frozen=True)
class FolderIndex:
    """A folder's images as (path, label) pairs: ``train`` and ``test`` (``PATH/train`` and ``PATH/val`` or
    ``PATH/test``; or one folder of class folders, split 80/20 with a fixed seed)."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    @property
    def key(self) -> str:
        """A hash of every file's relative path, size and modification time: equal keys, equal contents."""
        digest = hashlib.sha256()
        for path, label in self.train + self.test:
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, self.root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:20]


@dataclass(frozen=True)
class StreamedFolder:
    """An image folder too big for the memory budget: read from disk batch by batch (`_stream.py`). It has
    the label tensors and class count that splitting and checking need, but no images in memory."""

    name: str
    index: FolderIndex
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    load_size: int
    skipped: tuple[str, ...] = field(default=())

    @property
    def channels(self) -> int:
        return 3


def _class_folders(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:
        classes, class_to_idx = [], {}
    items = make_dataset(str(folder), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True) if classes else []
    if not items:
        raise ValueError(f"imagefolder:{folder} holds no images; allowed: a folder of class folders holding "
                         f"{', '.join(IMAGE_EXTENSIONS)} files")
    return classes, items


def index_folder(path: str | Path) -> FolderIndex:
    """Index ``path`` (see `FolderIndex`); no image is opened. One-line errors for a missing folder, a folder
    without images, and train and validation folders whose class folders differ."""
    from ._data import DatasetNotFound

    root = Path(path)
    if not root.is_dir():
        raise DatasetNotFound(f"data set 'imagefolder:{path}' not found: {str(root)!r} is not a folder of class "
                              "folders")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train = _class_folders(root / "train")
        test_classes, test = _class_folders(test_dir)
        if classes != test_classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise ValueError(f"imagefolder:{path}: the class folders of train and {test_dir.name} differ (only in "
                             f"train: {only_train}; only in {test_dir.name}: {only_test}); allowed: the same class "
                             "folders in both")
        return FolderIndex(root, tuple(classes), tuple(train), tuple(test))
    classes, items = _class_folders(root)
    order = np.random.default_rng(0).permutation(len(items))
    cut = int(0.8 * len(items))
    return FolderIndex(root, tuple(classes), tuple(items[i] for i in order[:cut]), tuple(items[i] for i in order[cut:]))


def decoded_bytes(index: FolderIndex, load_size: int) -> int:
    """Bytes of the folder decoded to RGB ``uint8`` at ``load_size`` x ``load_size``."""
    return (len(index.train) + len(index.test)) * 3 * load_size * load_size


def cache_dir() -> Path:
    """Where decoded folders are cached: ``$CMT_SCALE_CACHE/data`` or ``~/.cache/cmt_scale/data``."""
    base = os.environ.get("CMT_SCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cmt_scale")
    return Path(base) / "data"


def decode_workers(workers: int | None) -> int:
    """Workers for decoding or loading: ``workers`` or one per CPU core this process may use (at most 8)."""
    if workers is not None:
        return workers
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def worker_context() -> str | None:
    """The start method of data workers: ``fork`` on Linux, whatever the process's default is (a process
    started by ``spawn``, as a Ray or multiprocessing worker may be, would otherwise spawn its workers too,
    each importing torch again: measured 10-15x slower on a 1000-image decode); the platform's default
    elsewhere (fork is unsafe on macOS)."""
    import multiprocessing
    import sys

    return "fork" if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods() else None


def _decode_into(out: np.ndarray, items: Sequence[tuple[str, int]], size: int, workers: int, what: str) -> list[int]:
    """Decode ``items`` into ``out`` (N x 3 x size x size uint8, preallocated) with ``workers`` worker
    processes (`cmt_scale.imagedecode`; none: in this process); the indices of unreadable images, each
    warned about by name. Workers write into ``out``'s file when it is a memory map, else into a temporary
    one copied in afterwards."""
    from tqdm.auto import tqdm

    from cmt_scale.imagedecode import decode_rows

    paths = [path for path, _ in items]
    bad: list[int] = []
    with tqdm(total=len(items), desc=f"decoding {what}", unit="img", leave=False, disable=len(items) < 512) as bar:
        def report(message: dict[str, Any]) -> None:
            if "bad" in message:
                log.warning("skipped unreadable image %s (%s)", paths[message["bad"]], message["reason"])
                bad.append(message["bad"])
            else:
                bar.update(message["done"])

        if workers <= 0 or len(paths) < 256:
            decode_rows(out, paths, size, 0, len(paths), report)
        elif isinstance(out, np.memmap) and out.filename:
            out.flush()
            _decode_in_workers(Path(out.filename), paths, size, workers, report)
        else:
            with tempfile.TemporaryDirectory(prefix="cmt_scale_decode") as scratch:
                target = Path(scratch) / "images.npy"
                np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=out.shape).flush()
                _decode_in_workers(target, paths, size, workers, report)
                out[:] = np.load(target, mmap_mode="r")
    return sorted(bad)


def _decode_in_workers(target: Path, paths: Sequence[str], size: int, workers: int, report) -> None:
    """``workers`` processes of ``python -m cmt_scale.imagedecode``, each on a contiguous share of the rows,
    their JSON lines read by one thread each; a worker that fails is an error naming its exit code."""
    import subprocess
    import threading

    listing = target.with_suffix(".paths")
    listing.write_text("\n".join(paths), encoding="utf-8")
    bounds = np.linspace(0, len(paths), workers + 1).astype(int)
    lock = threading.Lock()
    procs = [subprocess.Popen([sys.executable, "-m", "cmt_scale.imagedecode", "--out", str(target), "--paths",
                               str(listing), "--size", str(size), "--start", str(lo), "--stop", str(hi)],
                              stdout=subprocess.PIPE, text=True)
             for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def pump(proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with lock:
                report(json.loads(line))

    readers = [threading.Thread(target=pump, args=(proc,), daemon=True) for proc in procs]
    for reader in readers:
        reader.start()
    for proc, reader in zip(procs, readers):
        reader.join()
        if proc.wait() != 0:
            raise RuntimeError(f"an image decode worker failed (exit code {proc.returncode}); its error is above")
    listing.unlink()


def _compact(array: np.ndarray, labels: np.ndarray, bad: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Drop the rows of unreadable images in place (no second copy of the array)."""
    if not bad:
        return array, labels
    keep = np.setdiff1d(np.arange(len(labels)), np.asarray(bad))
    for target, source in enumerate(keep):
        if target != source:
            array[target] = array[source]
    return array[: len(keep)], labels[keep]


def _sample_rows(n: int, sample: int | None) -> np.ndarray:
    """The fixed sample of rows the statistics are taken over: the same on the in-memory and streamed paths."""
    if sample is None or n <= sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, sample, replace=False))


def channel_stats(images: np.ndarray | torch.Tensor, sample: int | None = None) -> tuple[tuple[float, ...],
                                                                                        tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of N x C x H x W ``uint8`` images, over a fixed random ``sample``
    of them (all when ``None``), summed in chunks: never a float copy of the whole set."""
    rows = _sample_rows(len(images), sample)
    channels = images.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(rows), 64):  # small float chunks: a float copy of 2000 images would be 0.8 GB
        chunk = torch.as_tensor(np.asarray(images[rows[start: start + 64]])).to(torch.float32).div_(255)
        flat = chunk.transpose(0, 1).reshape(channels, -1)
        total += flat.sum(1, dtype=torch.float64).numpy()
        squares += flat.square().sum(1, dtype=torch.float64).numpy()
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0) * count / max(1, count - 1))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-3).tolist())


def decode_folder(index: FolderIndex, size: int, workers: int | None = None, cache: bool = True) -> dict[str, Any]:
    """The folder decoded at ``size``: ``train``/``test`` image arrays and labels, ``mean``/``std`` and the
    ``skipped`` files. From the disk cache when it holds this folder's contents at this size; otherwise
    decoded with ``workers`` threads into it (or into memory with ``cache=False``)."""
    workers = decode_workers(workers)
    folder = cache_dir() / f"{index.key}-{size}px-v{_CACHE_FORMAT}" if cache else None
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in ("train", "test")}
        labels = {name: np.load(folder / f"{name}_labels.npy") for name in ("train", "test")}
        log.info("decoded images of %s read from the cache %s", index.root, folder)
        return {**{f"{k}_images": v for k, v in arrays.items()}, **{f"{k}_labels": v for k, v in labels.items()},
                "mean": tuple(meta["mean"]), "std": tuple(meta["std"]), "skipped": tuple(meta["skipped"])}
    out: dict[str, Any] = {}
    skipped: list[str] = []
    partial = None
    if folder is not None:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
            partial.mkdir(exist_ok=True)
        except OSError as err:  # a read-only home: decode into memory instead
            log.warning("decoded-image cache unavailable (%s); decoding into memory", err)
            partial = None
    for name, items in (("train", index.train), ("test", index.test)):
        shape = (len(items), 3, size, size)
        array = (np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
                 if partial is not None else np.empty(shape, dtype=np.uint8))
        labels = np.array([label for _, label in items], dtype=np.int64)
        bad = _decode_into(array, items, size, workers, f"{index.root.name}/{name}")
        skipped += [items[i][0] for i in bad]
        out[f"{name}_images"], out[f"{name}_labels"] = _compact(array, labels, bad)
    out["mean"], out["std"] = channel_stats(out["train_images"], _STATS_SAMPLE)
    out["skipped"] = tuple(skipped)
    if partial is not None:
        for name in ("train", "test"):
            if isinstance(out[f"{name}_images"], np.memmap):
                out[f"{name}_images"].flush()
            np.save(partial / f"{name}_labels.npy", out[f"{name}_labels"])
            if len(out[f"{name}_images"]) != len(getattr(index, name)):  # rows were dropped: save the kept ones
                np.save(partial / f"{name}.kept.npy", out[f"{name}_images"])
                os.replace(partial / f"{name}.kept.npy", partial / f"{name}.npy")
        (partial / "meta.json").write_text(json.dumps({"root": str(index.root), "size": size, "mean": out["mean"],
                                                       "std": out["std"], "skipped": skipped}), encoding="utf-8")
        try:
            os.replace(partial, folder)
        except OSError:  # another process cached the same folder first: keep its copy
            pass
    return out


def folder_stats(index: FolderIndex, size: int, workers: int | None = None) -> tuple[tuple[float, ...],
                                                                                      tuple[float, ...]]:
    """Mean and std of a streamed folder, over the same fixed sample of training images the in-memory path
    uses (`channel_stats`), cached beside the decoded folders."""
    path = cache_dir() / f"{index.key}-{size}px-v{_CACHE_FORMAT}.stats.json"
    if path.is_file():
        stats = json.loads(path.read_text(encoding="utf-8"))
        return tuple(stats["mean"]), tuple(stats["std"])
    rows = _sample_rows(len(index.train), _STATS_SAMPLE)
    items = [index.train[i] for i in rows]
    sample = np.empty((len(items), 3, size, size), dtype=np.uint8)
    bad = _decode_into(sample, items, size, decode_workers(workers), f"{index.root.name} (statistics)")
    sample, _ = _compact(sample, np.zeros(len(items)), bad)
    mean, std = channel_stats(sample)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": mean, "std": std}), encoding="utf-8")
    except OSError:
        pass
    return mean, std


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's Python and NumPy generators from torch's per-worker seed (timm's augmentations
    draw from Python's ``random``)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
