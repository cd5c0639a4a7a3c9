"""Shared test helpers: seeded random CMT configs small enough to build and trace in a fraction of a second."""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for official_reference

from scaling import CMTConfig  # noqa: E402


def random_config(rng: random.Random) -> CMTConfig:
    """A random valid CMT: 1-4 stages, small widths, any head count and K/V reduction the grid allows."""
    stages = rng.randint(1, 4)
    stride = 2 ** (stages + 1)
    img_size = stride * rng.randint(1, max(1, 96 // stride))
    dims, heads, srs = [], [], []
    for i in range(stages):
        h = rng.choice([1, 2, 4])
        heads.append(h)
        dims.append(h * rng.randint(2, 12))
        grid = img_size // 2 ** (i + 2)
        srs.append(rng.choice([k for k in (1, 2, 4, 8) if grid % k == 0]))
    return CMTConfig(
        img_size=img_size,
        in_chans=rng.choice([1, 3]),
        num_classes=rng.choice([0, 5, 10]),
        stem_channels=rng.randint(4, 16),
        embed_dims=tuple(dims),
        depths=tuple(rng.randint(1, 3) for _ in range(stages)),
        num_heads=tuple(heads),
        mlp_ratios=tuple(rng.choice([1.0, 2.5, 3.6, 3.77, 4.0]) for _ in range(stages)),
        sr_ratios=tuple(srs),
        fc_dim=rng.choice([16, 32, 64]),
        qkv_bias=rng.random() < 0.7,
    )


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """The search tests press Ctrl-C (SIGINT) on searches in this process and in CLI children. A shell
    starts a background job with SIGINT ignored (``bash .ci/run &``, nohup-style scripts), and the search
    keeps an inherited ignore on purpose (tested), so there those tests would see nothing happen. The suite
    takes Python's default handler for itself; a child then starts with the default disposition, since
    exec resets a caught signal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture
def tiny_cfg() -> CMTConfig:
    return CMTConfig(
        img_size=64, stem_channels=8, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
        mlp_ratios=(3.6,) * 4, sr_ratios=(8, 4, 2, 1), fc_dim=64, num_classes=7,
    )
