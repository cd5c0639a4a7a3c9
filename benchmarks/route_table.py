"""CMT-S's 1x1 projections, shape by shape, timed on both routes: oneDNN's 1x1 convolution and the GEMM.

Why: CPU inference picks a route per shape by timing both once in the process (`scaling._pointwise_route`),
and the fixed shape rule is what it falls back to. When a whole-model A/B says one of them is faster but the
timed choice picked the other, this table says whether the per-shape timings themselves disagree with the
model (timing noise, or a route that runs faster alone than inside the forward) or the choice was made badly.

For each distinct projection of CMT-S as users build it (input shape, weight shape) at each batch size and
precision: the median ms of each route over interleaved calls, its GMAC/s, how often that shape occurs in one
forward, the route the process's timed choice took, and the rule's route; then the forward's projection time
summed under each policy (all conv, all GEMM, the rule, the timed choice, the per-shape best).

Usage: python benchmarks/route_table.py [--threads 2] [--batch-sizes 1,8] [--precisions fp32,bf16] [--calls 15]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _interleaved import interleaved_median_ms  # noqa: E402
from _machine import machine_line  # noqa: E402


def _projection_calls(model: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None) -> dict:
    """One forward of ``model`` (which also makes the process's timed route choices for its shapes), and its
    1x1 projection calls grouped by (input shape, input dtype, weight shape, bias): each group's call count
    and one of its modules."""
    from scaling._blocks import PointwiseLinear

    groups: dict[tuple, list] = {}  # signature -> [count, a module]

    def record(module: torch.nn.Module, args: tuple) -> None:
        signature = (tuple(args[0].shape), args[0].dtype, tuple(module.weight.shape), module.bias is not None)
        groups.setdefault(signature, [0, module])[0] += 1

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, PointwiseLinear)]
    with _precision(dtype):
        model(batch)
    for hook in hooks:
        hook.remove()
    return groups


@contextlib.contextmanager
def _precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Inference as `bench_model.py` runs it: ``inference_mode``, and CPU autocast to ``dtype`` if given."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yield


def main() -> None:
    import timm

    from scaling._autocast_weights import autocast_weights
    from scaling._blocks import _GEMM_MAX_POSITIONS_INFERENCE, _pointwise_conv
    from scaling._pointwise_route import chosen_routes, route_key

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), f"| {args.threads} threads")
    model = timm.create_model("cmt_s").eval()
    for precision in args.precisions.split(","):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            groups = _projection_calls(model, torch.randn(batch_size, 3, 224, 224), dtype)
            choices = chosen_routes()
            print(f"\n== {precision}, batch {batch_size}")
            print(f"{'input (B,H,W,C)':>20} {'out':>5} {'n':>3} {'conv ms':>8} {'gemm ms':>8} {'conv GMAC/s':>11} "
                  f"{'gemm GMAC/s':>11}  timed  rule")
            totals: Counter = Counter()
            for (shape, input_dtype, _, _), (count, module) in sorted(groups.items(),
                                                                     key=lambda item: -item[0][0][1] * item[0][0][2]):
                with _precision(dtype):
                    x = torch.randn(shape).to(input_dtype)
                    weight, bias = autocast_weights(module, x, module.weight, module.bias)
                    key = route_key(x.shape, x.stride(), x.dtype, weight.shape, weight.dtype,
                                    None if bias is None else bias.dtype)
                    ms = interleaved_median_ms({"conv": lambda: _pointwise_conv(x, weight, bias),
                                                "gemm": lambda: F.linear(x, weight, bias)}, args.calls)
                macs = x.numel() // shape[-1] * weight.numel()
                timed = choices.get(key, "?")
                rule = "gemm" if shape[1] * shape[2] <= _GEMM_MAX_POSITIONS_INFERENCE else "conv"
                totals.update({"all conv": count * ms["conv"], "all gemm": count * ms["gemm"],
                               "rule": count * ms[rule], "best": count * min(ms.values())})
                totals["timed"] += count * ms.get(timed, float("nan"))
                print(f"{str(shape):>20} {weight.shape[0]:>5} {count:>3} {ms['conv']:8.3f} {ms['gemm']:8.3f} "
                      f"{macs / ms['conv'] / 1e6:11.1f} {macs / ms['gemm'] / 1e6:11.1f}  {timed:>5}  {rule:>4}")
            print("projections per forward, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
