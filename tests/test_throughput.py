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


def test_spread_is_the_repeats_median_absolute_deviation_over_their_median(monkeypatch) -> None:
    """On a clock that each forward advances by a set amount, the figures are hand-computable."""
    from scaling import _throughput

    durations = iter([0.050, 0.050] + [0.010, 0.011, 0.009, 0.013, 0.007])  # 2 warm-up batches, then 5 timed
    clock = [0.0]

    class Stepped(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            clock[0] += next(durations)
            return x

    monkeypatch.setattr(_throughput.time, "perf_counter", lambda: clock[0])
    result = measure_throughput(Stepped(), batch_size=2, img_size=8, warmup=2, repeats=5)
    # median 10 ms; deviations 0, 1, 1, 3, 3 ms -> median 1 ms -> 0.1
    assert result.ms_per_batch == pytest.approx(10.0) and result.spread == pytest.approx(0.1)


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
