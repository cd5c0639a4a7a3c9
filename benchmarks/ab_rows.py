"""Paired A/B of two rows of `bench_model.py`: one forward of each in turn, many times, in one process.

Why: on a shared 2-core VM the speed drifts by 20-30% between the rounds of `bench_model.py` (each round times
one row for several batches, then the next row), which hides a 5% change. Timing A and B one forward apart
and taking the median of the per-pair ratios cancels drift slower than a forward. Prints the CPU, each row's
median ms per batch, the median ratio B/A in speed (above 1: B is faster) with its interquartile range, and
the share of pairs in which B was faster.

Usage: python benchmarks/ab_rows.py "cmt_s timm.create_model cast per call bf16" "cmt_s timm.create_model bf16"
                                    [--batch-size 1] [--pairs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from _machine import machine_line
from bench_model import _models


def _runner(model: torch.nn.Module, batch_size: int, size: int, channels_last: bool, dtype: torch.dtype | None):
    """One timed forward of ``model``, as `scaling.measure_throughput` runs it (inference_mode, autocast)."""
    x = torch.randn(batch_size, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()

    def run() -> float:
        region = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), region:
            start = time.perf_counter()
            model(x)
            return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline row's name, as bench_model.py prints it")
    parser.add_argument("b", help="the row compared with it")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {name: row for name, *row in _models(compile_too=False, bf16=True)}
    for name in (args.a, args.b):
        if name not in rows:
            parser.error(f"row {name!r} is not one of bench_model.py's: {', '.join(rows)}")
    run_a, run_b = (_runner(rows[name][0], args.batch_size, *rows[name][1:]) for name in (args.a, args.b))
    for _ in range(3):  # warm-up: kernels chosen, routes timed, allocator tuned
        run_a(), run_b()
    times_a, times_b = [], []
    for i in range(args.pairs):
        first, second = (run_a, run_b) if i % 2 == 0 else (run_b, run_a)  # alternate which goes first
        t_first, t_second = first(), second()
        a, b = (t_first, t_second) if i % 2 == 0 else (t_second, t_first)
        times_a.append(a)
        times_b.append(b)
    ratios = sorted(a / b for a, b in zip(times_a, times_b, strict=True))
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(machine_line(), f"| {args.threads} threads | batch {args.batch_size} | {args.pairs} pairs")
    print(f"A {args.a}: {1000 * statistics.median(times_a):.1f} ms per batch (median)")
    print(f"B {args.b}: {1000 * statistics.median(times_b):.1f} ms per batch (median)")
    print(f"B / A speed, median of per-pair ratios: {median:.3f}x (interquartile {q1:.3f}-{q3:.3f}); "
          f"B faster in {sum(r > 1 for r in ratios) / len(ratios):.0%} of pairs")


if __name__ == "__main__":
    main()
