"""Register the CMT models with timm the moment timm is imported, without importing it ourselves.

``import scaling`` must stay cheap (no torch, no timm: ``cmt-scale --target-flops 4G`` answers in well
under two seconds), yet ``import scaling; timm.create_model("cmt_s")`` must work. So: if timm is already
imported, register now; otherwise a one-shot import hook registers right after timm finishes importing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

_REGISTRATION_MODULE = "scaling._timm"


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps timm's own loader so that our registration runs after timm's code."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding us again
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        timm_exec = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            timm_exec(module)
            importlib.import_module(_REGISTRATION_MODULE)

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def register_with_timm() -> None:
    """Register now if timm is loaded, else as soon as it is."""
    if "timm" in sys.modules:
        importlib.import_module(_REGISTRATION_MODULE)
    elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())
