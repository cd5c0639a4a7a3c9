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
once. Like pip's or Hugging Face's caches it is written through the page cache and never synced: the
kernel writes it back in the background, and the decode does not wait about a second per GB of disk
writes for a guarantee the cache would still not have (its ``meta.json`` is not synced either). An entry
appears by renaming its folder once all its files are written, so a killed decode leaves no entry.

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
        prefix = os.path.join(str(self.root), "")
        for path, label in self.train + self.test:
            stat = os.stat(path)
            # the indexed paths are joined under the root; relpath (an abspath per file) is the slow fallback
            relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, self.root)
            digest.update(f"{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
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
    # a class folder without images would still be a class: the head gets an output nothing teaches
    empty = sorted(set(classes) - {classes[label] for _, label in items})
    if empty:
        raise ValueError(f"imagefolder:{folder}: class folder(s) {', '.join(map(repr, empty))} hold no images; "
                         f"allowed: class folders each holding {', '.join(IMAGE_EXTENSIONS)} files")
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


def _decode_into(jobs: Sequence[tuple[np.ndarray, Sequence[tuple[str, int]]]], size: int, workers: int,
                 what: str) -> list[list[int]]:
    """Decode each job's items into its array (N x 3 x size x size uint8, preallocated), all jobs by one set
    of ``workers`` worker processes (`cmt_scale.imagedecode`; none: in this process), so a folder's train and
    validation splits share the workers' start-up and never leave one idle at a split's end. Returns the
    indices of each job's unreadable images, each warned about by name. Workers write into an array's file
    when it is a memory map, else into a temporary one copied in afterwards."""
    from tqdm.auto import tqdm

    from cmt_scale.imagedecode import decode_rows

    paths = [[path for path, _ in items] for _, items in jobs]
    total = sum(len(p) for p in paths)
    bad: list[list[int]] = [[] for _ in jobs]
    with tqdm(total=total, desc=f"decoding {what}", unit="img", leave=False, disable=total < 512) as bar:
        def report(message: dict[str, Any]) -> None:
            if "bad" in message:
                job = message["segment"]
                log.warning("skipped unreadable image %s (%s)", paths[job][message["bad"]], message["reason"])
                bad[job].append(message["bad"])
            else:
                bar.update(message["done"])

        if workers <= 0 or total < 256:
            for number, ((out, _), job_paths) in enumerate(zip(jobs, paths)):
                decode_rows(out, job_paths, size, 0, len(job_paths),
                            lambda message, number=number: report({**message, "segment": number}))
            return [sorted(b) for b in bad]
        with tempfile.TemporaryDirectory(prefix="cmt_scale_decode") as scratch:
            mapped = [isinstance(out, np.memmap) and bool(out.filename) for out, _ in jobs]
            targets = [Path(out.filename) if in_file else Path(scratch) / f"images{number}.npy"
                       for number, ((out, _), in_file) in enumerate(zip(jobs, mapped))]
            for (out, _), target, in_file in zip(jobs, targets, mapped):
                if in_file:
                    out.flush()  # its header and anything written so far, before other processes map it
                else:
                    np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=out.shape).flush()
            _decode_in_workers(targets, paths, size, workers, Path(scratch), report)
            for (out, _), target, in_file in zip(jobs, targets, mapped):
                if not in_file:
                    out[:] = np.load(target, mmap_mode="r")
    return [sorted(b) for b in bad]


def _worker_segments(lengths: Sequence[int], workers: int) -> list[list[tuple[int, int, int]]]:
    """Each worker's (job, start, stop) segments: the jobs' rows laid end to end and cut into ``workers``
    contiguous, equal shares (a share may end in one job and go on in the next)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    bounds = np.linspace(0, offsets[-1], workers + 1).astype(int)
    shares = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        share = [(job, max(lo, offsets[job]) - offsets[job], min(hi, offsets[job + 1]) - offsets[job])
                 for job in range(len(lengths)) if max(lo, offsets[job]) < min(hi, offsets[job + 1])]
        if share:
            shares.append(share)
    return shares


def _decode_in_workers(targets: Sequence[Path], paths: Sequence[Sequence[str]], size: int, workers: int,
                       scratch: Path, report) -> None:
    """``workers`` processes of ``python -m cmt_scale.imagedecode``, each on a contiguous share of the rows
    of all ``targets`` together, their JSON lines read by one thread each; a worker that fails is an error
    naming its exit code."""
    import subprocess
    import threading

    listings = []
    for number, job_paths in enumerate(paths):
        listings.append(scratch / f"paths{number}.txt")
        listings[-1].write_text("\n".join(job_paths), encoding="utf-8")
    lock = threading.Lock()
    procs = []
    for share in _worker_segments([len(p) for p in paths], workers):
        command = [sys.executable, "-m", "cmt_scale.imagedecode", "--size", str(size)]
        for job, start, stop in share:
            command += ["--segment", str(targets[job]), str(listings[job]), str(start), str(stop)]
        procs.append((subprocess.Popen(command, stdout=subprocess.PIPE, text=True), [job for job, _, _ in share]))

    def pump(proc: subprocess.Popen, jobs: list[int]) -> None:
        for line in proc.stdout:
            message = json.loads(line)
            message["segment"] = jobs[message["segment"]]  # the worker's segment number -> the job's
            with lock:
                report(message)

    readers = [threading.Thread(target=pump, args=proc_jobs, daemon=True) for proc_jobs in procs]
    for reader in readers:
        reader.start()
    for (proc, _), reader in zip(procs, readers):
        reader.join()
        if proc.wait() != 0:
            raise RuntimeError(f"an image decode worker failed (exit code {proc.returncode}); its error is above")


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
    of them (all when ``None``). Each chunk's pixel values are counted per channel (256 bins), so the sums
    and sums of squares are exact integers, found in one pass over the bytes with no float copy of them."""
    rows = _sample_rows(len(images), sample)
    channels = images.shape[1]
    values = np.arange(256, dtype=np.float64)
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(rows), 64):
        chunk = torch.as_tensor(np.asarray(images[rows[start: start + 64]]))
        for channel in range(channels):  # torch's bincount: 3x NumPy's on uint8 (measured)
            counts[channel] += torch.bincount(chunk[:, channel].reshape(-1), minlength=256).numpy()
    count = counts.sum(1)
    mean = counts @ values / count
    variance = counts @ values**2 / count - mean**2  # exact sums: no cancellation beyond float64's last bits
    std = np.sqrt(np.maximum(variance, 0) * count / np.maximum(1, count - 1)) / 255
    return tuple((mean / 255).tolist()), tuple(np.maximum(std, 1e-3).tolist())


def decode_folder(index: FolderIndex, size: int, workers: int | None = None, cache: bool = True) -> dict[str, Any]:
    """The folder decoded at ``size``: ``train``/``test`` image arrays and labels, ``mean``/``std`` and the
    ``skipped`` files. From the disk cache when it holds this folder's contents at this size; otherwise
    decoded by ``workers`` worker processes into it (or into memory with ``cache=False``)."""
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
    splits = (("train", index.train), ("test", index.test))
    arrays = [np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(items), 3, size, size))
              if partial is not None else np.empty((len(items), 3, size, size), dtype=np.uint8)
              for name, items in splits]
    bad_rows = _decode_into([(array, items) for array, (_, items) in zip(arrays, splits)], size, workers,
                            index.root.name)
    for (name, items), array, bad in zip(splits, arrays, bad_rows):
        labels = np.array([label for _, label in items], dtype=np.int64)
        skipped += [items[i][0] for i in bad]
        out[f"{name}_images"], out[f"{name}_labels"] = _compact(array, labels, bad)
    out["mean"], out["std"] = channel_stats(out["train_images"], _STATS_SAMPLE)
    out["skipped"] = tuple(skipped)
    if partial is not None:
        for name in ("train", "test"):  # no msync: the kernel writes the arrays back; see the module's docstring
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
    (bad,) = _decode_into([(sample, items)], size, decode_workers(workers), f"{index.root.name} (statistics)")
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
