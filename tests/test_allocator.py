"""`tune_cpu_allocator`: after it, freed multi-megabyte maps are reused without new page faults; with
glibc's thresholds as they start (mmap above 128 KiB, documented in mallopt(3)) every such map faults its
pages in again. Run in subprocesses, so the test process keeps its own allocator settings. The probe pins
the starting threshold first: glibc's later dynamic adjustment depends on what the imports freed, which
would make the untuned case vary from run to run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scaling._allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's malloc thresholds (Linux with glibc only)")

# Eight 4 MiB maps alive at once, then freed, as consecutive ops of a forward leave them. Prints whether
# the call tuned, and the page faults per map after a warm-up (a fresh mapping faults ~1,000 pages).
_PROBE = """
import ctypes, resource, sys, torch
from scaling import tune_cpu_allocator
libc = ctypes.CDLL("libc.so.6")
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages whatever the host's huge-page policy
libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD at glibc's starting value
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False

def forward():
    maps = [torch.empty(1 << 20) for _ in range(8)]
    for m in maps:
        m.fill_(1.0)

for _ in range(4):
    forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    forward()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 160)
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> tuple[bool, float]:
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # no hugetlb or threshold tunables
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **(env or {})})
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


def test_tuning_stops_the_page_faults_of_every_large_allocation() -> None:
    tuned, faults = _probe("tune")
    default_tuned, default_faults = _probe("default")
    assert tuned and not default_tuned
    pages = 4 * (1 << 20) // 4096
    assert default_faults > 0.9 * pages, default_faults  # glibc's start: a fresh mapping per map
    assert faults < 0.05 * pages, faults  # tuned: the freed block is reused


def test_the_environment_switch_turns_it_off() -> None:
    tuned, faults = _probe("tune", {"CMT_SCALE_TUNE_ALLOCATOR": "0"})
    assert not tuned and faults > 0.9 * (4 * (1 << 20) // 4096)
