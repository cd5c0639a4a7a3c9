"""The study commands: ``fit-coefficients``, ``ablate-scaling``, ``proxy-fidelity`` and ``sweep-recipes``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from scaling import counted, format_count

from ._base import (
    Command,
    Progress,
    add_backend_args,
    add_protocol_args,
    backend_from,
    numbers,
    protocol_from,
    with_sizes_note,
)

__all__ = ["AblateCommand", "FidelityCommand", "FitCommand", "SweepCommand"]

# Options whose value may start with "-" (argparse would read "-2,-1" as an option).
_NEGATIVE_OK = ("--base-phi", "--budget-phi", "--phis")


def _base_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="cmt_ti", help="preset the members scale from (default cmt_ti)")
    parser.add_argument("--base-phi", type=float, default=0.0,
                        help="scale the base by the paper's rule to this phi first (e.g. -2 for a cheaper base)")


def _print_frame(console: Console, title: str, frame, columns: dict[str, Any]) -> None:
    """``columns``: header -> function of a row giving the cell text."""
    table = Table(title=title, title_justify="left")
    for header in columns:
        table.add_column(header, justify="right")
    for _, row in frame.iterrows():
        table.add_row(*(fn(row) for fn in columns.values()))
    console.print(table)


def _print_outputs(console: Console, run_dir, stem: str) -> None:
    """Where a study's files are: every study writes the same four kinds."""
    console.print(f"tables: {run_dir / (stem + '.csv')} (.md, .json), figure: {run_dir / (stem + '.png')} (.svg)")


def _pct(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"



def _study_args(args: argparse.Namespace, console: Console, header: str) -> dict[str, Any]:
    """The backend and hooks a study's grids run with; the header waits until the first grid has checked its
    inputs, and the counter covers this process's trials (a study spans several grids, each resumed on its own)."""
    progress = Progress(console, with_sizes_note(header, args))
    return {"backend": backend_from(args), "hooks": progress.hooks(["cmt-scale", *args.argv], per_rung=False)}


class FitCommand(Command):
    name = "fit-coefficients"
    help = "re-fit alpha, beta, gamma at a fixed phi by training each member"
    description = ("Grid-search alpha, beta, gamma at fixed phi under alpha*beta^1.5*gamma^2 = 2.5, "
                   "train each member with the proxy protocol, compare with the paper's triple.")
    epilog = ("example: cmt-scale fit-coefficients --dataset fashion-mnist --resolution 64 "
                   "--base-phi -2 --out runs/fit")
    negative_ok = _NEGATIVE_OK

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--budget-phi", type=float, default=1.0,
                            help="the phi every candidate is scaled to (default 1)")
        parser.add_argument("--step", type=float, default=0.1, help="grid step of alpha and beta (default 0.1)")
        parser.add_argument("--target", type=float, default=2.5,
                            help="alpha*beta^1.5*gamma^2 (default 2.5, the paper's)")
        parser.add_argument("--out", default="runs/fit", help="run folder (default runs/fit)")
        _base_args(parser)
        add_backend_args(parser)
        add_protocol_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.studies import fit_coefficients

        protocol = protocol_from(args)
        header = (f"fit-coefficients at phi={args.budget_phi:g} from {args.base} (base phi {args.base_phi:g}) on "
                  f"{protocol.dataset} @{protocol.resolution}px, protocol {protocol.protocol_hash} -> {args.out}")
        result = fit_coefficients(protocol, args.out, phi=args.budget_phi, base=args.base, base_phi=args.base_phi,
                                  step=args.step, target=args.target,
                                  **_study_args(args, console, header))
        ranked = result.table.sort_values(["top1", "macs"], ascending=[False, True]).head(10)
        _print_frame(console, "Coefficients by validation top-1 (best 10; paper marked *)", ranked, {
            "alpha": lambda r: f"{r['alpha']:g}", "beta": lambda r: f"{r['beta']:g}",
            "gamma": lambda r: f"{r['gamma']:g}",
            "a*b^1.5*g^2": lambda r: f"{r['cost_growth']:.3f}", "res": lambda r: str(r["img_size"]),
            "depths": lambda r: r["depths"], "MACs": lambda r: format_count(r["macs"]),
            "top-1 %": lambda r: _pct(r["top1"]) + ("*" if r["is_paper"] else ""),
        })
        best, paper = result.best, result.paper
        if best:
            console.print(f"best ({best['alpha']:g}, {best['beta']:g}, {best['gamma']:g}): "
                          f"top-1 {_pct(best['top1'])}% at {format_count(best['macs'])} MACs | "
                          f"paper ({paper['alpha']:g}, {paper['beta']:g}, {paper['gamma']:g}): "
                          f"top-1 {_pct(paper['top1'])}% at "
                          f"{format_count(paper['macs'])} MACs | {len(result.table) - 1} grid triples and the paper's, "
                          f"{result.table['trained_as'].nunique()} architectures trained")
        _print_outputs(console, result.run_dir, "fit")
        return 0


class AblateCommand(Command):
    name = "ablate-scaling"
    help = "scale a base by one axis at a time to matched MACs and train each"
    description = ("Scale a base member by depth, width, resolution, stage ratio or compound to matched "
                   "MACs budgets and train each with several seeds.")
    epilog = ("example: cmt-scale ablate-scaling --dataset fashion-mnist --resolution 64 --base-phi -2 "
                   "--out runs/ablation")
    negative_ok = _NEGATIVE_OK

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--multiples", default="2,4", help="MACs budgets as multiples of the base (default 2,4)")
        parser.add_argument("--seeds", default="0,1", help="comma list of seeds each member trains with (default 0,1)")
        parser.add_argument("--stage-ratio", default="2:2:6:2",
                            help="the stage-ratio strategy's split (default 2:2:6:2)")
        parser.add_argument("--out", default="runs/ablation", help="run folder (default runs/ablation)")
        _base_args(parser)
        add_backend_args(parser)
        add_protocol_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.studies import ablate_scaling

        protocol = protocol_from(args)
        multiples, seeds = numbers(args.multiples, "--multiples", float), numbers(args.seeds, "--seeds", int)
        header = (f"ablate-scaling from {args.base} (base phi {args.base_phi:g}) on {protocol.dataset} "
                  f"@{protocol.resolution}px, budgets {multiples}x, seeds {seeds} -> {args.out}")
        result = ablate_scaling(protocol, args.out, base=args.base, base_phi=args.base_phi, multiples=multiples,
                                seeds=seeds, stage_ratio=args.stage_ratio,
                                **_study_args(args, console, header))
        _print_frame(console, "Scaling strategies at matched MACs (validation top-1, mean and std over seeds)",
                     result.members, {
                   "strategy": lambda r: r["strategy"], "budget": lambda r: f"{r['budget_x_base']:.2f}x",
                   "MACs": lambda r: format_count(r["macs"]),
                   "vs budget": lambda r: f"{100 * r['budget_error']:+.1f}%" + ("" if r["matched"] else " (!)"),
                   "res": lambda r: str(r["img_size"]), "depths": lambda r: r["depths"],
                   "widths": lambda r: r["embed_dims"], "top-1 %": lambda r: _pct(r["top1_mean"]),
                   "std": lambda r: _pct(r["top1_std"]),
                     })
        if not result.members["matched"].all():
            console.print("(!) outside 5% of the budget: the axis's rounding has no member nearer (see ablation.csv)")
        _print_outputs(console, result.run_dir, "ablation")
        return 0


class FidelityCommand(Command):
    name = "proxy-fidelity"
    help = "does the cheap rung rank architectures as the reference rung does?"
    description = ("Train the same architectures under a cheap and a reference protocol; compare the "
                   "rankings (Spearman, Kendall with bootstrap intervals, top-k overlap).")
    epilog = ("The protocol flags set the cheap protocol (default: a search's cheap rung); --reference-* "
                   "change the reference (default: a search's reference rung).")
    negative_ok = _NEGATIVE_OK

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--phis", default="-2,-1.5,-1,-0.5,0,0.5", help="compound members of --base (comma list)")
        parser.add_argument("--base", default="cmt_ti", help="preset the compound members scale from (default cmt_ti)")
        parser.add_argument("--families", default="deit,efficientnet",
                            help="baseline families (comma list; '' for none)")
        parser.add_argument("--reference-train-size", type=int,
                            help="reference training images (default: the reference rung's)")
        parser.add_argument("--reference-epochs", type=int, help="reference epochs (default: the reference rung's)")
        parser.add_argument("--reference-resolution", type=int, help="reference input size (default: the cheap one)")
        parser.add_argument("--top-k", type=int, help="k of the top-k overlap (default: a quarter of the models)")
        parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
        parser.add_argument("--out", default="runs/fidelity", help="run folder (default runs/fidelity)")
        add_backend_args(parser)
        add_protocol_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.search import DEFAULT_PROMOTION, DEFAULT_SEARCH_PROTOCOL, with_family_recipes
        from cmt_scale.studies import proxy_fidelity

        # the hashes the rows will carry; the sizes as given (fitted to a small data set, the cheap rung could
        # become the reference rung itself)
        cheap = with_family_recipes(protocol_from(args, DEFAULT_SEARCH_PROTOCOL, fit_to_data=False))
        reference = DEFAULT_PROMOTION.protocol(cheap).replace(resolution=args.reference_resolution or cheap.resolution)
        if args.reference_train_size is not None:
            reference = reference.replace(train_size=args.reference_train_size)
        if args.reference_epochs is not None:
            reference = reference.replace(epochs=args.reference_epochs)
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        header = (f"proxy-fidelity on {cheap.dataset}: cheap {cheap.protocol_hash} ({cheap.train_size or 'all'} "
                  f"images x {counted(cheap.epochs, 'epoch')}) vs reference {reference.protocol_hash} "
                  f"({reference.train_size or 'all'} x {reference.epochs}) -> {args.out}")
        result = proxy_fidelity(cheap, reference, args.out, phis=numbers(args.phis, "--phis", float), base=args.base,
                                families=families, k=args.top_k, resamples=args.resamples,
                                **_study_args(args, console, header))
        _print_frame(console, "Rankings (validation top-1)", result.table, {
            "model": lambda r: r["name"], "MACs": lambda r: format_count(r["macs"]),
            "cheap %": lambda r: _pct(r["cheap_top1"]), "rank": lambda r: f"{r['cheap_rank']:g}",
            "reference %": lambda r: _pct(r["reference_top1"]), "ref rank": lambda r: f"{r['reference_rank']:g}",
        })
        for label, agreement in [("all", result.agreement), *result.by_family.items()]:
            if agreement is None:
                continue
            level = f"{100 * agreement.level:.0f}%"
            console.print(f"{label}: Spearman rho {agreement.spearman:.3f} ({level} bootstrap "
                          f"{agreement.spearman_interval[0]:.2f}..{agreement.spearman_interval[1]:.2f}) "
                          f"| Kendall tau-b {agreement.kendall:.3f} "
                          f"({agreement.kendall_interval[0]:.2f}..{agreement.kendall_interval[1]:.2f}) "
                          f"| top-{agreement.top_k} overlap {agreement.top_k_overlap:.2f} | {agreement.models} models")
        _print_outputs(console, result.run_dir, "fidelity")
        return 0


class SweepCommand(Command):
    name = "sweep-recipes"
    help = "choose each family's training recipe by measurement"
    description = ("Choose each family's training recipe by measurement: its sweep member trains "
                   "under every learning rate x weight decay on the protocol's budget; the best mean "
                   "top-1 wins. Writes OUT/recipes.yaml for --recipes.")
    epilog = ("example: cmt-scale sweep-recipes --dataset fashion-mnist --out runs/recipes ; then "
                   "cmt-scale search ... --recipes runs/recipes/recipes.yaml")
    negative_ok = _NEGATIVE_OK

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--families", default="cmt_compound,deit,efficientnet",
                            help="families to sweep (comma list)")
        parser.add_argument("--lrs", default="1e-3,2e-3,5e-3",
                            help="learning rates (comma list, default 1e-3,2e-3,5e-3)")
        parser.add_argument("--weight-decays", default="0.05", help="weight decays (comma list, default 0.05)")
        parser.add_argument("--seeds", default="0", help="seeds each setting trains with (comma list, default 0)")
        parser.add_argument("--out", default="runs/recipes", help="run folder (default runs/recipes)")
        add_backend_args(parser)
        add_protocol_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from cmt_scale.studies import sweep_recipes

        protocol = protocol_from(args)
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        lrs, decays = numbers(args.lrs, "--lrs", float), numbers(args.weight_decays, "--weight-decays", float)
        seeds = numbers(args.seeds, "--seeds", int)
        header = (f"sweep-recipes of {', '.join(families)} on {protocol.dataset} @{protocol.resolution}px: lr {lrs} x "
                  f"weight decay {decays} x seeds {seeds}, {protocol.train_size or 'all'} images x "
                  f"{counted(protocol.epochs, 'epoch')} -> {args.out}")
        result = sweep_recipes(protocol, args.out, families=families, lrs=lrs, weight_decays=decays, seeds=seeds,
                               **_study_args(args, console, header))
        _print_frame(console, "Recipes by validation top-1 (mean over seeds; chosen *)", result.table, {
            "family": lambda r: r["family"], "lr": lambda r: f"{r['lr']:g}",
            "weight decay": lambda r: f"{r['weight_decay']:g}",
            "seeds": lambda r: str(r["seeds"]), "top-1 %": lambda r: _pct(r["top1"]) + ("*" if r["chosen"] else ""),
            "std": lambda r: _pct(r["top1_std"]),
        })
        console.print(f"recipes: {result.path} (use with --recipes); table: {result.path.parent / 'sweep.csv'} (.md)")
        return 0
