"""The search commands: ``search``, ``baselines`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from scaling import format_count, parse_count

from ._base import (
    Command,
    Progress,
    UsageError,
    add_backend_args,
    add_promotion_args,
    add_protocol_args,
    backend_from,
    numbers,
    promotion_from,
    protocol_from,
    with_sizes_note,
)

__all__ = ["BaselinesCommand", "ReportCommand", "SearchCommand"]


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



class SearchCommand(Command):
    name = "search"
    help = "search a space with the proxy protocol, then re-measure its front on the reference rung (resumable)"
    epilog = "example: cmt-scale search --space cmt_compound --dataset fashion-mnist --trials 40 --out runs/cmt"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--space", required=True, help="a space YAML file or a shipped one: cmt_compound, "
                            "cmt_free, deit, efficientnet")
        parser.add_argument("--trials", type=int, help="finished trials wanted (default 20; a grid space: its size)")
        parser.add_argument("--mode", choices=("pareto", "budget"), default="pareto",
                            help="pareto: maximise top-1 and minimise MACs; budget: top-1 under the budget, "
                                 "with pruning")
        parser.add_argument("--study", help="study name (default: the run folder's name)")
        parser.add_argument("--out", help="run folder (default runs/<space name>)")
        add_backend_args(parser)
        add_protocol_args(parser, "search.DEFAULT_SEARCH_PROTOCOL, the cheap rung: 15,000 images x 1 epoch")
        add_promotion_args(parser, default_on=True)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.search import DEFAULT_SEARCH_PROTOCOL, planned_trials, run_search, with_family_recipes
        from search_spaces import load_space

        space = load_space(args.space)
        protocol = with_family_recipes(protocol_from(args, DEFAULT_SEARCH_PROTOCOL))
        backend = backend_from(args)
        out = args.out or f"runs/{Path(args.space).stem}"
        trials = planned_trials(space, args.trials)
        progress = Progress(console, with_sizes_note(
            f"search {space.family} ({space.source}) on {protocol.dataset}, {trials} trials, backend {backend.name}, "
            f"protocol {protocol.protocol_hash} -> {out}", args), trials)
        summary = run_search(space, protocol, out, args.trials, backend=backend, mode=args.mode, study=args.study,
                             promotion=promotion_from(args), hooks=progress.hooks(["cmt-scale", *args.argv]),
                             reuse=args.reuse)
        _print_summary(console, summary)
        return 0


class BaselinesCommand(Command):
    name = "baselines"
    help = "train every member of the baseline families under the protocol, with seeds"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--families", default="deit,efficientnet", help="comma list (default deit,efficientnet)")
        parser.add_argument("--out", default="runs/baselines", help="run folder (default runs/baselines)")
        parser.add_argument("--seeds", default="0,1", help="seeds each member trains with (default 0,1)")
        add_protocol_args(parser)
        add_promotion_args(parser, default_on=False)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.proxy import baseline_families, get_family
        from cmt_scale.search import run_baselines

        protocol = protocol_from(args)
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        seeds = tuple(numbers(args.seeds, "--seeds", int))
        promotion = promotion_from(args)
        members = sum(len(get_family(f).members) for f in families if f in baseline_families())
        progress = Progress(console, with_sizes_note(
            f"baselines {','.join(families)} on {protocol.dataset}: {members} members x {len(seeds)} seeds on the "
            "cheap rung" + (", then each family's front on the reference rung" if promotion else ""), args),
                            None if promotion else members * len(seeds))  # the promoted count is known only later
        summary = run_baselines(protocol, args.out, families, seeds=seeds, promotion=promotion,
                                hooks=progress.hooks(["cmt-scale", *args.argv]), reuse=args.reuse)
        _print_summary(console, summary)
        return 0


class ReportCommand(Command):
    name = "report"
    help = "fronts, hypervolume and accuracy-at-equal-MACs tables; CSV, markdown, PNG and SVG"
    epilog = ("examples: cmt-scale report --published --out report/published ; "
              "cmt-scale report runs/fmnist_cmt runs/fmnist_baselines --out report/fmnist")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("runs", nargs="*", help="run folders (or their results.parquet/.csv)")
        parser.add_argument("--published", action="store_true", help="include the papers' ImageNet numbers")
        parser.add_argument("--out", default="report", help="folder for the tables and figures (default report/)")
        parser.add_argument("--budgets", default="", help="MACs budgets for top-1 columns, e.g. 1G,4G")
        parser.add_argument("--levels", default="", help="top-1 levels for MACs-needed columns, e.g. 80,82")
        parser.add_argument("--reference", help="family the MACs ratios are relative to (e.g. cmt)")
        parser.add_argument("--rung", choices=("cheap", "reference"), help="training rung to report "
                            "(default: the longest the runs have; a report never mixes rungs)")
        parser.add_argument("--title", default="", help="figure title")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from analysis import headline_comparison, write_report

        budgets = [parse_count(b, "--budgets") for b in args.budgets.split(",") if b.strip()]
        try:
            levels = [float(v) for v in args.levels.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--levels={args.levels!r} is not allowed; allowed: numbers like 80,82") from None
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
                text = "-" if value != value else (format_count(value) if str(column).startswith("macs_for")
                                                   else f"{value:.3g}")
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
