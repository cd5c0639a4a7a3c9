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

# ``count`` maps of ``mib`` MiB alive at once, then freed, as consecutive ops of a forward leave them. Prints
# whether the call tuned, and the page faults per map of the median forward after a warm-up (a fresh
# mapping faults 256 a MiB).
_PROBE = """
import ctypes, resource, sys, torch
from scaling import tune_cpu_allocator
libc = ctypes.CDLL("libc.so.6")
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages whatever the host's huge-page policy
libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD at glibc's starting value
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
count, floats = int(sys.argv[2]), int(sys.argv[3]) << 18

def forward():
    maps = [torch.empty(floats) for _ in range(count)]
    for m in maps:
        m.fill_(1.0)

for _ in range(4):
    forward()
per_forward = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    forward()
    per_forward.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sorted(per_forward)[5] / count)  # the median forward: a one-off event elsewhere does not count
"""


def _probe(mode: str, env: dict[str, str] | None = None, count: int = 8, mib: int = 4) -> tuple[bool, float]:
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # no hugetlb or threshold tunables
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(count), str(mib)], capture_output=True,
                         text=True, check=True, env={**clean, **(env or {})})
    tuned, faults = out.stdout.split()
    return tuned == "True", float(faults)


def test_tuning_stops_the_page_faults_of_every_large_allocation() -> None:
    tuned, faults = _probe("tune")
    default_tuned, default_faults = _probe("default")
    assert tuned and not default_tuned
    pages = 4 * (1 << 20) // 4096
    assert default_faults > 0.9 * pages, default_faults  # glibc's start: a fresh mapping per map
    assert faults < 0.05 * pages, faults  # tuned: the freed block is reused


def test_tuning_keeps_maps_whose_total_exceeds_the_default_trim_threshold() -> None:
    """Four 24 MiB maps (CMT-S's stage-1 maps at batch 8 are 25.7 MB): 96 MiB freed at the heap top, more
    than glibc's 64 MiB-class trim thresholds keep, so a smaller trim threshold would hand them back and
    fault every page in again on the next forward."""
    tuned, faults = _probe("tune", count=4, mib=24)
    assert tuned
    assert faults < 0.05 * (24 * (1 << 20) // 4096), faults


_MODEL_PROBE = """
import sys, torch
from scaling import PRESETS, build_cmt
from scaling._allocator import _state
model = build_cmt(PRESETS["cmt_ti"], img_size=64).train(sys.argv[1] == "train")
with torch.set_grad_enabled(sys.argv[2] == "grad"):
    model(torch.randn(2, 3, 64, 64))
print(bool(_state["tuned"]))
"""


@pytest.mark.parametrize(("mode", "grad", "expected"), [("eval", "no_grad", True), ("eval", "grad", False),
                                                        ("train", "no_grad", False), ("train", "grad", False)])
def test_a_cmt_tunes_on_its_first_cpu_inference_forward_only(mode: str, grad: str, expected: bool) -> None:
    """`timm.create_model("cmt_s").eval()` gets the setting with no extra call: an eval forward under
    ``no_grad`` makes it (where the inference kernels run); a training forward, or one with gradients on,
    leaves the process's allocator alone."""
    out = subprocess.run([sys.executable, "-c", _MODEL_PROBE, mode, grad], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[-1] == str(expected)


def test_the_environment_switch_turns_it_off() -> None:
    tuned, faults = _probe("tune", {"CMT_SCALE_TUNE_ALLOCATOR": "0"})
    assert not tuned and faults > 0.9 * (4 * (1 << 20) // 4096)
