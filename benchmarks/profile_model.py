"""Where CMT-S's inference time goes, per op and per block part, beside DeiT-S (issue: CMT on every CPU).

For each precision (fp32, bf16 autocast) and batch size (1, 8) it prints:
- the total time per batch of CMT-S (as users build it: ``timm.create_model("cmt_s").eval()``, NCHW) and of
  timm's DeiT-S, and of CMT-S after ``fuse_for_inference`` (channels-last);
- per op: torch.profiler's self CPU time of the top ops, as a share of the whole forward;
- per part: stem, patch merging, LPU (depthwise 3x3), lightweight attention, IRFFN, the rest of each block
  (its LayerNorms and residual adds) and the head, timed with forward hooks (CPU ops run synchronously,
  so a hook pair brackets exactly that module's work).

Its shares say which kernels to fuse or replace on this machine kind; they are not comparable across kinds.

Usage: python benchmarks/profile_model.py [--threads 2] [--batch-sizes 1,8] [--precisions fp32,bf16] [--top 12]
                                          [--allocator auto|off|tuned]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import torch
import torch.nn as nn
from _machine import ALLOCATOR_HELP, ALLOCATOR_MODES, apply_allocator_mode, machine_line


def _parts(model: nn.Module) -> dict[nn.Module, str]:
    """The CMT modules whose time is reported, each with its part's name."""
    from scaling._blocks import CMTBlock, InvertedResidualFFN, LightweightAttention, PatchMerging

    parts: dict[nn.Module, str] = {model.stem: "stem"}
    for module in model.modules():
        if isinstance(module, PatchMerging):
            parts[module] = "patch merging"
        elif isinstance(module, CMTBlock):
            parts[module] = "block (whole)"
            parts[module.lpu] = "LPU dwconv"
        elif isinstance(module, LightweightAttention):
            parts[module] = "attention"
        elif isinstance(module, InvertedResidualFFN):
            parts[module] = "IRFFN"
    return parts


@contextlib.contextmanager
def _timed_parts(model: nn.Module, totals: dict[str, float]):
    """Forward hooks adding each part's wall time to ``totals``."""
    starts: dict[nn.Module, float] = {}
    handles = []
    for module, name in _parts(model).items():
        def pre(mod, _inputs):
            starts[mod] = time.perf_counter()

        def post(mod, _inputs, _output, name=name):
            totals[name] += time.perf_counter() - starts.pop(mod)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model: nn.Module, batch: torch.Tensor, dtype: torch.dtype | None) -> None:
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        model(batch)


def _op_shares(model: nn.Module, batch: torch.Tensor, dtype, repeats: int, top: int) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            _forward(model, batch, dtype)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [(e.key, 100.0 * e.self_cpu_time_total / total) for e in ranked]


def _part_shares(model: nn.Module, batch: torch.Tensor, dtype, repeats: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    with _timed_parts(model, totals):
        start = time.perf_counter()
        for _ in range(repeats):
            _forward(model, batch, dtype)
        whole = time.perf_counter() - start
    inner = totals["LPU dwconv"] + totals["attention"] + totals["IRFFN"]
    shares = {name: 100.0 * totals[name] / whole for name in
              ("stem", "patch merging", "LPU dwconv", "attention", "IRFFN")}
    rest = "block rest (LayerNorm, adds)"
    if not totals["LPU dwconv"]:  # the inference kernel runs the LPU from its weights: no module call to time
        del shares["LPU dwconv"]
        rest = "block rest (LPU kernel, LayerNorm, adds)"
    shares[rest] = 100.0 * (totals["block (whole)"] - inner) / whole
    shares["head and the rest"] = 100.0 - sum(shares.values())
    return shares


def main() -> None:
    import timm

    from scaling import fuse_for_inference, measure_throughput

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--allocator", choices=ALLOCATOR_MODES, default="auto", help=ALLOCATOR_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), f"| {args.threads} threads | allocator: {apply_allocator_mode(args.allocator)}")
    cmt = timm.create_model("cmt_s").eval()
    fused = fuse_for_inference(cmt)
    deit = timm.create_model("deit_small_patch16_224").eval()
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    for precision in args.precisions.split(","):
        dtype = dtypes[precision]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            batch = torch.randn(batch_size, 3, 224, 224)
            times = {label: measure_throughput(model, batch_size, 224, channels_last=channels_last, dtype=dtype,
                                               warmup=2, repeats=args.repeats).ms_per_batch
                     for label, model, channels_last in (("DeiT-S", deit, False), ("CMT-S as built", cmt, False),
                                                         ("CMT-S fused, channels-last", fused, True))}
            print(f"\n== {precision}, batch {batch_size}: ms per batch "
                  + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
                  + f" (CMT-S as built at {times['DeiT-S'] / times['CMT-S as built']:.2f}x DeiT-S's speed)")
            for label, model, x in (("CMT-S as built", cmt, batch), ("DeiT-S", deit, batch)):
                print(f"-- {label}: top ops by self CPU time (% of the forward)")
                for key, share in _op_shares(model, x, dtype, args.repeats, args.top):
                    print(f"   {share:5.1f}%  {key}")
            print("-- CMT-S as built: time per part (% of the forward, forward hooks)")
            for name, share in _part_shares(cmt, batch, dtype, args.repeats).items():
                print(f"   {share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
