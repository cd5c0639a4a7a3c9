"""Accuracy of CMT-Ti, DeiT-Ti and EfficientNet-B0 under the default proxy protocol, over seeds.

Trains each model with `DEFAULT_PROTOCOL` (Fashion-MNIST, 32 px, 8000 training images, 3 epochs,
validation held out from train) for every seed, scores the test split too, and also trains CMT-Ti in
bf16 autocast so its accuracy stands beside fp32's. Writes one row per run to ``--out`` (CSV) and
prints mean ± std per model.

Usage: python benchmarks/proxy_accuracy.py [--seeds 0 1 2] [--out proxy_accuracy.csv]
"""

from __future__ import annotations

import argparse
import csv
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="proxy_accuracy.csv")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from cmt_scale.proxy import DEFAULT_PROTOCOL, build_baseline, train_and_evaluate
    from scaling import PRESETS

    runs = [("cmt_ti", "fp32"), ("deit_tiny", "fp32"), ("efficientnet_b0", "fp32"), ("cmt_ti", "bf16")]
    rows = []
    for seed in args.seeds:
        for name, precision in runs:
            protocol = DEFAULT_PROTOCOL.replace(seed=seed, precision=precision, eval_test=True, threads=args.threads)
            model = PRESETS[name] if name.startswith("cmt") else build_baseline(name, 10, protocol.resolution)
            result = train_and_evaluate(model, protocol, progress=False, name=name)
            row = dict(model=name, precision=precision, seed=seed, state=result.state, val_top1=result.final_top1,
                       test_top1=result.test_top1, macs=result.macs, params=result.params,
                       train_img_per_s=round(result.train_img_per_s, 1),
                       data_time_share=round(result.data_time_share, 4), wall_s=round(result.wall_s, 1),
                       protocol_hash=result.protocol_hash)
            print(row, flush=True)
            rows.append(row)
    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'model':18s} {'precision':9s} {'test top-1 mean ± std':>22s} {'MACs':>10s} {'img/s':>7s}")
    for name, precision in runs:
        mine = [r for r in rows if r["model"] == name and r["precision"] == precision]
        tops = [r["test_top1"] for r in mine]
        spread = statistics.stdev(tops) if len(tops) > 1 else 0.0
        print(f"{name:18s} {precision:9s} {statistics.mean(tops):15.2f} ± {spread:4.2f} {mine[0]['macs'] / 1e6:9.1f}M "
              f"{statistics.median(r['train_img_per_s'] for r in mine):7.0f}")


if __name__ == "__main__":
    main()
