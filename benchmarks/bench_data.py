"""The image-folder data paths on a generated 20k-image JPEG folder: decode speed, peak memory, data share.

The folder is made from Fashion-MNIST (Debian's ``dataset-fashion-mnist``): each image tinted a random
colour and saved as a JPEG of a random size between 48 and 160 px, in ``train/`` (16,000) and ``val/``
(4,000) class folders. It is generated once under ``--root`` and reused.

Measured, each case in a child process whose peak resident memory (PSS, children included, sampled
every 100 ms with psutil: forked workers share the trainer's pages, so their RSS would count them twice)
is taken by this one:

1. **Decode**: the in-memory path decoding the folder at ``--size`` with no worker processes, then with
   ``--workers``; the ratio is the parallel speed-up (target >= 1.8x with 2 workers on 2 cores).
2. **In-memory, defaults**: ``load_dataset`` with no budget (the folder fits) plus one short training run;
   peak resident growth while loading over the process before it, against the decoded ``uint8`` size (target
   <= ~1.5x).
3. **Streaming under a budget**: ``--budget-gb`` below the decoded size at ``--stream-size``, so the folder
   streams; a short CMT-Ti training run (batch 8); peak resident memory (children included) against the
   budget (target: below).
4. **Data share**: CMT-Ti at 64 px, ``--workers`` loader processes, streaming and in memory: the share of
   each training step spent waiting for its batch (target <= 10%).

Usage: python benchmarks/bench_data.py [--root DIR] [--workers 2] [--budget-gb 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name


def make_folder(root: Path, train: int = 16_000, val: int = 4_000) -> Path:
    """The benchmark folder (generated once): colour JPEGs of several sizes from Fashion-MNIST."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from cmt_scale.proxy import load_dataset

    done = root / ".complete"
    if done.is_file():
        return root
    fmnist = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, images, labels, count in (("train", fmnist.train_images, fmnist.train_labels, train),
                                         ("val", fmnist.test_images, fmnist.test_labels, val)):
        for i in tqdm(range(count), desc=f"writing {split}", unit="img"):
            grey = images[i, 0].numpy().astype(np.float32)
            tint = rng.uniform(0.3, 1.0, 3)
            size = int(rng.integers(48, 161))
            rgb = Image.fromarray((grey[..., None] * tint).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            folder = root / split / f"class{int(labels[i])}"
            folder.mkdir(parents=True, exist_ok=True)
            rgb.save(folder / f"{i:05d}.jpg", quality=90)
    done.write_text("ok")
    return root


def resident_bytes(process) -> int:
    """Resident memory of ``process`` and its children as PSS (each shared page split between the processes
    that map it): forked data workers share the trainer's pages, and summing their RSS would count those
    pages once per worker. RSS where the kernel gives no PSS."""
    import psutil

    total = 0
    for member in (process, *process.children(recursive=True)):
        try:
            info = member.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total


def _peak_memory(target, args: tuple, interval: float | None = 0.1) -> tuple[dict, float]:
    """Run ``target(*args, queue)`` in a fresh child; its result and the peak resident memory (GiB, PSS,
    children included) of it, sampled from here every ``interval`` seconds (``None``: not sampled, peak 0).
    A timing is taken unsampled: reading a process's PSS parses its ``smaps``, tens of milliseconds of CPU
    for a torch process, taken from the two cores two decode workers need and not from one process's."""
    import psutil

    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    child.start()
    proc = psutil.Process(child.pid)
    peak = 0
    while interval is not None and child.is_alive():
        try:
            peak = max(peak, resident_bytes(proc))
        except psutil.Error:
            pass
        time.sleep(interval)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the measured child process failed (exit code {child.exitcode}); its error is above")
    return queue.get(), peak / 2**30


def _decode(root: str, size: int, workers: int, queue) -> None:
    """The default path, cache included (into a fresh cache folder, so nothing is read from an earlier run)."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CMT_SCALE_CACHE"] = cache
        from cmt_scale.proxy._folder import decode_folder, index_folder

        index = index_folder(root)
        start = time.perf_counter()
        decode_folder(index, size, workers=workers)
        queue.put({"s": time.perf_counter() - start, "images": len(index.train) + len(index.test)})


def _own_rss() -> float:
    import psutil

    return resident_bytes(psutil.Process()) / 2**30


class _RssPeak:
    """The peak resident memory (GiB, PSS) of this process and its children while a block runs, sampled in a
    thread."""

    def __enter__(self) -> _RssPeak:
        import threading

        import psutil

        self.peak, self._stop = 0.0, threading.Event()
        me = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                try:
                    self.peak = max(self.peak, resident_bytes(me) / 2**30)
                except psutil.Error:
                    pass
                time.sleep(0.05)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _train(root: str, size: int, budget: float | None, workers: int, steps_images: int, cache_dir: str,
           batch_size: int, queue) -> None:
    import torch

    if cache_dir:
        os.environ["CMT_SCALE_CACHE"] = cache_dir
    from cmt_scale.proxy import ProxyProtocol, data_for, train_and_evaluate
    from scaling import PRESETS

    torch.set_num_threads(2)
    protocol = ProxyProtocol(dataset=f"imagefolder:{root}", resolution=size, val_size=256, train_size=steps_images,
                             epochs=1, batch_size=batch_size, workers=workers, data_memory_gb=budget, threads=2)
    before = _own_rss()
    start = time.perf_counter()
    with _RssPeak() as load:
        data = data_for(protocol)
    loaded = time.perf_counter() - start
    held = _own_rss()
    result = train_and_evaluate(PRESETS["cmt_ti"], protocol, progress=False)
    queue.put({"rss_before_gb": before, "load_peak_gb": load.peak, "rss_after_load_gb": held, "load_s": loaded,
               "streamed": type(data).__name__ == "StreamedFolder",
               "data_share": result.data_time_share, "img_s": result.train_img_per_s, "state": str(result.state),
               "error": result.error, "top1": result.final_top1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="where the generated folder lives (default: a folder in the temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="decode size for the in-memory cases")
    parser.add_argument("--stream-size", type=int, default=224, help="resolution of the streaming case")
    parser.add_argument("--budget-gb", type=float, default=2.5, help="memory budget of the streaming case")
    parser.add_argument("--stream-batch", type=int, default=8, help="batch size of the streaming case (the model's "
                        "activations at 224 px, not the data, dominate its memory)")
    parser.add_argument("--images", type=int, default=20_000, help="images in the generated folder (4/5 train)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the decode timing (median)")
    parser.add_argument("--only-decode", action="store_true", help="time the decode and stop")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    root = Path(args.root or Path(tempfile.gettempdir()) / "cmt_scale_bench_folder")
    make_folder(root, train=args.images * 4 // 5, val=args.images // 5)
    n_images = sum(1 for _ in root.glob("*/*/*.jpg"))
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"folder: {n_images} JPEGs, {sum(p.stat().st_size for p in root.glob('*/*/*.jpg')) / 2**20:.0f} MiB")
    figures: dict[str, dict] = {}

    rounds: dict[int, list[float]] = {0: [], args.workers: []}
    for _ in range(args.rounds):  # interleaved, each decode in a fresh process with a fresh cache
        for workers in rounds:
            timing, _ = _peak_memory(_decode, (str(root), args.size, workers), interval=None)
            rounds[workers].append(timing["s"])
    serial, parallel = statistics.median(rounds[0]), statistics.median(rounds[args.workers])
    figures["decode"] = {"serial_img_s": n_images / serial, "speedup": serial / parallel,
                         "parallel_img_s": n_images / parallel, "workers": args.workers, "size": args.size,
                         "rounds_s": {str(k): v for k, v in rounds.items()}}
    print(f"decode at {args.size} px: {figures['decode']['serial_img_s']:.0f} img/s in one process, "
          f"{figures['decode']['parallel_img_s']:.0f} with {args.workers} workers: "
          f"{figures['decode']['speedup']:.2f}x (target >= 1.8x), median of {args.rounds} interleaved rounds")
    if args.only_decode:
        _write_json(args.json, figures)
        return

    decoded_gb = n_images * 3 * args.size**2 / 2**30
    with tempfile.TemporaryDirectory() as cache:
        held, peak = _peak_memory(_train, (str(root), args.size, None, args.workers, 2048, cache, 32))
    growth = held["load_peak_gb"] - held["rss_before_gb"]
    figures["in_memory"] = {"decoded_gb": decoded_gb, "load_peak_gb": held["load_peak_gb"], "growth_gb": growth,
                            "growth_x": growth / decoded_gb, "streamed": held["streamed"], "load_s": held["load_s"],
                            "held_after_load_gb": held["rss_after_load_gb"] - held["rss_before_gb"],
                            "training_peak_rss_gb": peak}
    print(f"in memory (defaults) at {args.size} px: decoded {decoded_gb:.2f} GiB in {held['load_s']:.0f} s; "
          f"resident memory (PSS, children included) grew by {growth:.2f} GiB at its peak while loading = "
          f"{growth / decoded_gb:.2f}x "
          f"the decoded size (target <= ~1.5x); {figures['in_memory']['held_after_load_gb']:.2f} GiB held after; "
          f"peak while training {peak:.2f} GiB")

    stream_gb = n_images * 3 * args.stream_size**2 / 2**30
    with tempfile.TemporaryDirectory() as cache:
        streamed, peak = _peak_memory(_train, (str(root), args.stream_size, args.budget_gb, args.workers, 256, cache,
                                                       args.stream_batch))
    figures["streaming"] = {"decoded_gb": stream_gb, "budget_gb": args.budget_gb, "peak_resident_gb": peak,
                            "batch_size": args.stream_batch,
                            "streamed": streamed["streamed"], "img_s": streamed["img_s"], "state": streamed["state"]}
    print(f"streaming at {args.stream_size} px ({stream_gb:.2f} GiB decoded, budget {args.budget_gb} GiB): "
          f"streamed={streamed['streamed']}, peak resident {peak:.2f} GiB with {args.workers} workers "
          f"({'below' if peak < args.budget_gb else 'ABOVE'} the budget), {streamed['img_s']:.1f} img/s")

    for name, budget in (("streaming", 0.0), ("in memory", None)):
        with tempfile.TemporaryDirectory() as cache:
            share, _ = _peak_memory(_train, (str(root), 64, budget, args.workers, 2048, cache, 32))
        figures[f"share_{name}"] = share
        print(f"CMT-Ti@64, {name}, {args.workers} workers: data {100 * share['data_share']:.1f}% of each step, "
              f"{share['img_s']:.1f} img/s (target <= 10%)")
    _write_json(args.json, figures)


def _write_json(path: str | None, figures: dict) -> None:
    if path:
        Path(path).write_text(json.dumps({"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), **figures},
                                         indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
