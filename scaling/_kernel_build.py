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


def _capability_flags() -> tuple[str, list[str]]:
    """ATen's vector width for this CPU, as the ``CPU_CAPABILITY`` defines and ``-m`` flags ATen's own
    kernels are built with (so `at::vec::Vectorized` has the width the CPU runs)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX512", "AVX512_BF16", "AMX") or capability.startswith("AVX512"):
        return "avx512", ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
                          "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]
    if capability == "AVX2":
        return "avx2", ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return "default", ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]


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


def _load() -> bool:
    """Compile (first time) and load the kernels; False, with one warning, when that is impossible."""
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    _state["loaded"] = False
    tag, flags = _capability_flags()
    cflags = ["-O3", "-fopenmp", *flags]
    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(cflags).encode() + torch.__version__.encode())
    name = f"cmt_scale_kernels_{tag}_{digest.hexdigest()[:12]}"
    torch_log, quiet = logging.getLogger("torch.utils.cpp_extension"), _DropMessages()
    torch_log.addFilter(quiet)  # only for this call: the user's own logging of torch is left alone
    try:
        from torch.utils.cpp_extension import load  # its import logs "No CUDA runtime" on a CPU machine

        build = _build_directory(name)
        if not (build / f"{name}.so").exists():  # a slow first step, explained
            log.info("compiling the fused CPU kernels (%s) once, about 30 s", tag)
        load(name=name, sources=[str(_SOURCE)], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
             build_directory=str(build), is_python_module=False, verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: train on the plain path
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
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
