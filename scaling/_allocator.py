"""Keeping freed activation memory in the process instead of handing it back to the OS after every op.

Why: glibc's malloc serves blocks above its mmap threshold (128 KiB to start, growing to what was last
freed) with a fresh ``mmap`` and returns them with ``munmap`` on free, and trims the heap top once more than
its trim threshold is free there. A CMT's early stages make many short-lived maps of 1-30 MB (CMT-S at 224
px: 56x56 maps of 256 channels, 3.2 MB per image), so in eager inference the kernel zero-fills and maps
their pages again on every op: measured 13,800 page faults per batch-1 forward against DeiT-S's 211 (AMD
EPYC, KVM guest), about a fifth of CMT-S's time. Fixing both thresholds keeps those blocks in the heap for
the next op, as jemalloc and tcmalloc do by design (what PyTorch's CPU performance guides preload). The trim
threshold has to exceed the free space a forward leaves at the heap top: at batch 8 CMT-S's first stage
frees several 25.7 MB maps at once, so a 64 MiB threshold still trimmed them away and the next op faulted
them in again (55,000 page faults a forward, benchmarks/RESULTS.md); 1 GiB does not.

The setting is process-wide (it is the process's allocator, not the model's). A CMT makes it itself on its
first CPU inference forward (eval mode under ``no_grad`` or ``inference_mode``, where its inference kernels
run), and `fuse_for_inference` makes it too; `tune_cpu_allocator` is the call for anything else, and
``CMT_SCALE_TUNE_ALLOCATOR=0`` turns it off everywhere. Cost: freed blocks below 32 MiB stay in the process
for reuse instead of going back to the OS, so resident memory stays near the process's peak rather than
falling after it (the trim threshold, 1 GiB, only bounds the free space kept at the top of the heap; blocks
freed beneath a live one are kept whatever their total). For a long-lived process that peaks once and then
idles, ``malloc_trim(0)`` returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["tune_cpu_allocator"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the values set: blocks below 32 MiB (the largest mmap threshold
# glibc accepts on 64-bit) come from the heap; up to 1 GiB of free heap top is kept.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024
_ENV_SWITCH = "CMT_SCALE_TUNE_ALLOCATOR"

_state: dict[str, bool | None] = {"tuned": None}


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (musl, macOS and Windows have no such thresholds to set)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process (once); True when they are set.

    False, and nothing changed, off glibc or with ``CMT_SCALE_TUNE_ALLOCATOR=0``. Another allocator
    preloaded with ``LD_PRELOAD`` (jemalloc, tcmalloc) already keeps freed memory; the call is then harmless.

    Example:
        >>> from scaling import tune_cpu_allocator
        >>> tune_cpu_allocator()  # doctest: +SKIP
        True
    """
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    _state["tuned"] = False
    if os.environ.get(_ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc malloc thresholds %s", "set" if ok else "refused")
    _state["tuned"] = ok
    return ok
