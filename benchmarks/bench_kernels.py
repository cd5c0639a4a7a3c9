"""The inference kernels' element-wise passes against PyTorch's own ops for the same work, in one process.

Why: on some CPU kinds CMT-S's time goes less to its matmuls than to the passes between them (GELU + BatchNorm
after each expansion, the IRFFN's depthwise 3x3 with its residual, GELU and BatchNorm), and those run at very
different rates per kind and precision (benchmarks/RESULTS.md). This prints each kernel's rate in Gelem/s and
its speed against the ATen ops a plain eval forward runs instead (``F.gelu`` then the BatchNorm's affine; the
depthwise ``F.conv2d`` on a channels-last map, the residual add, ``F.gelu`` and the affine), timed
interleaved, and the largest difference between the two outputs relative to the largest output: the check
that both compute the same (in bf16 ATen rounds every op's output to bf16 and the kernels only the last, so
there they differ by a bf16 step or two).

Usage: python benchmarks/bench_kernels.py [--threads 2] [--calls 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _interleaved import interleaved_median_ms  # noqa: E402
from _machine import machine_line  # noqa: E402

# (B, H, W, C): CMT-S's IRFFN hidden maps at 224 px, stage 1 at batch 8 and 1, stage 3 at batch 8.
SHAPES = ((8, 56, 56, 256), (1, 56, 56, 256), (8, 14, 14, 1024))


def main() -> None:
    from scaling import fused_kernels_available

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), f"| {args.threads} threads")
    if not fused_kernels_available():
        sys.exit("the fused CPU kernels are not available on this machine (see the warning above)")
    ops = torch.ops.cmt_scale
    print(f"{'kernel':<38} {'dtype':<8} {'shape (B,H,W,C)':<18} {'ms':>7} {'Gelem/s':>8} {'ATen ms':>8} {'x ATen':>7} "
          f"{'rel. diff':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            channels = shape[-1]
            x = (torch.randn(shape) * 3).to(dtype)
            nchw = x.permute(0, 3, 1, 2)  # the same memory as a channels-last NCHW map, as ATen's path sees it
            scale, shift, bias = torch.rand(channels) + 0.5, torch.randn(channels), torch.randn(channels)
            taps = torch.randn(9 * channels)
            weight = taps.view(3, 3, channels).permute(2, 0, 1).unsqueeze(1).to(dtype)  # (C, 1, 3, 3)
            affine = (scale.to(dtype).view(1, -1, 1, 1), shift.to(dtype).view(1, -1, 1, 1))
            pairs = {
                "GELU + BN (act_affine)": (
                    lambda: ops.act_affine(x.view(-1, channels), scale, shift, 1),
                    lambda: torch.addcmul(affine[1], F.gelu(nchw), affine[0])),
                "depthwise 3x3 + residual + GELU + BN": (
                    lambda: ops.dwconv3x3_forward(x, taps, bias, True, 1, scale, shift),
                    lambda: torch.addcmul(affine[1], F.gelu(nchw + F.conv2d(nchw, weight, bias.to(dtype), 1, 1,
                                                                             groups=channels)), affine[0])),
                "depthwise 3x3 + residual": (
                    lambda: ops.dwconv3x3_forward(x, taps, bias, True, 0, None, None),
                    lambda: nchw + F.conv2d(nchw, weight, bias.to(dtype), 1, 1, groups=channels)),
            }
            with torch.inference_mode():
                for name, (kernel, aten) in pairs.items():
                    ms = interleaved_median_ms({"kernel": kernel, "aten": aten}, args.calls)
                    reference = aten().permute(0, 2, 3, 1).float()
                    diff = (kernel().float().view(x.shape) - reference).abs().max() / reference.abs().max()
                    print(f"{name:<38} {str(dtype).split('.')[-1]:<8} {str(shape):<18} {ms['kernel']:7.2f} "
                          f"{x.numel() / ms['kernel'] / 1e6:8.2f} {ms['aten']:8.2f} {ms['aten'] / ms['kernel']:6.2f}x "
                          f"{diff.item():10.2e}")


if __name__ == "__main__":
    main()
