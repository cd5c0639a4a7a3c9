"""Training speed (forward + backward + AdamW) of CMT-Ti against DeiT-Ti and EfficientNet-B0, one process.

Prints img/s per model and precision (median step time over rounds, interleaved round-robin), each ratio
to DeiT-Ti in fp32, bf16 vs fp32 per model, and the share of a real proxy epoch spent preparing batches
(outside forward/backward) from `train_and_evaluate` on Fashion-MNIST.

Usage: python benchmarks/bench_train.py [--threads 2] [--batch-size 64] [--resolution 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _step_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model.train()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return len(y) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from proxy import build_baseline
    from scaling import PRESETS, build_cmt

    res, bs = args.resolution, args.batch_size
    models = {
        f"cmt_ti@{res}": lambda: build_cmt(PRESETS["cmt_ti"], img_size=res, num_classes=10),
        f"cmt_ti@{res // 2}": lambda: build_cmt(PRESETS["cmt_ti"], img_size=res // 2, num_classes=10),
        f"deit_tiny@{res}": lambda: build_baseline("deit_tiny", 10, res),
        f"efficientnet_b0@{res}": lambda: build_baseline("efficientnet_b0", 10, res),
    }
    rates: dict[str, list[float]] = {}
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.rounds):
        for name, make in models.items():
            size = int(name.split("@")[1])
            x = torch.randn(bs, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (bs,), generator=gen)
            for precision in ("fp32", "bf16"):
                torch.manual_seed(0)
                model = make().to(memory_format=torch.channels_last)
                rates.setdefault(f"{name} {precision}", []).append(_step_rate(model, x, y, precision == "bf16",
                                                                                args.steps))
    reference = statistics.median(rates[f"deit_tiny@{res} fp32"])
    print(f"\ntraining img/s, batch {bs}, {args.threads} threads, median over {args.rounds} rounds")
    print(f"{'model':32s} {'img/s':>8s} {'x DeiT-Ti fp32':>15s}   rounds")
    for key, values in rates.items():
        med = statistics.median(values)
        print(f"{key:32s} {med:8.1f} {med / reference:15.2f}   {' '.join(f'{v:.0f}' for v in values)}")
    for name in models:
        ratio = statistics.median(rates[f"{name} bf16"]) / statistics.median(rates[f"{name} fp32"])
        print(f"bf16 / fp32 {name}: {ratio:.2f}x")

    from proxy import DEFAULT_PROTOCOL, train_and_evaluate

    protocol = DEFAULT_PROTOCOL.replace(epochs=1, train_size=4000, threads=args.threads)
    result = train_and_evaluate(PRESETS["cmt_ti"], protocol, progress=False, name="cmt_ti")
    print(f"\nproxy epoch on {protocol.dataset} at {protocol.resolution}px (batch {protocol.batch_size}): "
          f"{result.train_img_per_s:.0f} img/s, {100 * result.data_time_share:.1f}% of the step time spent "
          f"preparing batches (state {result.state})")


if __name__ == "__main__":
    main()
