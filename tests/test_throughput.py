"""measure_throughput: sane figures and clear errors (speed itself is measured in benchmarks/, not here)."""

from __future__ import annotations

import pytest
import torch

from scaling import build_cmt, measure_throughput


def test_throughput_figures_are_consistent(tiny_cfg) -> None:
    result = measure_throughput(build_cmt(tiny_cfg), batch_size=4, img_size=64, threads=1, warmup=1, repeats=3)
    assert result.img_per_s > 0 and result.batch_size == 4 and result.threads == 1
    assert result.ms_per_img * result.img_per_s == pytest.approx(1000.0)
    assert result.ms_per_batch == pytest.approx(4 * result.ms_per_img)
    assert torch.get_num_threads() >= 1  # threads restored after the measurement


def test_bf16_autocast_path_runs(tiny_cfg) -> None:
    result = measure_throughput(build_cmt(tiny_cfg), batch_size=2, img_size=64, dtype=torch.bfloat16, repeats=2)
    assert result.img_per_s > 0


@pytest.mark.parametrize("kwargs, message", [(dict(batch_size=0), "batch_size=0"), (dict(repeats=0), "repeats=0"),
                                             (dict(device="cuda"), "device='cuda' is not available")])
def test_bad_arguments(tiny_cfg, kwargs, message) -> None:
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=message):
        measure_throughput(build_cmt(tiny_cfg), img_size=64, **kwargs)
