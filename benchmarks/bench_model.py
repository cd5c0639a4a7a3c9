"""Inference speed of CMT against timm's DeiT and EfficientNet, interleaved in one process.

Prints img/s (median of repeats, per round) and each model's ratio to DeiT-S, for:
- CMT-Ti@160 and CMT-S@224 as built (eager, fp32), after `fuse_for_inference`, in bf16 autocast,
  and (``--compile``) under torch.compile;
- timm deit_small_patch16_224, deit_tiny_patch16_224, efficientnet_b0@224, efficientnet_b3@300;
- bf16 vs fp32 top-1 agreement on a CMT trained briefly on scikit-learn's digits (if installed);
- `estimate_cost` vs `count_flops` time per call.

Usage: python benchmarks/bench_model.py [--threads 2] [--batch-size 8] [--rounds 3] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _models(compile_too: bool):
    import timm

    from scaling import PRESETS, build_cmt, fuse_for_inference

    cmt_ti, cmt_s = build_cmt(PRESETS["cmt_ti"]).eval(), build_cmt(PRESETS["cmt_s"]).eval()
    rows = [
        # name, model, img_size, channels_last, dtype
        ("deit_small_patch16_224", timm.create_model("deit_small_patch16_224").eval(), 224, False, None),
        ("deit_tiny_patch16_224", timm.create_model("deit_tiny_patch16_224").eval(), 224, False, None),
        ("efficientnet_b0", timm.create_model("efficientnet_b0").eval(), 224, True, None),
        ("efficientnet_b3", timm.create_model("efficientnet_b3").eval(), 300, True, None),
        ("cmt_ti@160", cmt_ti, 160, True, None),
        ("cmt_ti@160 fused", fuse_for_inference(cmt_ti), 160, True, None),
        ("cmt_ti@160 fused bf16", fuse_for_inference(cmt_ti), 160, True, torch.bfloat16),
        ("cmt_s@224", cmt_s, 224, True, None),
        ("cmt_s@224 fused", fuse_for_inference(cmt_s), 224, True, None),
        ("cmt_s@224 fused bf16", fuse_for_inference(cmt_s), 224, True, torch.bfloat16),
        ("deit_small bf16", timm.create_model("deit_small_patch16_224").eval(), 224, False, torch.bfloat16),
    ]
    if compile_too:
        rows.append(("cmt_s@224 fused compiled", fuse_for_inference(cmt_s, compile=True), 224, True, None))
    return rows


def bench_throughput(args: argparse.Namespace) -> None:
    from scaling import measure_throughput

    rows = _models(args.compile)
    results: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for _ in range(args.rounds):  # round-robin: machine noise hits every model alike
        for name, model, size, channels_last, dtype in rows:
            result = measure_throughput(model, args.batch_size, size, threads=args.threads,
                                        channels_last=channels_last, dtype=dtype, warmup=2, repeats=args.repeats)
            results[name].append(result.img_per_s)
    reference = statistics.median(results["deit_small_patch16_224"])
    print(f"\nthroughput, batch {args.batch_size}, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'model':28s} {'img/s':>8s} {'x DeiT-S':>9s}   rounds")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:28s} {med:8.1f} {med / reference:9.2f}   {' '.join(f'{v:.1f}' for v in values)}")
    s_fp32 = statistics.median(results["cmt_s@224 fused"])
    s_bf16 = statistics.median(results["cmt_s@224 fused bf16"])
    print(f"\nCMT-S bf16 / fp32 (fused): {s_bf16 / s_fp32:.2f}x")


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
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about 1 min to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_throughput(args)
    bench_bf16_agreement(args.threads)
    bench_cost_models()


if __name__ == "__main__":
    main()
