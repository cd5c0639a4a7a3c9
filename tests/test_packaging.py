"""What the distribution installs: a wheel built from this checkout, read as pip would unpack it.

Generic top-level names (``proxy``, ``search``, ``studies``) collide with other distributions (``proxy.py``
installs a top-level ``proxy``) and with users' own folders, so everything the toolkit adds lives under
``cmt_scale``; only the packages the users asked for stand beside it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_TOP_LEVEL = {"scaling", "search_spaces", "analysis", "cmt_scale"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("cmt_scale-*.whl")
    return path


def _top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return {name.split("/", 1)[0] for name in names if "/" in name and not name.split("/", 1)[0].endswith(".dist-info")}


def test_the_wheel_installs_only_the_four_top_level_packages(wheel: Path) -> None:
    assert _top_level_names(wheel) == ALLOWED_TOP_LEVEL


def test_the_wheel_carries_the_data_files_the_packages_read(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for needed in ("search_spaces/recipes.yaml", "search_spaces/cmt_compound.yaml", "analysis/data/published.csv",
                   "scaling/_cpu_kernels.cpp", "cmt_scale/proxy/__init__.py", "cmt_scale/search/__init__.py",
                   "cmt_scale/studies/__init__.py"):
        assert needed in names, needed
    with zipfile.ZipFile(wheel) as archive:
        top_level = archive.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode()
    assert set(top_level.split()) == ALLOWED_TOP_LEVEL
