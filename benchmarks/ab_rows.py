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
import statistics
from collections.abc import Callable

import torch
from _machine import machine_line
from bench_model import _models


def _runner(model: torch.nn.Module, batch_size: int, size: int, channels_last: bool, dtype: torch.dtype | None,
            threads: int) -> Callable[[], float]:
    """One timed forward of ``model``, in seconds: `scaling.measure_throughput` with one repeat, as
    `bench_model.py` runs its rows (inference_mode, autocast for a dtype)."""
    from scaling import measure_throughput

    def run() -> float:
        result = measure_throughput(model, batch_size, size, threads=threads, channels_last=channels_last,
                                    dtype=dtype, warmup=0, repeats=1)
        return batch_size / result.img_per_s

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
    run_a, run_b = (_runner(rows[name][0], args.batch_size, *rows[name][1:], args.threads) for name in (args.a, args.b))
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
