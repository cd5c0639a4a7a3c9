"""`train_and_evaluate`: one candidate, one protocol, one `TrialResult` (failures included).

Searches call this with a config (or a built model) and get a result back; it knows nothing of Optuna
or Ray. A search prunes by raising `TrialPruned` from the per-epoch ``report`` callback. A diverging
loss, an out-of-memory error or a missing data set end the trial as ``state="failed"`` with the reason,
never as an exception out of the search.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import platform
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scaling import CMTConfig

from ._batches import check_augment, make_source, mixer
from ._data import DatasetNotFound, ProxyData, StreamedFolder, data_for
from ._protocol import ProxyProtocol
from ._state import TrialState

__all__ = ["TrialPruned", "TrialResult", "train_and_evaluate"]

log = logging.getLogger("cmt_scale.proxy")


class TrialPruned(Exception):
    """Raised by a ``report`` callback to stop a trial early (the search's pruner said so)."""


@dataclass
class TrialResult:
    """What one training run gave. ``top1`` is per epoch on the validation split (percent)."""

    state: TrialState  # complete, pruned or failed (infeasible members never reach training)
    name: str
    protocol_hash: str
    seed: int
    top1: list[float] = field(default_factory=list)
    best_top1: float = float("nan")
    final_top1: float = float("nan")
    test_top1: float | None = None
    epochs_run: int = 0
    train_img_per_s: float = float("nan")
    data_time_share: float = float("nan")
    skipped_images: int = 0  # unreadable files left out of the data set
    wall_s: float = 0.0
    macs: int | None = None
    params: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(protocol: ProxyProtocol) -> torch.device:
    """The device ``protocol`` trains on (``auto``: CUDA when present); a ``ValueError`` for a missing GPU,
    for a precision the device cannot train in, and for an augmentation timm cannot build: all caught before
    a search writes anything."""
    if protocol.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif protocol.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not available here; allowed: 'cpu' or 'auto'")
    else:
        device = torch.device(protocol.device)
    _precision(protocol, device)
    check_augment(protocol)
    return device


def _split(data: ProxyData | StreamedFolder, protocol: ProxyProtocol) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices into the training split, from the protocol's seed."""
    total = len(data.train_labels)
    if protocol.val_size >= total:
        raise ValueError(f"val_size={protocol.val_size} is not allowed; "
                         f"allowed: fewer than the {total} training images")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(protocol.seed))
    val, rest = order[: protocol.val_size], order[protocol.val_size :]
    train = rest if protocol.train_size is None else rest[: protocol.train_size]
    return train, val


def _lr_lambda(protocol: ProxyProtocol, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine down to ``min_lr_ratio`` (per step)."""
    warmup = int(protocol.warmup_epochs * steps_per_epoch)
    total = protocol.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return protocol.min_lr_ratio + (1 - protocol.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _build(model_or_config: nn.Module | CMTConfig, protocol: ProxyProtocol, num_classes: int
           ) -> tuple[nn.Module, int | None, int | None, str]:
    """The model at the protocol's resolution and class count, with its cost there (MACs, params)."""
    if isinstance(model_or_config, CMTConfig):
        from scaling import build_cmt, estimate_cost

        cfg = model_or_config.replace(img_size=protocol.resolution, num_classes=num_classes)
        cost = estimate_cost(cfg)
        return build_cmt(cfg), cost.macs, cost.params, "cmt"
    if isinstance(model_or_config, nn.Module):
        return model_or_config, None, None, type(model_or_config).__name__
    raise ValueError(f"train_and_evaluate takes a CMTConfig or an nn.Module, got {type(model_or_config).__name__}")


@torch.inference_mode()
def _evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        with autocast():
            logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


def _precision(protocol: ProxyProtocol, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (``None``: fp32) and whether gradients need a scaler: bf16 where the device has
    it, fp16 with a scaler on a GPU without bf16 (logged), fp16 only on a GPU."""
    if protocol.precision == "fp32":
        return None, False
    if protocol.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' is not allowed on {device.type}; allowed: fp32 or bf16 (fp16 needs a GPU)")
    if protocol.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16: training in fp16 with a gradient scaler instead")
        return torch.float16, True
    if protocol.precision == "bf16" and device.type == "cpu":
        _warn_if_bf16_is_emulated(torch.backends.cpu.get_cpu_capability())
    dtype = torch.bfloat16 if protocol.precision == "bf16" else torch.float16
    return dtype, dtype == torch.float16


@functools.cache
def _warn_if_bf16_is_emulated(capability: str) -> None:
    """Once per process: below AVX-512 no x86 CPU computes in bf16, so autocast emulates it, and a step is
    slower than in fp32 (measured 6-10x on a Zen 3 EPYC, benchmarks/RESULTS.md). A warning, not an
    error: the result is still valid, only slow."""
    if capability in ("AVX2", "DEFAULT") and platform.machine().lower() in ("x86_64", "amd64"):
        log.warning("this CPU computes bf16 by emulation (torch reports %s): precision='bf16' trains slower than "
                    "fp32 here; allowed and faster: precision='fp32'", capability)


def train_and_evaluate(
    model_or_config: nn.Module | CMTConfig,
    protocol: ProxyProtocol,
    report: Callable[[int, float], None] | None = None,
    progress: bool = True,
    name: str | None = None,
    cost: tuple[int, int] | None = None,
) -> TrialResult:
    """Train ``model_or_config`` under ``protocol`` and score it; never raises for a failed trial.

    A `CMTConfig` is built at the protocol's resolution and class count; an ``nn.Module`` (a baseline from
    `build_baseline`) is trained as given. ``report(epoch, top1)`` is called after each epoch; raising
    `TrialPruned` from it ends the trial as ``"pruned"``. The same protocol and seed give the same result on
    the CPU. ``cost`` (MACs, params at the protocol resolution), when the caller already counted a module,
    spares a second fvcore trace.

    Example:
        >>> from cmt_scale.proxy import ProxyProtocol, train_and_evaluate
        >>> from scaling import PRESETS
        >>> result = train_and_evaluate(PRESETS["cmt_ti"], ProxyProtocol(dataset="digits", resolution=32,
        ...                             val_size=300, epochs=2))  # doctest: +SKIP
    """
    start = time.perf_counter()
    result = TrialResult(state=TrialState.FAILED, name=name or "model", protocol_hash=protocol.protocol_hash,
                         seed=protocol.seed)
    previous_threads = torch.get_num_threads()
    try:
        if protocol.threads:
            torch.set_num_threads(protocol.threads)
        _run(model_or_config, protocol, report, progress, result, cost)
    except TrialPruned:
        result.state = TrialState.PRUNED
    except _Diverged as err:
        result.error = str(err)
    except DatasetNotFound as err:
        result.error = str(err)
    except (torch.OutOfMemoryError, MemoryError) as err:
        result.error = f"out of memory: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    except RuntimeError as err:
        if "out of memory" not in str(err).lower() and "can't allocate memory" not in str(err).lower():
            result.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        else:
            result.error = f"out of memory: {str(err).splitlines()[0]}"
    finally:
        torch.set_num_threads(previous_threads)
        result.wall_s = time.perf_counter() - start
    if result.top1:
        result.best_top1, result.final_top1 = max(result.top1), result.top1[-1]
    return result


def _run(model_or_config, protocol: ProxyProtocol, report, progress: bool, result: TrialResult,
         cost: tuple[int, int] | None) -> None:
    data = data_for(protocol)
    device = resolve_device(protocol)
    torch.manual_seed(protocol.seed)  # model initialisation
    model, macs, params, kind = _build(model_or_config, protocol, data.num_classes)
    if macs is None and cost is not None:
        macs, params = cost
    if macs is None:
        from scaling import count_flops

        profile = count_flops(model, img_size=protocol.resolution)
        macs, params = profile.macs, profile.params
    result.macs, result.params = macs, params
    in_chans = getattr(getattr(model, "cfg", None), "in_chans", 3)
    model = model.to(device).to(memory_format=torch.channels_last)
    train_idx, val_idx = _split(data, protocol)
    source = make_source(data, protocol, train_idx, val_idx, in_chans, device)
    try:
        _loop(model, protocol, report, progress, result, source, device, data.num_classes)
    finally:
        source.close()
        result.skipped_images = source.skipped


def _loop(model: nn.Module, protocol: ProxyProtocol, report, progress: bool, result: TrialResult, source,
          device: torch.device, num_classes: int) -> None:
    steps = source.steps_per_epoch()
    fused = device.type == "cpu" or device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay,
                                  fused=fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(protocol, steps))
    dtype, needs_scaler = _precision(protocol, device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    mix = mixer(protocol, num_classes)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:  # mixed soft targets (label smoothing included)
            return torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, y, label_smoothing=protocol.label_smoothing)

    step_model = torch.compile(model) if protocol.compile else model
    gen = torch.Generator().manual_seed(protocol.seed + 1)
    train_time = data_time = 0.0
    seen = 0
    bar = _progress_bar(protocol.epochs * steps, progress, result.name)
    for epoch in range(protocol.epochs):
        model.train()
        batches = iter(source.train_batches(gen))
        step = 0
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            x, y = batch
            if mix is not None:
                x, y = mix(x[: len(x) // 2 * 2], y[: len(y) // 2 * 2])  # timm's Mixup pairs a batch in halves
            t1 = time.perf_counter()
            with autocast():
                loss = loss_of(step_model(x), y)
            if not torch.isfinite(loss):
                raise _Diverged(f"diverged: loss is {loss.item()} at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            t2 = time.perf_counter()
            data_time += t1 - t0
            train_time += t2 - t0
            seen += len(x)
            step += 1
            if bar is not None:
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", img_s=f"{seen / train_time:.0f}")
                bar.update(1)
        top1 = _evaluate(model, source.eval_batches("val"), autocast)
        result.top1.append(top1)
        result.epochs_run = epoch + 1
        result.train_img_per_s = seen / train_time
        result.data_time_share = data_time / train_time
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", top1=f"{top1:.1f}",
                            img_s=f"{seen / train_time:.0f}")
        if report is not None:
            report(epoch, top1)
    if bar is not None:
        bar.close()
    if protocol.eval_test:
        result.test_top1 = _evaluate(model, source.eval_batches("test"), autocast)
    result.state = TrialState.COMPLETE


class _Diverged(RuntimeError):
    pass


def _progress_bar(total: int, enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="step", leave=False)
