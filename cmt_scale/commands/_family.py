"""The family commands: the solver (the default command), ``family``, ``profile`` and ``presets``.

torch and timm are imported only by the paths that need a real model (``--verify``, ``--target-latency``,
``profile``), so the main job answers in well under two seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

import scaling
from scaling import (
    PAPER_COEFFICIENTS,
    PAPER_TABLE,
    PRESETS,
    CMTConfig,
    Solution,
    estimate_cost,
    family,
    format_count,
    parse_stage_ratio,
    solve,
)

from ._base import Command, UsageError

__all__ = ["FamilyCommand", "PresetsCommand", "ProfileCommand", "SolveCommand", "version"]

def _coefficient_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="cmt_s", help="phi = 0 member: cmt_ti, cmt_xs, cmt_s, cmt_b or a JSON config "
                        "(default: cmt_s, as in the paper)")
    paper = PAPER_COEFFICIENTS
    parser.add_argument("--alpha", type=float, default=paper.alpha,
                        help=f"depth multiplier per unit phi (paper: {paper.alpha:g})")
    parser.add_argument("--beta", type=float, default=paper.beta,
                        help=f"width multiplier per unit phi (paper: {paper.beta:g})")
    parser.add_argument("--gamma", type=float, default=paper.gamma,
                        help=f"resolution multiplier per unit phi (paper: {paper.gamma:g})")
    parser.add_argument("--stage-ratio", help="split depth across stages in this ratio, e.g. 3:3:16:3")
    parser.add_argument("--resolution", type=int, help="pin the input size (a multiple of 32) instead of scaling it")


def version() -> str:
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
    raise UsageError(f"unknown model {name_or_path!r}; allowed: {', '.join(PRESETS)} or a JSON config file")


_MAX_PHIS = 10_000


def _parse_phis(spec: str) -> list[float]:
    """``START:STOP:STEP`` (STOP included when the steps land on it) or ``0,0.5,1``; finite, at most 10,000."""
    message = f"--phi={spec!r} is not allowed; allowed: START:STOP:STEP with STEP > 0 " \
              f"(at most {_MAX_PHIS:,} values), " \
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
        raise UsageError(message) from None


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


# A latency solve whose timings' spread (`Throughput.spread`) is above this was made on a busy machine.
_NOISY_TIMINGS = 0.05


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
        table.add_row("latency", f"{sol.latency_ms:.2f} ms (repeats ±{100 * sol.latency_spread:.1f}%)",
                      *["" for _ in near])
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




class SolveCommand(Command):
    """The default command: the member of the family that costs a target."""

    name = "solve"
    help = "the member that costs a target (the default command)"
    negative_ok = ("--target-flops", "--target-params", "--target-latency", "--alpha", "--beta", "--gamma",
                   "--stage-ratio")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        target = parser.add_argument_group("target (give exactly one)")
        target.add_argument("--target-flops", help="multiply-adds per image: 4G, 400M, 4e9, 4.0GFLOPs")
        target.add_argument("--target-params", help="parameters: 25M, 2.5e7")
        target.add_argument("--target-latency",
                            help="measured forward time of one batch: 20ms, 0.02s (a plain number is ms)")
        _coefficient_args(parser)
        parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                            help="for --target-latency (default cpu)")
        parser.add_argument("--batch-size", type=int, default=1, help="for --target-latency (default 1)")
        parser.add_argument("--threads", type=int, help="torch threads for --target-latency (default: torch's)")
        parser.add_argument("--verify", action="store_true", help="also build the member and count it with fvcore")
        parser.add_argument("--json", action="store_true", help="print the solution as JSON instead of a table")
        parser.add_argument("--save", metavar="PATH", help="write the member's config as JSON (CMTConfig.from_json; "
                            "or import scaling, then timm.create_model('cmt_custom', config=PATH))")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        targets = [t for t in (args.target_flops, args.target_params, args.target_latency) if t is not None]
        if args.batch_size < 1:
            raise UsageError(f"--batch-size={args.batch_size} is not allowed; allowed: an integer >= 1")
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads={args.threads} is not allowed; allowed: an integer >= 1")
        if len(targets) != 1:
            raise UsageError("give exactly one of --target-flops, --target-params, --target-latency "
                             f"(got {len(targets) or 'none'}); e.g. cmt-scale --target-flops 4G")
        sol = solve(
            target_flops=args.target_flops, target_params=args.target_params, target_latency_ms=args.target_latency,
            base=_load_model_config(args.base) if args.base.endswith(".json") else args.base,
            resolution=args.resolution, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
            stage_ratio=parse_stage_ratio(args.stage_ratio) if args.stage_ratio else None,
            device=args.device, batch_size=args.batch_size, threads=args.threads,
        )
        if sol.latency_spread is not None and sol.latency_spread > _NOISY_TIMINGS:
            Console(stderr=True).print(
                f"warning: the timings were noisy (repeats {100 * sol.latency_spread:.0f}% off their median, where an "
                "idle machine gives about 1%): the member may be a step off; rerun on an idle machine, or set "
                "--threads", soft_wrap=True)
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
                # `import scaling` registers the cmt_* models with timm (timm has no plugin discovery)
                console.print(f"saved to {args.save}; build it with: import scaling, timm; "
                              f"model = timm.create_model('cmt_custom', config={args.save!r})", soft_wrap=True)
        return 0


class FamilyCommand(Command):
    name = "family"
    help = "a table of compound-scaled members over a phi range"
    negative_ok = ("--phi", "--alpha", "--beta", "--gamma", "--stage-ratio")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--phi", default="-2:2:0.5",
                            help="START:STOP:STEP (inclusive) or a comma list (default -2:2:0.5)")
        _coefficient_args(parser)
        parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV ('-' for stdout only)")

    def run(self, args: argparse.Namespace, console: Console) -> int:
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
        table = Table(title=f"compound family of {args.base} "
                            f"(alpha={args.alpha}, beta={args.beta}, gamma={args.gamma})",
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


class ProfileCommand(Command):
    name = "profile"
    help = "fvcore count of a member by module and by operator"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="a preset (cmt_ti, cmt_xs, cmt_s, cmt_b) or a JSON config file")
        parser.add_argument("--img-size", type=int, help="count at this resolution (default: the config's)")
        parser.add_argument("--json", action="store_true", help="print the profile as JSON")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        cfg = _load_model_config(args.model)
        if args.img_size is not None:
            cfg = cfg.replace(img_size=args.img_size)
        profile = scaling.count_flops(cfg)
        analytic = estimate_cost(cfg)
        if args.json:  # the table's columns too: the analytic model's MACs beside fvcore's, by part
            parts = profile.by_part()
            print(json.dumps({"macs": profile.macs, "params": profile.params, "img_size": profile.img_size,
                              "by_part": parts, "analytic_macs": analytic.macs,
                              "analytic_by_part": {part: analytic.macs_by_part.get(part, 0) for part in parts},
                              "by_operator": profile.by_operator, "unsupported_ops": profile.unsupported_ops,
                              "elementwise_ops_counted_as_zero": profile.elementwise_ops}, indent=2))
            return 0
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


class PresetsCommand(Command):
    name = "presets"
    help = "the paper's presets: our exact counts beside the paper's"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, console: Console) -> int:
        table = Table(title="CMT presets: exact counts (this toolkit = the official code) and the paper's figures",
                      title_justify="left")
        for col in ("preset", "res", "stem", "dims", "depths", "params", "paper", "MACs", "paper", "top-1"):
            table.add_column(col, justify="right")
        for name, cfg in PRESETS.items():
            cost, paper = estimate_cost(cfg), PAPER_TABLE[name]
            rows = _arch_rows(cfg)
            table.add_row(name, rows["resolution"], rows["stem"], rows["dims"], rows["depths"],
                          format_count(cost.params), f"{paper.params_m:.2f}M", format_count(cost.macs),
                          f"{paper.flops_g:.1f}G", f"{paper.top1:.1f}")
        console.print(table)
        return 0
