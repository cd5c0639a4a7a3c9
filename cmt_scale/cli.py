"""``cmt-scale``: the CMT family member that costs what you can afford, and the family around it.

Thin on purpose: every command parses, calls `scaling`, and prints; anything it shows can be had from
Python. The default command (no sub-command) is the solver. torch and timm are imported only by the
paths that need a real model (``--verify``, ``--target-latency``, ``profile``), so the main job answers
in well under two seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import scaling
from scaling import PAPER_TABLE, PRESETS, CMTConfig, estimate_cost
from scaling._compound import family, parse_stage_ratio
from scaling._solver import Solution, solve
from scaling._units import format_count, parse_count

from ._common import (
    _glue_negative_values,
    _numbers,
    _Parser,
    _Progress,
    _promotion_args,
    _promotion_from,
    _protocol_args,
    _protocol_from,
)
from ._study_commands import run_ablate_command, run_fidelity_command, run_fit_command, run_sweep_command

# Options whose value may start with "-" (a negative number is bad input to report, not an unknown option).
_VALUE_OPTIONS = ("--target-flops", "--target-params", "--target-latency", "--alpha", "--beta", "--gamma", "--phi",
                  "--stage-ratio")

MAIN_EXAMPLES = """\
FLOPs are multiply-adds (the CMT, DeiT and EfficientNet papers' convention: 4G = 4e9 MACs).

examples:
  cmt-scale --target-flops 4G                   the member that costs 4 GFLOPs
  cmt-scale --target-params 25M --json          by parameters, as JSON
  cmt-scale --target-flops 1.5G --resolution 224 --stage-ratio 1:1:8:1
  cmt-scale --target-flops 4G --verify --save member.json
  cmt-scale --target-latency 20ms --device cpu --batch-size 1
  cmt-scale family --phi -2:2:0.5 [--csv family.csv]
  cmt-scale profile cmt_s                       fvcore count by module and operator
  cmt-scale presets
  cmt-scale search --space cmt_compound --dataset fashion-mnist --trials 40 --out runs/cmt
  cmt-scale baselines --dataset fashion-mnist --out runs/baselines
  cmt-scale report --published --out report/published
  cmt-scale report runs/cmt runs/baselines --levels 80,85 --reference cmt_compound --out report/mine
  cmt-scale fit-coefficients --dataset fashion-mnist --resolution 64 --base-phi -2 --out runs/fit
  cmt-scale ablate-scaling --dataset fashion-mnist --resolution 64 --base-phi -2 --out runs/ablation
  cmt-scale proxy-fidelity --dataset fashion-mnist --out runs/fidelity
  cmt-scale sweep-recipes --dataset fashion-mnist --out runs/recipes
"""


def _coefficient_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="cmt_s", help="phi = 0 member: cmt_ti, cmt_xs, cmt_s, cmt_b or a JSON config "
                        "(default: cmt_s, as in the paper)")
    parser.add_argument("--alpha", type=float, default=1.2, help="depth multiplier per unit phi (paper: 1.2)")
    parser.add_argument("--beta", type=float, default=1.3, help="width multiplier per unit phi (paper: 1.3)")
    parser.add_argument("--gamma", type=float, default=1.15, help="resolution multiplier per unit phi (paper: 1.15)")
    parser.add_argument("--stage-ratio", help="split depth across stages in this ratio, e.g. 3:3:16:3")
    parser.add_argument("--resolution", type=int, help="pin the input size (a multiple of 32) instead of scaling it")


def _main_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cmt-scale",
        description="Print the member of the CMT family (Guo et al., CVPR 2022) that costs a target, ready to build.",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("target (give exactly one)")
    target.add_argument("--target-flops", help="multiply-adds per image: 4G, 400M, 4e9, 4.0GFLOPs")
    target.add_argument("--target-params", help="parameters: 25M, 2.5e7")
    target.add_argument("--target-latency",
                        help="measured forward time of one batch: 20ms, 0.02s (a plain number is ms)")
    _coefficient_args(parser)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for --target-latency (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1, help="for --target-latency (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads for --target-latency (default: torch's)")
    parser.add_argument("--verify", action="store_true", help="also build the member and count it with fvcore")
    parser.add_argument("--json", action="store_true", help="print the solution as JSON instead of a table")
    parser.add_argument("--save", metavar="PATH", help="write the member's config as JSON (CMTConfig.from_json, "
                        "timm.create_model('cmt_custom', config=PATH))")
    parser.add_argument("--version", action="version", version=f"cmt-scale {_version()}")
    return parser


def _family_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmt-scale family", description="A table of compound-scaled members over a phi range.")
    parser.add_argument("--phi", default="-2:2:0.5", help="START:STOP:STEP (inclusive) or a comma list (default -2:2:0.5)")
    _coefficient_args(parser)
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV ('-' for stdout only)")
    return parser


def _profile_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmt-scale profile", description="fvcore count of a member by module and by operator.")
    parser.add_argument("model", help="a preset (cmt_ti, cmt_xs, cmt_s, cmt_b) or a JSON config file")
    parser.add_argument("--img-size", type=int, help="count at this resolution (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    return parser


def _search_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmt-scale search", description="Search a space with the proxy protocol (resumable).",
                     epilog="example: cmt-scale search --space search_spaces/cmt_compound.yaml --dataset fashion-mnist "
                            "--trials 40 --out runs/cmt")
    parser.add_argument("--space", required=True, help="a space YAML file or a shipped one: cmt_compound, cmt_free, "
                        "deit, efficientnet")
    parser.add_argument("--trials", type=int, help="finished trials wanted (default 20; a grid space: its size)")
    parser.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    parser.add_argument("--mode", choices=("pareto", "budget"), default="pareto",
                        help="pareto: maximise top-1 and minimise MACs; budget: top-1 under the budget, with pruning")
    parser.add_argument("--study", help="study name (default: the run folder's name)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db)")
    parser.add_argument("--out", help="run folder (default runs/<space name>)")
    parser.add_argument("--address", help="Ray cluster to join: auto, host:port or ray://host:port")
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="Ray: CPUs (and torch threads) per trial")
    parser.add_argument("--num-cpus", type=int, help="Ray: CPUs of a local cluster (default: all)")
    parser.add_argument("--search-seed", type=int, default=0, help="the sampler's seed")
    _protocol_args(parser)
    _promotion_args(parser, default_on=True)
    return parser


def _baselines_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmt-scale baselines", description="Train the baseline families under the protocol.")
    parser.add_argument("--families", default="deit,efficientnet", help="comma list (default deit,efficientnet)")
    parser.add_argument("--out", default="runs/baselines", help="run folder (default runs/baselines)")
    parser.add_argument("--seeds", default="0,1", help="seeds each member trains with (default 0,1)")
    _protocol_args(parser)
    _promotion_args(parser, default_on=False)
    return parser


def _print_summary(console: Console, summary: Any) -> None:
    table = Table(title=f"Pareto front (top-1 vs MACs) of {summary.run_dir}, {summary.rung} rung", title_justify="left")
    for col in ("trial", "family", "name", "MACs", "params", "top-1 % (mean ± std)", "seeds"):
        table.add_column(col, justify="left" if col in ("trial", "family", "name") else "right")
    for row in summary.front:
        spread = f" ± {row['top1_std']:.2f}" if row["seeds"] > 1 else ""
        table.add_row(str(row["trial_id"]), row["family"], row["name"], format_count(row["macs"]),
                      format_count(row["params"]), f"{row['top1_final']:.2f}{spread}", str(row["seeds"]))
    console.print(table)
    console.print(f"trials: {summary.counts()} | wall {summary.wall_s:.0f}s | results: "
                  f"{summary.run_dir / 'results.parquet'} and results.csv")


def run_search_command(argv: Sequence[str], console: Console) -> int:
    args = _search_parser().parse_args(argv)
    from cmt_scale.search import run_search, with_family_recipes
    from search_spaces import load_space

    space = load_space(args.space)
    protocol = with_family_recipes(_protocol_from(args))
    out = args.out or f"runs/{Path(args.space).stem}"
    if args.trials is None:
        args.trials = len(space.grid) if space.sampler == "grid" else 20
    progress = _Progress(console, f"search {space.family} ({space.source}) on {protocol.dataset}, {args.trials} "
                         f"trials, backend {args.backend}, protocol {protocol.protocol_hash} -> {out}", args.trials)
    summary = run_search(space, protocol, args.trials, out, backend=args.backend, study=args.study,
                         storage=args.storage, mode=args.mode, address=args.address,
                         cpus_per_trial=args.cpus_per_trial, num_cpus=args.num_cpus, seed=args.search_seed,
                         command=["cmt-scale", "search", *argv],
                         on_trial=progress.trial, on_start=progress.start, promotion=_promotion_from(args))
    _print_summary(console, summary)
    return 0


def run_baselines_command(argv: Sequence[str], console: Console) -> int:
    args = _baselines_parser().parse_args(argv)
    from cmt_scale.proxy import baseline_families, get_family
    from cmt_scale.search import run_baselines

    protocol = _protocol_from(args)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    seeds = tuple(_numbers(args.seeds, "--seeds", int))
    promotion = _promotion_from(args)
    members = sum(len(get_family(f).members) for f in families if f in baseline_families())
    progress = _Progress(console, f"baselines {','.join(families)} on {protocol.dataset}: {members} members x "
                         f"{len(seeds)} seeds on the cheap rung" + (", then each family's front on the reference rung"
                                                                   if promotion else ""),
                         None if promotion else members * len(seeds))  # the promoted count is known only later
    summary = run_baselines(protocol, args.out, families, seeds=seeds, promotion=promotion,
                            command=["cmt-scale", "baselines", *argv], on_trial=progress.trial)
    _print_summary(console, summary)
    return 0


def _report_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmt-scale report", description="Fronts, hypervolume and accuracy-at-equal-MACs tables "
                     "for runs and/or the papers' published numbers; writes CSV, markdown, PNG and SVG.",
                     epilog="examples: cmt-scale report --published --out report/published ; "
                            "cmt-scale report runs/fmnist_cmt runs/fmnist_baselines --out report/fmnist")
    parser.add_argument("runs", nargs="*", help="run folders (or their results.parquet/.csv)")
    parser.add_argument("--published", action="store_true", help="include the papers' ImageNet numbers")
    parser.add_argument("--out", default="report", help="folder for the tables and figures (default report/)")
    parser.add_argument("--budgets", default="", help="MACs budgets for top-1 columns, e.g. 1G,4G")
    parser.add_argument("--levels", default="", help="top-1 levels for MACs-needed columns, e.g. 80,82")
    parser.add_argument("--reference", help="family the MACs ratios are relative to (e.g. cmt)")
    parser.add_argument("--rung", choices=("cheap", "reference"), help="training rung to report (default: the longest "
                        "the runs have; a report never mixes rungs)")
    parser.add_argument("--title", default="", help="figure title")
    return parser


def run_report(argv: Sequence[str], console: Console) -> int:
    args = _report_parser().parse_args(argv)
    from analysis import headline_comparison, write_report

    budgets = [parse_count(b, "--budgets") for b in args.budgets.split(",") if b.strip()]
    try:
        levels = [float(v) for v in args.levels.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--levels={args.levels!r} is not allowed; allowed: numbers like 80,82") from None
    if args.published and not args.runs:
        levels = levels or [80.0, 82.0, 83.0]
        reference = args.reference or "cmt"
    else:
        reference = args.reference
    report = write_report(args.runs, args.out, published=args.published, budgets=budgets, levels=levels,
                          reference_family=reference, title=args.title, rung=args.rung)
    table = report.table
    out = Table(title=f"families compared ({', '.join(args.runs) or 'published numbers'}; rung {report.rung})",
                title_justify="left")
    out.add_column("family")
    for column in table.columns:
        out.add_column(str(column), justify="right")
    for family_name, row in table.iterrows():
        cells = []
        for column, value in row.items():
            text = "-" if value != value else (format_count(value) if str(column).startswith("macs_for") else f"{value:.3g}")
            cells.append(text)
        out.add_row(str(family_name), *cells)
    console.print(out)
    for note in report.notes:
        console.print(note, markup=False, highlight=False)
    if args.published:
        head = Table(title="CMT-S against its rivals (published ImageNet numbers)", title_justify="left")
        for col in ("rival", "rival top-1", "CMT-S top-1", "rival MACs / CMT-S MACs"):
            head.add_column(col, justify="right")
        for row in headline_comparison():
            head.add_row(row.rival, f"{row.rival_top1:.1f}", f"{row.ours_top1:.1f}", f"{row.macs_ratio:.2f}x")
        console.print(head)
    console.print(f"written: {args.out}/comparison.csv, comparison.md, fronts.csv, fronts.png, fronts.svg")
    return 0


def _presets_parser() -> argparse.ArgumentParser:
    return _Parser(prog="cmt-scale presets", description="The paper's presets: our exact counts beside the paper's.")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cmt-scale")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


def _load_model_config(name_or_path: str) -> CMTConfig:
    key = name_or_path.strip().lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    if name_or_path.endswith(".json"):
        return CMTConfig.from_json(name_or_path)
    raise ValueError(f"unknown model {name_or_path!r}; allowed: {', '.join(PRESETS)} or a JSON config file")


_MAX_PHIS = 10_000


def _parse_phis(spec: str) -> list[float]:
    """``START:STOP:STEP`` (STOP included when the steps land on it) or ``0,0.5,1``; finite, at most 10,000."""
    message = f"--phi={spec!r} is not allowed; allowed: START:STOP:STEP with STEP > 0 (at most {_MAX_PHIS:,} values), " \
              "or a list like 0,0.5,1"
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if not all(math.isfinite(v) for v in (start, stop, step)) or step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > _MAX_PHIS:
                raise ValueError
            return [round(start + i * step, 6) for i in range(count)]
        values = [float(x) for x in spec.split(",")]
        if not all(math.isfinite(v) for v in values):
            raise ValueError
        return values
    except ValueError:
        raise ValueError(message) from None


def _arch_rows(cfg: CMTConfig) -> dict[str, str]:
    return {
        "resolution": str(cfg.img_size),
        "stem": str(cfg.stem_channels),
        "dims": "-".join(map(str, cfg.embed_dims)),
        "depths": "-".join(map(str, cfg.depths)),
        "heads": "-".join(map(str, cfg.num_heads)),
        "sr ratios": "-".join(map(str, cfg.sr_ratios)),
        "mlp ratios": "-".join(f"{r:g}" for r in cfg.mlp_ratios),
    }


def _nearest_presets(macs: float, count: int = 2) -> list[str]:
    return sorted(PRESETS, key=lambda n: abs(math.log(estimate_cost(PRESETS[n]).macs / macs)))[:count]


def _print_solution(console: Console, sol: Solution, verify: dict[str, Any] | None) -> None:
    target = f"{sol.target:g} ms" if sol.target_kind == "latency" else format_count(sol.target)
    table = Table(title=f"CMT member for target {sol.target_kind} = {target}", title_justify="left",
                  caption="FLOPs = multiply-adds (MACs), the CMT/DeiT/EfficientNet papers' convention",
                  caption_justify="left")
    table.add_column("", style="bold")
    table.add_column("solved", style="green")
    near = _nearest_presets(sol.macs)
    for name in near:
        table.add_column(name, style="dim")
    near_costs = {n: estimate_cost(PRESETS[n]) for n in near}
    table.add_row("phi", f"{sol.phi:+.2f}", *["" for _ in near])
    solved, presets = _arch_rows(sol.config), {n: _arch_rows(PRESETS[n]) for n in near}
    for key, value in solved.items():
        table.add_row(key, value, *[presets[n][key] for n in near])
    table.add_row("params", format_count(sol.params), *[format_count(near_costs[n].params) for n in near])
    table.add_row("MACs (FLOPs)", format_count(sol.macs), *[format_count(near_costs[n].macs) for n in near])
    if sol.latency_ms is not None:
        table.add_row("latency", f"{sol.latency_ms:.2f} ms", *["" for _ in near])
    table.add_row("error vs target", f"{100 * sol.error:+.2f}%", *["" for _ in near])
    table.add_row("cost vs base", f"{sol.realised_ratio:.2f}x (rule: {sol.nominal_ratio:.2f}x)", *["" for _ in near])
    if verify is not None:
        table.add_row("fvcore MACs", format_count(verify["macs"]), *["" for _ in near])
    console.print(table)
    departures = ", ".join(sol.adjustments) if sol.adjustments else "none (the rule's own member)"
    console.print(f"rounding neighbourhood: {departures}")
    if verify is not None:
        gap = verify["macs"] / sol.macs - 1
        console.print(f"fvcore check: {verify['macs']:,} MACs ({100 * gap:+.3f}% vs analytic); "
                      f"unsupported ops: {verify['unsupported_ops'] or 'none'}")


def _verify(cfg: CMTConfig) -> dict[str, Any]:
    profile = scaling.count_flops(cfg)
    return {"macs": profile.macs, "params": profile.params, "unsupported_ops": profile.unsupported_ops}


def run_solve(argv: Sequence[str], console: Console) -> int:
    args = _main_parser().parse_args(_glue_negative_values(argv, _VALUE_OPTIONS))
    targets = [t for t in (args.target_flops, args.target_params, args.target_latency) if t is not None]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} is not allowed; allowed: an integer >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads={args.threads} is not allowed; allowed: an integer >= 1")
    if len(targets) != 1:
        raise ValueError("give exactly one of --target-flops, --target-params, --target-latency "
                         f"(got {len(targets) or 'none'}); e.g. cmt-scale --target-flops 4G")
    sol = solve(
        target_flops=args.target_flops, target_params=args.target_params, target_latency_ms=args.target_latency,
        base=_load_model_config(args.base) if args.base.endswith(".json") else args.base,
        resolution=args.resolution, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
        stage_ratio=parse_stage_ratio(args.stage_ratio) if args.stage_ratio else None,
        device=args.device, batch_size=args.batch_size, threads=args.threads,
    )
    verify = _verify(sol.config) if args.verify else None
    if args.save:
        sol.config.to_json(args.save)
    if args.json:
        out = sol.to_dict()
        if verify is not None:
            out["fvcore"] = verify
        print(json.dumps(out, indent=2))
    else:
        _print_solution(console, sol, verify)
        if args.save:
            console.print(f"saved to {args.save}: timm.create_model('cmt_custom', config={args.save!r})")
    return 0


def run_family(argv: Sequence[str], console: Console) -> int:
    args = _family_parser().parse_args(_glue_negative_values(argv, _VALUE_OPTIONS))
    base = _load_model_config(args.base)
    members = family(_parse_phis(args.phi), base=base, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                     stage_ratio=parse_stage_ratio(args.stage_ratio) if args.stage_ratio else None,
                     resolution=args.resolution)
    header = ["phi", "resolution", "stem", "dims", "depths", "params", "macs", "realised_ratio", "nominal_ratio"]
    rows = [[f"{m.phi:+.2f}", *list(_arch_rows(m.config).values())[:4], m.params, m.macs,
             f"{m.realised_ratio:.3f}", f"{m.nominal_ratio:.3f}"] for m in members]
    if args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        if args.csv == "-":
            sys.stdout.write(buffer.getvalue())
            return 0
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
    table = Table(title=f"compound family of {args.base} (alpha={args.alpha}, beta={args.beta}, gamma={args.gamma})",
                  title_justify="left")
    for col in ("phi", "res", "stem", "dims", "depths", "params", "MACs", "cost vs base", "rule promises"):
        table.add_column(col, justify="right")
    for row, member in zip(rows, members):  # ratios from the members, not the CSV's rounded text: 0.4251 -> 0.43x
        table.add_row(*row[:5], format_count(row[5]), format_count(row[6]), f"{member.realised_ratio:.2f}x",
                      f"{member.nominal_ratio:.2f}x")
    console.print(table)
    if args.csv:
        console.print(f"written to {args.csv}")
    return 0


def run_profile(argv: Sequence[str], console: Console) -> int:
    args = _profile_parser().parse_args(argv)
    cfg = _load_model_config(args.model)
    if args.img_size is not None:
        cfg = cfg.replace(img_size=args.img_size)
    profile = scaling.count_flops(cfg)
    if args.json:
        print(json.dumps({"macs": profile.macs, "params": profile.params, "img_size": profile.img_size,
                          "by_part": profile.by_part(), "by_operator": profile.by_operator,
                          "unsupported_ops": profile.unsupported_ops,
                          "elementwise_ops_counted_as_zero": profile.elementwise_ops}, indent=2))
        return 0
    analytic = estimate_cost(cfg)
    table = Table(title=f"{args.model} at {profile.img_size}px: {format_count(profile.macs)} MACs (fvcore), "
                        f"{format_count(profile.params)} params", title_justify="left")
    for col in ("module", "MACs", "share", "analytic"):
        table.add_column(col, justify="right" if col != "module" else "left")
    for part, macs in profile.by_part().items():
        table.add_row(part, format_count(macs), f"{100 * macs / profile.macs:.1f}%",
                      format_count(analytic.macs_by_part.get(part, 0)))
    console.print(table)
    ops = Table(title="by operator", title_justify="left")
    ops.add_column("operator")
    ops.add_column("MACs", justify="right")
    ops.add_column("share", justify="right")
    for op, macs in sorted(profile.by_operator.items(), key=lambda kv: -kv[1]):
        ops.add_row(op, format_count(macs), f"{100 * macs / profile.macs:.1f}%")
    console.print(ops)
    console.print(f"unsupported ops (not counted): {profile.unsupported_ops or 'none'}")
    console.print(f"element-wise ops (zero by convention): {profile.elementwise_ops or 'none'}")
    return 0


def run_presets(argv: Sequence[str], console: Console) -> int:
    _presets_parser().parse_args(argv)
    table = Table(title="CMT presets: exact counts (this toolkit = the official code) and the paper's figures",
                  title_justify="left")
    for col in ("preset", "res", "stem", "dims", "depths", "params", "paper", "MACs", "paper", "top-1"):
        table.add_column(col, justify="right")
    for name, cfg in PRESETS.items():
        cost, paper = estimate_cost(cfg), PAPER_TABLE[name]
        rows = _arch_rows(cfg)
        table.add_row(name, rows["resolution"], rows["stem"], rows["dims"], rows["depths"], format_count(cost.params),
                      f"{paper.params_m:.2f}M", format_count(cost.macs), f"{paper.flops_g:.1f}G", f"{paper.top1:.1f}")
    console.print(table)
    return 0


def _one_line(err: BaseException) -> str:
    """The error as one line that names the bad value and what is allowed; a file-system error (``[Errno 2] No
    such file or directory: 'x'``) says so in those words too."""
    if isinstance(err, OSError) and err.filename is not None and not isinstance(err, FileExistsError):
        problem = (err.strerror or type(err).__name__).lower()
        if isinstance(err, FileNotFoundError):
            allowed = "an existing file, or a new file in an existing folder"
        elif isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)):
            allowed = "a file path you can read or write"
        else:
            allowed = "a path this machine can read or write"
        return f"path {str(err.filename)!r} is not allowed ({problem}); allowed: {allowed}"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmt-scale`` console script; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped output gets a wide console so tables are not truncated to 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    commands = {"family": run_family, "profile": run_profile, "presets": run_presets, "search": run_search_command,
                "baselines": run_baselines_command, "report": run_report, "fit-coefficients": run_fit_command,
                "ablate-scaling": run_ablate_command, "proxy-fidelity": run_fidelity_command,
                "sweep-recipes": run_sweep_command}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:], console)
        return run_solve(argv, console)
    except (ValueError, OSError, OverflowError) as err:
        prog = f"cmt-scale {argv[0]}" if argv and argv[0] in commands else "cmt-scale"
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every finished trial is already in the run folder's table; the study resumes from there.
        print("cmt-scale: interrupted; finished trials are saved, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
