"""Inference throughput of a model, measured the way latency figures should be: warm, median, no autograd."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Throughput", "measure_throughput"]


@dataclass(frozen=True)
class Throughput:
    """Median of the timed repeats: ``img_per_s`` and ``ms_per_img`` (batch latency / batch size).

    ``spread`` is the repeats' median absolute deviation over their median (0.02: the typical repeat was 2%
    off the median): on an idle machine about 0.01, on a busy one several times that, when the figures are
    not to be trusted to a few percent.
    """

    img_per_s: float
    ms_per_img: float
    batch_size: int
    img_size: int
    device: str
    threads: int | None
    repeats: int
    spread: float = 0.0

    @property
    def ms_per_batch(self) -> float:
        return self.ms_per_img * self.batch_size


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_throughput(
    model: nn.Module,
    batch_size: int = 8,
    img_size: int = 224,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
    warmup: int = 3,
    repeats: int = 10,
    in_chans: int = 3,
) -> Throughput:
    """Time ``model`` on random ``batch_size x in_chans x img_size x img_size`` batches.

    Runs ``warmup`` untimed batches (allocator, kernel selection, lazy init), then ``repeats`` timed ones
    under ``torch.inference_mode`` and returns their median: one slow outlier on a shared machine does not
    move it. ``dtype=torch.bfloat16`` times the autocast path (AMX on recent x86 CPUs, tensor cores on
    GPUs). ``threads`` sets torch's intra-op threads for the measurement only. The model is left in eval
    mode on ``device``.

    Example:
        >>> result = measure_throughput(build_cmt(PRESETS["cmt_ti"]), batch_size=4, img_size=160)  # doctest: +SKIP
        >>> result.img_per_s                                                                    # doctest: +SKIP
        41.7
    """
    for name, value, low in (("batch_size", batch_size, 1), ("img_size", img_size, 1), ("repeats", repeats, 1),
                             ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} is not allowed; allowed: an integer >= 1 or None")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not available here; allowed: 'cpu'")
    model = model.to(device).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=memory_format)
    batch = torch.randn(batch_size, in_chans, img_size, img_size, device=device).contiguous(memory_format=memory_format)
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype) if dtype not in (None, torch.float32)
        else contextlib.nullcontext()
    )
    times = []
    with _torch_threads(threads), torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(batch)
        _synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    spread = statistics.median(abs(t - seconds) for t in times) / seconds
    return Throughput(
        img_per_s=batch_size / seconds,
        ms_per_img=1000 * seconds / batch_size,
        batch_size=batch_size,
        img_size=img_size,
        device=str(device),
        threads=threads,
        repeats=repeats,
        spread=spread,
    )
