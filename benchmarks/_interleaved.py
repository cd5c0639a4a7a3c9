"""Several ways of doing the same work timed call by call in turn, so that drift of a noisy machine (slower
than one call) falls on all of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["interleaved_median_ms"]


def interleaved_median_ms(runs: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Each run's median ms over ``calls`` rounds, one call of each per round in turn, after one untimed call
    each (kernels chosen, primitives built, memory faulted in)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(calls):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}
