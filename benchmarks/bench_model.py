"""Inference speed of CMT against timm's DeiT and EfficientNet, interleaved in one process.

Prints the CPU it ran on (ratios hold on that machine kind only), then for each batch size (default 1
and 8; batch 1 is what ``--target-latency`` uses) img/s and ms per batch (median of repeats, per round)
and each model's ratio to DeiT-S in the same precision, for:
- CMT-S as users build it (``timm.create_model("cmt_s").eval()``, NCHW input), in fp32 and bf16;
- CMT-Ti@160 and CMT-S@224 as built (eager, fp32), after `fuse_for_inference`, in bf16 autocast, CMT-S's
  mixed-precision copy (``fuse_for_inference(amp_dtype=torch.bfloat16)``: weights cast once) beside DeiT-S
  given the same treatment,
  and (``--compile``) ``fuse_for_inference(compile=True)`` (torch.compile with freezing), in fp32 and, where
  bf16 rows run, bf16 beside DeiT-S compiled the same way (bf16 ratios stay against eager DeiT-S bf16);
- timm deit_small_patch16_224, deit_tiny_patch16_224, efficientnet_b0@224, efficientnet_b3@300;
- bf16 vs fp32 top-1 agreement on a CMT trained briefly on scikit-learn's digits (if installed);
- `estimate_cost` vs `count_flops` time per call.

Each row also reports its minor page faults per batch, the cost of activation maps that malloc handed back
to the OS and had to fault in again (see ``--allocator``).

The rows of CMT-S with "plain path" run with the fused kernels switched off (PyTorch's own GELU,
BatchNorm and depthwise convolutions), to show what the inference kernels add; the rows with "shape rule" route
the 1x1 projections by the fixed shape rule instead of timing both routes per shape (`scaling._pointwise_route`),
to show what the timed choice adds; the rows with "K V apart" keep each attention's K and V projections as two
calls, to show what merging them (`LightweightAttention.merge_key_value`) adds; the row with "cast per call"
has autocast cast the projections' weights on every call, to show what casting them once in autocast
inference (`scaling._autocast_weights`) adds. ``--allocator`` sets what the
process's malloc does: ``auto`` (default) is what a user's process gets, glibc as it starts until a CMT's
first CPU inference forward calls `tune_cpu_allocator` (an untimed pass over every row comes first, so all
timed rounds, DeiT-S's included, run in that process); ``off`` sets ``CMT_SCALE_TUNE_ALLOCATOR=0`` (glibc
as it starts throughout: the picture before the setting); ``tuned`` calls it before anything runs.

Usage: python benchmarks/bench_model.py [--threads 2] [--batch-sizes 1,8] [--rounds 3] [--rows cmt_s] [--compile]
                                        [--allocator auto|off|tuned]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from _machine import ALLOCATOR_HELP, ALLOCATOR_MODES, apply_allocator_mode, has_native_bf16, machine_line


class _Switched(torch.nn.Module):
    """Runs the wrapped model with one of our switches set another way, for a row that shows what it adds."""

    def __init__(self, model: torch.nn.Module, switch: Callable[[], contextlib.AbstractContextManager]) -> None:
        super().__init__()
        self.model, self.switch = model, switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.switch():
            return self.model(x)


@contextlib.contextmanager
def _kernels_off():
    """The fused kernels switched off: PyTorch's own modules throughout (the "plain path")."""
    from scaling import fused_kernels_available, set_fused_kernels

    before = fused_kernels_available()  # the environment switch may have them off for every row
    set_fused_kernels(False)
    try:
        yield
    finally:
        set_fused_kernels(before)


def _shape_rule() -> contextlib.AbstractContextManager:
    """1x1 projections routed by the fixed shape rule instead of the timed choice (`scaling._pointwise_route`)."""
    return mock.patch.dict(os.environ, {"CMT_SCALE_POINTWISE_ROUTE": "rule"})


def _cast_per_call() -> contextlib.AbstractContextManager:
    """Autocast casting the fp32 weights on every call, as before the projections', patch-merging convs' and
    classifier's were cast once and kept in autocast inference (`scaling._autocast_weights`)."""
    return mock.patch("scaling._autocast_weights._ENABLED", False)


def _key_value_apart(model: torch.nn.Module, amp_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """`fuse_for_inference` with each attention's K and V projections left apart (two calls, not one)."""
    from scaling import fuse_for_inference
    from scaling._blocks import LightweightAttention

    with mock.patch.object(LightweightAttention, "merge_key_value", lambda self: None):
        return fuse_for_inference(model, amp_dtype=amp_dtype)


def _models(compile_too: bool, bf16: bool):
    import timm

    from scaling import PRESETS, build_cmt, fuse_for_inference
    from scaling._inference import _FrozenCompiled, _MixedPrecision  # DeiT-S treated exactly as CMT is
    cmt_ti, cmt_s = build_cmt(PRESETS["cmt_ti"]).eval(), build_cmt(PRESETS["cmt_s"]).eval()
    deit_small = timm.create_model("deit_small_patch16_224").eval()
    as_users_build = timm.create_model("cmt_s").eval()  # NCHW weights and input, no extra call
    rows = [
        # name, model, img_size, channels_last, dtype
        ("deit_small_patch16_224", deit_small, 224, False, None),
        ("deit_tiny_patch16_224", timm.create_model("deit_tiny_patch16_224").eval(), 224, False, None),
        ("efficientnet_b0", timm.create_model("efficientnet_b0").eval(), 224, True, None),
        ("efficientnet_b3", timm.create_model("efficientnet_b3").eval(), 300, True, None),
        ("cmt_ti@160", cmt_ti, 160, True, None),
        ("cmt_ti@160 fused", fuse_for_inference(cmt_ti), 160, True, None),
        ("cmt_ti@160 fused bf16", fuse_for_inference(cmt_ti), 160, True, torch.bfloat16),
        ("cmt_s timm.create_model", as_users_build, 224, False, None),
        ("cmt_s timm.create_model plain path", _Switched(as_users_build, _kernels_off), 224, False, None),
        ("cmt_s timm.create_model shape rule", _Switched(as_users_build, _shape_rule), 224, False, None),
        ("cmt_s timm.create_model bf16", as_users_build, 224, False, torch.bfloat16),
        ("cmt_s timm.create_model shape rule bf16", _Switched(as_users_build, _shape_rule), 224, False,
         torch.bfloat16),
        ("cmt_s timm.create_model cast per call bf16", _Switched(as_users_build, _cast_per_call), 224, False,
         torch.bfloat16),
        ("cmt_s@224", cmt_s, 224, True, None),
        ("cmt_s@224 fused", fuse_for_inference(cmt_s), 224, True, None),
        ("cmt_s@224 fused plain path", _Switched(fuse_for_inference(cmt_s), _kernels_off), 224, True, None),
        ("cmt_s@224 fused K V apart", _key_value_apart(cmt_s), 224, True, None),
        ("cmt_s@224 fused bf16", fuse_for_inference(cmt_s), 224, True, torch.bfloat16),
        ("cmt_s@224 fused amp_dtype bf16", fuse_for_inference(cmt_s, amp_dtype=torch.bfloat16), 224, True,
         torch.bfloat16),
        ("cmt_s@224 fused amp_dtype K V apart bf16", _key_value_apart(cmt_s, torch.bfloat16), 224, True,
         torch.bfloat16),
        ("deit_small bf16", deit_small, 224, False, torch.bfloat16),
        # the fair reference for the row above: DeiT-S's linears' weights cast once the same way
        ("deit_small weights cast once bf16", _MixedPrecision(copy.deepcopy(deit_small), torch.bfloat16), 224,
         False, torch.bfloat16),
    ]
    if not bf16:
        rows = [row for row in rows if row[4] is None]
    if compile_too:
        rows.append(("cmt_s@224 fused compiled", fuse_for_inference(cmt_s, compile=True), 224, True, None))
        if bf16:  # DeiT-S compiled the same way too: the fair reference for a compiled CMT
            deit = _FrozenCompiled(timm.create_model("deit_small_patch16_224").eval())
            rows += [("cmt_s@224 fused compiled bf16", fuse_for_inference(cmt_s, compile=True), 224, True,
                      torch.bfloat16),
                     ("deit_small compiled bf16", deit, 224, False, torch.bfloat16)]
    return rows


def _minor_page_faults() -> int:
    """The process's minor page faults so far (each a page the kernel zero-filled and mapped): what a freed
    and re-allocated activation map costs when malloc hands it back to the OS in between."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_throughput(args: argparse.Namespace, batch_size: int) -> None:
    from scaling import measure_throughput
    from scaling._pointwise_route import chosen_routes

    rows = [row for row in _models(args.compile, args.bf16)
            if not args.rows or row[0].startswith("deit_small") or any(row[0].startswith(p) for p in args.rows)]
    results: dict[str, list[float]] = {name: [] for name, *_ in rows}
    faults: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for name, model, size, channels_last, dtype in rows:  # untimed: the process as after a user's first forward
        measure_throughput(model, batch_size, size, threads=args.threads, channels_last=channels_last, dtype=dtype,
                           warmup=0, repeats=1)
    for _ in range(args.rounds):  # round-robin: machine noise hits every model alike
        for name, model, size, channels_last, dtype in rows:
            before = _minor_page_faults()
            result = measure_throughput(model, batch_size, size, threads=args.threads,
                                        channels_last=channels_last, dtype=dtype, warmup=2, repeats=args.repeats)
            faults[name].append((_minor_page_faults() - before) / (2 + args.repeats))
            results[name].append(result.img_per_s)
    medians = {name: statistics.median(values) for name, values in results.items()}
    fp32_ref, bf16_ref = medians["deit_small_patch16_224"], medians.get("deit_small bf16", math.nan)
    print(f"\nbatch {batch_size}, {args.threads} threads, median of {args.rounds} rounds of {args.repeats} batches")
    width = max(len(name) for name in results)
    print(f"{'model':{width}s} {'img/s':>8s} {'ms/batch':>9s} {'x DeiT-S':>9s} {'faults/batch':>13s}   rounds (img/s)")
    for name, values in results.items():
        reference = bf16_ref if name.endswith("bf16") else fp32_ref  # each precision against DeiT-S in it
        med = medians[name]
        print(f"{name:{width}s} {med:8.1f} {1000 * batch_size / med:9.1f} {med / reference:9.2f} "
              f"{statistics.median(faults[name]):13,.0f}   {' '.join(f'{v:.1f}' for v in values)}")
    routes = list(chosen_routes().values())
    print(f"1x1 projections: {len(routes)} shapes timed so far in this process, {routes.count('gemm')} run as "
          f"the GEMM, {routes.count('conv')} as oneDNN's 1x1 conv (rows with \"shape rule\": the fixed rule)")
    if {"cmt_s@224 fused bf16", "cmt_s@224 fused"} <= medians.keys():
        print(f"CMT-S bf16 / fp32 (fused): {medians['cmt_s@224 fused bf16'] / medians['cmt_s@224 fused']:.2f}x; "
              f"bf16 rows are relative to DeiT-S bf16 ({bf16_ref:.1f} img/s)")
    if {"cmt_s@224 fused amp_dtype bf16", "deit_small weights cast once bf16"} <= medians.keys():
        same_treatment = medians["cmt_s@224 fused amp_dtype bf16"] / medians["deit_small weights cast once bf16"]
        print(f"CMT-S amp_dtype copy / DeiT-S with its weights cast once the same way: {same_treatment:.2f}x")


def bench_bf16_agreement(threads: int) -> None:
    """Train a small CMT on digits briefly, then compare fp32 and bf16 predictions on the held-out half."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("\nbf16 agreement: skipped (pip install scikit-learn)")
        return
    import torch.nn.functional as F

    from scaling import PRESETS, build_cmt, fuse_for_inference

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=64, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    split = len(x) // 2
    cfg = PRESETS["cmt_ti"].replace(img_size=64, num_classes=10, depths=(1, 1, 2, 1), drop_rate=0.0,
                                    drop_path_rate=0.0)
    model = build_cmt(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    for _epoch in range(4):
        perm = torch.randperm(split)
        for i in range(0, split, 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    fast = fuse_for_inference(model)
    with torch.inference_mode():
        fp32 = fast(x[split:]).argmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = fast(x[split:]).argmax(-1)
    target = y[split:]
    print(f"\nbf16 agreement (CMT-Ti-shaped, 64 px, trained 4 epochs on digits, {len(target)} held-out images):")
    print(f"  top-1 fp32 {100 * (fp32 == target).float().mean():.2f}%"
          f"  bf16 {100 * (bf16 == target).float().mean():.2f}%"
          f"  same prediction {100 * (fp32 == bf16).float().mean():.2f}%")


def bench_cost_models() -> None:
    from scaling import PRESETS, count_flops, estimate_cost

    cfg = PRESETS["cmt_s"]
    count_flops(cfg)  # warm-up: first trace pays lazy initialisation
    start = time.perf_counter()
    for _ in range(3):
        count_flops(cfg)
    fvcore_s = (time.perf_counter() - start) / 3
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        estimate_cost(cfg)
    analytic_s = (time.perf_counter() - start) / n
    print(f"\ncost of CMT-S: estimate_cost {analytic_s * 1e6:.0f} us/call, count_flops (build + trace) "
          f"{fvcore_s * 1e3:.0f} ms/call: {fvcore_s / analytic_s:,.0f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="time bf16 autocast rows (auto: only on a CPU with AVX-512 BF16 or AMX)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma list (1 is --target-latency's batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=lambda text: [p for p in text.split(",") if p], default=[],
                        help="time only the rows whose names start with these (comma list; DeiT-S always runs, "
                             "in each precision), e.g. cmt_s for more rounds of CMT-S in the same time")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about 1 min to compile)")
    parser.add_argument("--allocator", choices=ALLOCATOR_MODES, default="auto", help=ALLOCATOR_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"allocator: {apply_allocator_mode(args.allocator)}")
    args.bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and has_native_bf16())
    if not args.bf16:
        print("bf16 rows skipped: this CPU has no native bf16 (emulated, slower than fp32); --bf16 yes times them")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        bench_throughput(args, batch_size)
    bench_bf16_agreement(args.threads)
    bench_cost_models()


if __name__ == "__main__":
    main()
