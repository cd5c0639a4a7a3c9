"""Building and loading the fused CPU kernels (`scaling/_cpu_kernels.cpp`): compiled on first use with
``torch.utils.cpp_extension`` for the CPU capability torch reports, cached per source, flags and torch
version, and switched by ``CMT_SCALE_FUSED_KERNELS`` or `set_fused_kernels`. `scaling._fused` calls them."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

__all__ = ["fused_kernels_available", "set_fused_kernels"]

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("_cpu_kernels.cpp")
_ENV_SWITCH = "CMT_SCALE_FUSED_KERNELS"


def _activation_codes(source: Path) -> dict[str, int]:
    """The kernels' activation codes, read from their definition in the C++ source (one source of truth)."""
    import re

    found = re.findall(r"constexpr int64_t kAct(\w+) = (\d+);", source.read_text(encoding="utf-8"))
    return {name.lower(): int(code) for name, code in found}


_ACT_CODES = _activation_codes(_SOURCE)

_state: dict[str, bool | None] = {"enabled": None, "loaded": None}


def set_fused_kernels(enabled: bool) -> None:
    """Turn the fused CPU kernels on or off for this process (the environment switch sets the default)."""
    _state["enabled"] = bool(enabled)


def _enabled() -> bool:
    if _state["enabled"] is None:
        _state["enabled"] = os.environ.get(_ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
    return bool(_state["enabled"])


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere, or where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _capability_flags() -> list[tuple[str, list[str]]]:
    """ATen's vector width for this CPU, as the ``CPU_CAPABILITY`` defines and ``-m`` flags ATen's own
    kernels are built with (so `at::vec::Vectorized` has the width the CPU runs): the builds to try, best
    first. Where the CPU has AVX512-BF16 (Zen 4 and later, Intel from Cooper Lake), the first also lets the
    bf16 stores use its conversion instruction; the second, without it, is for a compiler that lacks the flag."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX512", "AVX512_BF16", "AMX") or capability.startswith("AVX512"):
        avx512 = ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
                  "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]
        with_bf16 = [("avx512bf16", [*avx512, "-mavx512bf16"])] if "avx512_bf16" in _cpu_flags() else []
        return [*with_bf16, ("avx512", avx512)]
    if capability == "AVX2":
        return [("avx2", ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"])]
    return [("default", ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"])]


def _build_directory(name: str) -> Path:
    """Where the kernels are built and cached: ``$TORCH_EXTENSIONS_DIR/<name>`` when set (torch's own switch),
    else ``~/.cache/cmt_scale/<name>``. Ours, passed to torch's ``load(build_directory=...)``, so that whether
    a compile is due can be told without torch's private helpers."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "cmt_scale")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _DropMessages(logging.Filter):
    """Drops one logger's records while torch compiles ("No CUDA runtime is found" on a CPU machine)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _build_and_load(tag: str, cflags: list[str]) -> None:
    """Compile the kernels with ``cflags`` (once per source, flags and torch version) and load them."""
    from torch.utils.cpp_extension import load  # its import logs "No CUDA runtime" on a CPU machine

    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(cflags).encode() + torch.__version__.encode())
    name = f"cmt_scale_kernels_{tag}_{digest.hexdigest()[:12]}"
    build = _build_directory(name)
    if not (build / f"{name}.so").exists():  # a slow first step, explained
        log.info("compiling the fused CPU kernels (%s) once, about 30 s", tag)
    load(name=name, sources=[str(_SOURCE)], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
         build_directory=str(build), is_python_module=False, verbose=False)


def _load() -> bool:
    """Compile (first time) and load the kernels; False, with one warning, when that is impossible."""
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    _state["loaded"] = False
    torch_log, quiet = logging.getLogger("torch.utils.cpp_extension"), _DropMessages()
    torch_log.addFilter(quiet)  # only for this call: the user's own logging of torch is left alone
    try:
        failure = None
        for tag, flags in _capability_flags():
            try:
                _build_and_load(tag, ["-O3", "-fopenmp", *flags])
                break
            except Exception as err:  # no compiler, no ninja, a read-only cache, a flag the compiler lacks
                failure = err
        else:
            reason = str(failure).strip().splitlines()[-1] if str(failure).strip() else type(failure).__name__
            warnings.warn(f"cmt-scale: fused CPU kernels unavailable ({reason[:200]}); training uses the plain "
                          f"PyTorch path (set {_ENV_SWITCH}=0 to skip the attempt)", RuntimeWarning, stacklevel=3)
            return False
    finally:
        torch_log.removeFilter(quiet)
    _state["loaded"] = True
    return True


def fused_kernels_available() -> bool:
    """Whether the fused CPU kernels are switched on and built (builds them on the first call)."""
    return _enabled() and _load()
