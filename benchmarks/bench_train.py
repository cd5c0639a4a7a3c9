"""Training speed (forward + backward + AdamW) of CMT-Ti against a plain port of the official code, one process.

Every model runs the same training step (cross-entropy, fused AdamW, batch 64, 2 threads). The models
take turns step by step (this machine's speed drifts by 10-20% within a minute, so only steps taken side
by side compare), and each figure is the median step time over all rounds. The baseline is `plain_port.PlainCMT`, the
official network in the official layout, fed NCHW images as the official training script feeds it; our
model gets channels-last images, as `proxy.train_and_evaluate` feeds it. Printed: img/s per model and
precision, each fp32 figure as a multiple of the plain port's, bf16 over fp32 per model, DeiT-Ti and
EfficientNet-B0 at the same resolution, our step split into a per-step cost and a per-image cost (which
bounds what bf16 can gain), and the share of a real proxy epoch spent preparing batches.

Usage: python benchmarks/bench_train.py [--threads 2] [--batch-size 64] [--resolution 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _step_seconds(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  bf16: bool) -> float:
    """Wall time of one training step."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


class _Entry:
    """One model of the comparison: built once, with its own optimizer, input layout and kernel switch."""

    def __init__(self, make: Callable[[], nn.Module], size: int, channels_last: bool, kernels: bool) -> None:
        torch.manual_seed(0)
        self.model = make().train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=True)
        self.size, self.channels_last, self.kernels = size, channels_last, kernels


def _time_in_turns(entries: dict, inputs: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], rounds: int,
                   steps: int, before_step: Callable[[Any], None] = lambda key: None) -> dict[tuple, list[float]]:
    """Step times per (entry key, precision): in each round and precision every entry takes one step in
    turn, ``steps + 1`` times, on ``inputs(key)``; the first step of each round warms up and is not counted."""
    seconds: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            for step in range(steps + 1):
                for key, entry in entries.items():
                    before_step(key)
                    took = _step_seconds(entry.model, entry.optimizer, *inputs(key), precision == "bf16")
                    if step:
                        seconds.setdefault((key, precision), []).append(took)
    return seconds


def _fixed_cost(make: Callable[[], nn.Module], size: int, batch: int, rounds: int, steps: int) -> None:
    """Split our step time into a per-step cost that does not grow with the batch and a per-image cost.

    Why: bf16 speeds up only the work that grows with the batch (GEMMs, memory-bound kernels); the cost
    paid once per step (about 1,500 op dispatches and autograd nodes, AdamW over fp32 master weights,
    autocast's weight casts) stays. A line through the step times at batch 2 and at ``batch`` gives
    both parts, and with them the bf16/fp32 ratio reachable if bf16 halved all per-image work, and the
    speed-up of the per-image work that 2x would take."""
    small = 2
    models = {b: _Entry(make, size, True, True) for b in (small, batch)}
    gen = torch.Generator().manual_seed(1)
    data = {b: (torch.randn(b, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (b,), generator=gen)) for b in (small, batch)}
    times = _time_in_turns(models, data.__getitem__, rounds, steps)
    fixed, per_image, total = {}, {}, {}
    for precision in ("fp32", "bf16"):
        t_small, t_big = (statistics.median(times[(b, precision)]) for b in (small, batch))
        per_image[precision] = (t_big - t_small) / (batch - small)
        fixed[precision] = t_small - small * per_image[precision]
        total[precision] = t_big
        print(f"cmt_ti@{size} {precision}: per-step cost {1e3 * fixed[precision]:.0f} ms + "
              f"{1e3 * per_image[precision]:.2f} ms per image ({1e3 * t_big:.0f} ms at batch {batch}; "
              f"{100 * fixed[precision] / t_big:.0f}% per-step)")
    batch_work = total["fp32"] - fixed["fp32"]
    bound = total["fp32"] / (fixed["bf16"] + batch_work / 2)
    room = total["fp32"] / 2 - fixed["bf16"]
    needed = f"{batch_work / room:.1f}x" if room > 0 else "impossible: the per-step cost alone exceeds it"
    print(f"bf16/fp32 if bf16 halved all per-image work: {bound:.2f}x; per-image speed-up 2x would need: {needed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from plain_port import PlainCMT, check_port

    from cmt_scale.proxy import build_baseline
    from scaling import PRESETS, build_cmt, fused_kernels_available, set_fused_kernels

    res, half, bs = args.resolution, args.resolution // 2, args.batch_size
    print(f"fused CPU kernels: {'on' if fused_kernels_available() else 'unavailable'}")

    def cmt_cfg(size: int):
        return PRESETS["cmt_ti"].replace(img_size=size, num_classes=10)

    check_port(cmt_cfg(res), res)  # the baseline computes our network, or the comparison means nothing
    entries = {
        f"plain port cmt_ti@{res}": _Entry(lambda: PlainCMT(cmt_cfg(res)), res, False, False),
        f"cmt_ti@{res}": _Entry(lambda: build_cmt(cmt_cfg(res)), res, True, True),
        f"cmt_ti@{res} kernels off": _Entry(lambda: build_cmt(cmt_cfg(res)), res, True, False),
        f"plain port cmt_ti@{half}": _Entry(lambda: PlainCMT(cmt_cfg(half)), half, False, False),
        f"cmt_ti@{half}": _Entry(lambda: build_cmt(cmt_cfg(half)), half, True, True),
        f"deit_tiny@{res}": _Entry(lambda: build_baseline("deit_tiny", 10, res), res, True, True),
        f"efficientnet_b0@{res}": _Entry(lambda: build_baseline("efficientnet_b0", 10, res), res, True, True),
    }
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for size in {res, half}:
        x = torch.randn(bs, 3, size, size, generator=gen)
        inputs[size] = (x, x.contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (bs,), generator=gen))
    def batch_of(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x_nchw, x_cl, y = inputs[entries[name].size]
        return (x_cl if entries[name].channels_last else x_nchw), y

    seconds = _time_in_turns(entries, batch_of, args.rounds, args.steps,
                             before_step=lambda name: set_fused_kernels(entries[name].kernels))
    set_fused_kernels(True)
    rates = {key: [bs / t for t in times] for key, times in seconds.items()}

    def median(name: str, precision: str) -> float:
        return statistics.median(rates[(name, precision)])

    print(f"\ntraining img/s, batch {bs}, {args.threads} threads, median of {args.rounds} x {args.steps} steps taken "
          f"in turn")
    print(f"{'model':30s} {'fp32':>7s} {'x port':>7s} {'bf16':>7s} {'bf16/fp32':>9s}   fp32 quartiles")
    for name in entries:
        size = entries[name].size
        port = median(f"plain port cmt_ti@{size}", "fp32")
        fp32, bf16 = median(name, "fp32"), median(name, "bf16")
        steps = rates[(name, "fp32")]
        quartiles = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
        print(f"{name:30s} {fp32:7.1f} {fp32 / port:7.2f} {bf16:7.1f} {bf16 / fp32:9.2f}   "
              f"{quartiles[0]:.0f}-{quartiles[2]:.0f}")
    ours, port = median(f"cmt_ti@{res}", "fp32"), median(f"plain port cmt_ti@{res}", "fp32")
    print(f"\ncmt_ti@{res} fp32: {ours:.1f} img/s = {ours / port:.2f}x the plain port (target: 1.3x and 130 img/s)")
    print(f"cmt_ti@{res} bf16: {median(f'cmt_ti@{res}', 'bf16') / ours:.2f}x our fp32 (target: 2x)")

    _fixed_cost(lambda: build_cmt(cmt_cfg(res)), res, bs, args.rounds, args.steps)

    from cmt_scale.proxy import DEFAULT_PROTOCOL, train_and_evaluate

    protocol = DEFAULT_PROTOCOL.replace(epochs=1, train_size=4000, threads=args.threads)
    result = train_and_evaluate(PRESETS["cmt_ti"], protocol, progress=False, name="cmt_ti")
    print(f"\nproxy epoch on {protocol.dataset} at {protocol.resolution}px (batch {protocol.batch_size}): "
          f"{result.train_img_per_s:.0f} img/s, {100 * result.data_time_share:.1f}% of the step time spent "
          f"preparing batches (state {result.state})")


if __name__ == "__main__":
    main()
