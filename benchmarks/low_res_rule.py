"""The measurement behind the protocol's ``low_res`` rule: native strides or the first downsampling halved?

At 32 px a native CMT or EfficientNet ends on a 1x1 map and a native DeiT (16-px patch) on a 2x2 token
grid. ``adapt`` halves each family's first downsampling alike (CMT's first stem conv and EfficientNet's
stem conv at stride 1, DeiT's patch 8 px). This script trains each family's sweep member (the member its
recipe was chosen on) under both rules, with its family's recipe, on the cheap rung's budget, over
several seeds, and prints validation top-1 (mean and std), MACs counted on what trains, and wall time.

    python benchmarks/low_res_rule.py --dataset fashion-mnist --seeds 0,1 [--train-size N] [--epochs E]

Results: benchmarks/RESULTS.md ("Low-resolution rule").
"""

from __future__ import annotations

import argparse
import statistics
import time

from _machine import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--families", default="cmt_compound,deit,efficientnet")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train-size", type=int, default=None, help="default: the cheap rung's")
    parser.add_argument("--epochs", type=int, default=None, help="default: the cheap rung's")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from cmt_scale.proxy import DEFAULT_PROTOCOL, get_family, load_dataset, train_and_evaluate
    from cmt_scale.search import with_family_recipes

    base = with_family_recipes(DEFAULT_PROTOCOL.replace(dataset=args.dataset, threads=args.threads))
    if args.train_size is not None:
        base = base.replace(train_size=args.train_size)
    if args.epochs is not None:
        base = base.replace(epochs=args.epochs)
    classes = load_dataset(base.dataset, base.data_root, base.download, load_size=base.resolution).num_classes
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"CPU: {cpu_name()} | torch {torch.__version__} | {args.threads} threads | {base.dataset} @"
          f"{base.resolution}px, {base.train_size or 'all'} images x {base.epochs} epochs, seeds {seeds}")
    print("| family | member | rule | MACs | top-1 % (mean ± std) | seeds | wall s / run |")
    print("|---|---|---|---|---|---|---|")
    for name in args.families.split(","):
        family = get_family(name)
        for rule in ("native", "adapt"):
            protocol = base.replace(low_res=rule)
            recipe = family.recipe(protocol)
            member = family.member(family.sweep_values, protocol, classes)
            scores, walls = [], []
            for seed in seeds:
                trained = recipe.applied_to(protocol.replace(seed=seed))
                torch.manual_seed(seed)
                start = time.perf_counter()
                result = train_and_evaluate(member.build(recipe.drop_path_rate), trained, progress=False,
                                            name=member.name, cost=(member.macs, member.params))
                walls.append(time.perf_counter() - start)
                scores.append(result.final_top1)
            spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
            print(f"| {name} | {member.name} | {rule} | {member.macs / 1e6:.1f}M | {statistics.fmean(scores):.2f}"
                  f"{spread} | {len(scores)} | {statistics.fmean(walls):.0f} |", flush=True)


if __name__ == "__main__":
    main()
