"""What every ``cmt-scale`` command is and shares: the `Command` shape, the parser, usage errors, the protocol,
promotion and backend flags, and the line printed per finished trial."""

from __future__ import annotations

import argparse
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NoReturn

from rich.console import Console

from scaling import format_count

__all__ = ["Command", "Parser", "Progress", "UsageError", "add_backend_args", "add_promotion_args",
           "add_protocol_args", "backend_from", "numbers", "promotion_from", "protocol_from",
           "with_sizes_note"]


class UsageError(ValueError):
    """Bad input found by the command line itself (a flag combination, a malformed list): exit 2, one line."""


class Parser(argparse.ArgumentParser):
    """argparse with two changes a command line of numbers needs: a usage error is one line (exit code 2),
    not usage text plus a line; and the options in ``negative_ok`` take values that start with ``-``
    (``--phi -2:2:0.5``, which argparse would otherwise read as an unknown option)."""

    def __init__(self, *args: Any, negative_ok: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.negative_ok = tuple(negative_ok)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        if args is not None and self.negative_ok:
            joined: list[str] = []
            for arg in args:
                if joined and joined[-1] in self.negative_ok and arg.startswith("-"):
                    joined[-1] = f"{joined[-1]}={arg}"
                else:
                    joined.append(arg)
            args = joined
        return super().parse_known_args(args, namespace)


class Command(ABC):
    """One ``cmt-scale`` sub-command: its name, help line, flags (`add_arguments`) and action (`run`)."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str] = ""
    epilog: ClassVar[str] = ""
    negative_ok: ClassVar[tuple[str, ...]] = ()  # options whose values may start with "-"

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's flags on its parser."""

    @abstractmethod
    def run(self, args: argparse.Namespace, console: Console) -> int:
        """Do the work; return the exit code. Bad input raises `UsageError` or the library's ``ValueError``."""


def numbers(text: str, flag: str, kind: type) -> list:
    """``"0,1"`` -> ``[0, 1]`` (of ``kind``); one line naming the flag and the value otherwise."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag}={text!r} is not allowed; allowed: a comma list of {kind.__name__}s") from None


def add_protocol_args(parser: argparse.ArgumentParser, defaults: str = "proxy.DEFAULT_PROTOCOL") -> None:
    group = parser.add_argument_group(f"proxy protocol (defaults: {defaults})")
    group.add_argument("--dataset", help="fashion-mnist, cifar10, cifar100, digits or imagefolder:PATH")
    group.add_argument("--data-root", help="where the data set's files are")
    group.add_argument("--protocol", metavar="JSON", help="a ProxyProtocol as a JSON file; flags below override it")
    for flag, kind, text in (("--epochs", int, "training epochs"), ("--train-size", int, "training images"),
                             ("--val-size", int, "validation images held out from train"),
                             ("--resolution", int, "input size"), ("--batch-size", int, "batch size"),
                             ("--seed", int, "seed"), ("--threads", int, "torch threads per trial"),
                             ("--lr", float, "peak learning rate"),
                             ("--mixup", float, "timm Mixup alpha (default 0: off)"),
                             ("--cutmix", float, "timm CutMix alpha (default 0: off)"),
                             ("--workers", int, "data loader processes (default: one per core, at most 8)"),
                             ("--data-memory-gb", float, "an image folder larger than this (decoded) streams from "
                              "disk (default: a quarter of RAM; 0: always stream)")):
        group.add_argument(flag, type=kind, help=text)
    group.add_argument("--augment", help="none (default), crop, crop-flip (batch tensor ops), rrc-flip (timm's "
                       "random-resized crop and flip) or a timm auto-augment policy, e.g. rand-m9-mstd0.5")
    group.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp16: GPUs only, with a gradient "
                       "scaler; bf16 falls back to it on a GPU without bf16")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"))
    group.add_argument("--compile", action="store_true", default=None, help="train through torch.compile")
    group.add_argument("--low-res", choices=("adapt", "native"), help="below 64 px: keep the published strides "
                       "(native, default) or halve each family's first downsampling (adapt)")
    group.add_argument("--recipes", metavar="FILE|shipped|shared", help="per-family training recipes: a YAML file "
                       "(as written by sweep-recipes), the shipped ones (default), or shared: the protocol's lr etc. "
                       "for every family")


def protocol_from(args: argparse.Namespace, base=None, fit_to_data: bool = True):
    """The protocol the flags ask for: ``base`` (default `DEFAULT_PROTOCOL`), or ``--protocol``'s file, with
    each given flag over it; sizes nobody gave fitted to a small data set (`_fit_to_small_data`), and then
    ``args.sizes_note`` says so, for the command's header (printed once every input is checked). Not with
    ``fit_to_data=False``: a study comparing two training budgets needs the sizes as given."""
    from cmt_scale.proxy import DEFAULT_PROTOCOL, ProxyProtocol

    protocol = base or DEFAULT_PROTOCOL
    if args.protocol:
        with open(args.protocol, encoding="utf-8") as handle:
            protocol = ProxyProtocol.from_dict(json.load(handle))
    changes = {name: getattr(args, name) for name in ("dataset", "data_root", "epochs", "train_size", "val_size",
                                                       "resolution", "batch_size", "seed", "threads", "lr",
                                                       "precision", "device", "low_res", "mixup", "cutmix",
                                                       "workers", "data_memory_gb", "augment", "compile")
               if getattr(args, name) is not None}
    if args.recipes is not None:
        changes["recipes"] = _recipes_json(args.recipes)
    protocol = protocol.replace(**changes) if changes else protocol
    args.sizes_note = ""
    if not fit_to_data:
        return protocol
    protocol, args.sizes_note = _fit_to_small_data(protocol, set(changes) | ({"train_size", "val_size"}
                                                                              if args.protocol else set()))
    return protocol


def with_sizes_note(header: str, args: argparse.Namespace) -> str:
    """A command's header with `protocol_from`'s note on fitted sizes, if it made one."""
    note = getattr(args, "sizes_note", "")
    return f"{header}\n{note}" if note else header


def _fit_to_small_data(protocol, given: set[str]) -> tuple[Any, str]:
    """The default sizes (2,000 validation and up to 15,000 training images) are Fashion-MNIST's; a smaller
    data set (an image folder of a few hundred images, scikit-learn's digits) would refuse them although the
    user never chose them. There, the sizes nobody gave become a fifth held out and all the rest trained on,
    and one line says so. A size the user gave is kept (and checked as given)."""
    from cmt_scale.proxy import data_for
    from cmt_scale.search import with_all_images_as_all

    data = data_for(protocol)  # loaded once per process: the search reuses it
    available = len(data.train_labels)
    changes: dict[str, Any] = {}
    if "val_size" not in given and protocol.val_size > available // 5:
        changes["val_size"] = max(1, available // 5)
    val_size = changes.get("val_size", protocol.val_size)
    if "train_size" not in given and protocol.train_size is not None and protocol.train_size > available - val_size:
        changes["train_size"] = None
    if not changes:  # as the search will write it: every image left after validation is "all"
        return with_all_images_as_all(protocol, data), ""
    note = (f"{protocol.dataset} has {available:,} training images: validation on {val_size:,}, training on "
            f"{changes.get('train_size', protocol.train_size) or 'the rest'} (the defaults, {protocol.val_size:,} and "
            f"{protocol.train_size or 'all'}, need more; --val-size and --train-size set them)")
    return with_all_images_as_all(protocol.replace(**changes), data), note


def _recipes_json(choice: str) -> str:
    from search_spaces import load_recipes

    if choice == "shared":
        return "{}"
    return json.dumps(load_recipes(None if choice == "shipped" else choice), sort_keys=True)


def add_promotion_args(parser: argparse.ArgumentParser, default_on: bool) -> None:
    # No import of the search package here: every sub-parser is built for every command line, the main
    # job's included, and `cmt_scale.search` brings torch. Unset flags take `DEFAULT_PROMOTION`'s values.
    group = parser.add_argument_group("reference rung (promotion of the cheap rung's front; defaults: "
                                      "search.DEFAULT_PROMOTION)")
    if default_on:
        group.add_argument("--no-promotion", action="store_true", help="report the cheap rung; no reference rung")
    else:
        group.add_argument("--promote", action="store_true", help="re-train each family's cheap-rung front plus "
                           "margin on the reference rung, as a search does")
    group.add_argument("--reference-epochs", type=int, help="reference rung epochs (default: the cheap rung's)")
    group.add_argument("--reference-train-size", type=int, help="reference rung training images (default: all)")
    group.add_argument("--reference-seeds", help="reference rung seeds, a comma list (default 0,1)")
    group.add_argument("--margin", help="promoted beyond the front: layer (the next non-dominated layer, default), "
                       "none, or a number of top-1 points")
    group.add_argument("--reference-test", action="store_true", help="also score the reference rung on the test "
                       "split (reported, never used to select)")
    group.add_argument("--reuse", action="append", default=[], metavar="RUN", help="an earlier run folder whose "
                       "finished trials stand for identical ones here (same architecture, recipe, protocol and "
                       "seed); repeatable. Extends a run with a longer reference rung in a new --out")


def promotion_from(args: argparse.Namespace):
    """The `Promotion` the flags ask for (`DEFAULT_PROMOTION` where unset), or ``None`` when there is to be no
    reference rung."""
    import dataclasses

    from cmt_scale.search import DEFAULT_PROMOTION

    if getattr(args, "no_promotion", False) or not getattr(args, "promote", True):
        return None
    given = {"train_size": args.reference_train_size, "epochs": args.reference_epochs, "margin": args.margin,
             "test": args.reference_test or None,
             "seeds": None if args.reference_seeds is None else tuple(numbers(args.reference_seeds,
                                                                               "--reference-seeds", int))}
    return dataclasses.replace(DEFAULT_PROMOTION, **{k: v for k, v in given.items() if v is not None})


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the trials run")
    group.add_argument("--backend", default="optuna",  # checked against search.backend_names() when used
                       help="optuna: in this process, study in OUT/study.db; ray: Ray Tune (local or --address)")
    group.add_argument("--storage", help="Optuna: storage URL (default sqlite:///OUT/study.db)")
    group.add_argument("--address", help="Ray: cluster to join: auto, host:port or ray://host:port")
    group.add_argument("--cpus-per-trial", type=int, help="Ray: CPUs (and torch threads) per trial (default 1)")
    group.add_argument("--num-cpus", type=int, help="Ray: CPUs of a local cluster (default: all)")
    group.add_argument("--gpus-per-trial", type=float, help="Ray: GPUs per trial, fractions share a GPU (default 0)")
    group.add_argument("--search-seed", type=int, default=0, help="the sampler's seed")


def backend_from(args: argparse.Namespace):
    """The backend object the flags ask for; a flag of the other backend is a usage error, not ignored (it
    would run somewhere the user did not ask)."""
    from cmt_scale.search import OptunaBackend, RayBackend, backend_names

    if args.backend not in backend_names():
        raise UsageError(f"--backend={args.backend!r} is not allowed; allowed: {', '.join(backend_names())}")
    flags = {"optuna": {"storage": "--storage"},
             "ray": {"address": "--address", "cpus_per_trial": "--cpus-per-trial", "num_cpus": "--num-cpus",
                     "gpus_per_trial": "--gpus-per-trial"}}
    for owner, options in flags.items():
        for dest, flag in options.items():
            if owner != args.backend and getattr(args, dest) is not None:
                raise UsageError(f"{flag}={getattr(args, dest)!r} is not allowed with --backend {args.backend}; "
                                 f"allowed: only with --backend {owner}")
    if args.backend == "optuna":
        return OptunaBackend(storage=args.storage, seed=args.search_seed)
    return RayBackend(address=args.address, cpus_per_trial=args.cpus_per_trial or 1, num_cpus=args.num_cpus,
                      seed=args.search_seed, gpus_per_trial=args.gpus_per_trial or 0.0)


class Progress:
    """What a search or study prints as it runs: its header once the run has checked its inputs (bad input
    then gets the error line alone), and a line per trial whose counter and front go on from the trials a
    resumed study had finished (``[3/3]`` for the one trial a resumed ``--trials 3`` still runs)."""

    def __init__(self, console: Console, header: str = "", total: int | None = None) -> None:
        self.console, self.header, self.total = console, header, total
        self.seen: list[dict[str, Any]] = []
        self.started = False

    def start(self, finished: Sequence[dict[str, Any]], rung: Any = None) -> None:
        """Called by the driver before a run's (or a study grid's, or a rung's) first trial, with the rows it
        resumes from; a search's cheap rung brings the plan of every rung, printed up front."""
        if not self.started and self.header:
            self.console.print(self.header)
        for line in getattr(rung, "plan", ()):
            self.console.print(f"  {line}")
        if rung is not None and rung.name == "reference":
            self.console.print(f"reference rung: {rung.trials} trials (promoted members x seeds), "
                               f"{rung.images_per_trial:,} images each, protocol {rung.protocol_hash}")
            self.seen, self.total = [], rung.trials
        self.started = True
        self.seen.extend(finished)

    def trial(self, row: dict[str, Any]) -> None:
        from analysis import pareto_mask
        from cmt_scale.search import STATES, measured_rows

        self.seen.append(row)
        done = measured_rows(self.seen)
        front = int(pareto_mask([r["macs"] for r in done], [r["top1_final"] for r in done]).sum())
        counts = {s: sum(r["state"] == s for r in self.seen) for s in STATES}
        top1 = f"{row['top1_final']:.2f}%" if row["top1_final"] is not None else "-"
        macs = format_count(row["macs"]) if row["macs"] else "-"
        of = f"/{self.total}" if self.total else ""
        self.console.print(f"[{len(self.seen)}{of}] {row['state']:10s} {row['name']:30s} top-1 {top1:>7s}  MACs "
                           f"{macs:>8s}  {row['wall_s']:.0f}s | " + " ".join(f"{k} {v}" for k, v in counts.items())
                           + f" | front {front}")

    def hooks(self, command: Sequence[str], per_rung: bool = True):
        """`RunHooks` that print through this progress; ``per_rung=False`` (a study's several grids) prints the
        header once and counts on across grids."""
        from cmt_scale.search import RunHooks

        on_start = self.start if per_rung else (lambda finished, rung=None: self.start(()))
        return RunHooks(on_start=on_start, on_trial=self.trial, command=list(command))
