"""Which machine a benchmark ran on: its ratios only hold there (the project's CPUs differ by kind)."""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path

__all__ = ["ALLOCATOR_MODES", "ALLOCATOR_HELP", "apply_allocator_mode", "cpu_kind", "cpu_name", "has_native_bf16",
           "machine_line"]

# How a benchmark sets the process's malloc (scaling.tune_cpu_allocator), so its figures say which they had.
ALLOCATOR_MODES = ("auto", "off", "tuned")
ALLOCATOR_HELP = ("auto: as a user's process (a CMT tunes malloc on its first CPU inference forward); "
                  "off: CMT_SCALE_TUNE_ALLOCATOR=0; tuned: tune_cpu_allocator() before anything runs")


def apply_allocator_mode(mode: str) -> str:
    """Set the process's malloc as ``mode`` asks (before any model runs) and say what it is, in one line."""
    if mode == "off":
        os.environ["CMT_SCALE_TUNE_ALLOCATOR"] = "0"
        return "glibc malloc as the process starts, throughout (CMT_SCALE_TUNE_ALLOCATOR=0)"
    if mode == "tuned":
        from scaling import tune_cpu_allocator

        return f"tune_cpu_allocator() -> {tune_cpu_allocator()} before anything runs"
    return "as a user's process has it (tuned by the first CMT inference forward, for every row)"


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    """``/proc/cpuinfo``, read once (the name, family, model and flags all come from it); empty elsewhere."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines())
    except OSError:
        return ()


def _cpuinfo_field(field: str) -> str | None:
    for line in _cpuinfo_lines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo_field("flags") or "").split())


def _amd_generation(family: int, flags: set[str]) -> str | None:
    """AMD's core generation from the CPU family: a VM often reports only "AMD EPYC" as the model name, and
    Zen 3, 4 and 5 EPYCs differ in speed and in the kernels oneDNN picks. Family 25 is Zen 3 without
    AVX-512 and Zen 4 with it; family 26 is Zen 5."""
    if family == 25:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    return {23: "Zen or Zen 2", 26: "Zen 5"}.get(family)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) with its family and model numbers, which tell apart machines
    that share a name (and, for AMD, the core generation); elsewhere what the platform says."""
    name = _cpuinfo_field("model name") or platform.processor() or "unknown CPU"
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    if not (family and model and family.isdigit() and model.isdigit()):
        return name
    generation = _amd_generation(int(family), _cpu_flags()) if "AMD" in name else None
    return f"{name} (family {family} model {model}{f', {generation}' if generation else ''})"


def cpu_kind() -> str:
    """The instruction sets that change which kernels oneDNN picks: AMX (bf16 matrix tiles), AVX-512 with
    bf16 dot products, AVX-512, or neither."""
    flags = _cpu_flags()
    if "amx_tile" in flags:
        return "AVX-512 + AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 + BF16"
    return "AVX-512" if "avx512f" in flags else "AVX2 or less"


def has_native_bf16() -> bool:
    """True where the CPU computes in bf16 (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated and
    slower than fp32 (measured 6-10x on a Zen 3 EPYC), so timing it only costs time."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_line() -> str:
    """One line for the top of a benchmark's output: CPU, its kind, cores, torch, date."""
    import torch

    return (f"CPU: {cpu_name()} ({cpu_kind()}), {os.cpu_count()} CPUs | torch {torch.__version__} | "
            f"Python {platform.python_version()} | {time.strftime('%Y-%m-%d')}")
