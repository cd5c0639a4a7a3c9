"""``cmt-scale``: the CMT family member that costs what you can afford, and the family around it.

Thin on purpose: every command parses, calls the library, and prints; anything it shows can be had from
Python. The default command (no sub-command) is the solver; the others are `cmt_scale.commands`.

Exit codes: 0 done; 2 bad input (a usage error or the library's ``ValueError``, which it raises for a value
it cannot accept, named with what is allowed), one line; 1 an internal error, one line, with the traceback
under ``--debug`` (or ``CMT_SCALE_DEBUG=1``); 130 interrupted (finished trials are saved).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from rich.console import Console

from .commands import COMMANDS, Parser, SolveCommand, version

__all__ = ["build_parser", "main"]

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



def build_parser() -> Parser:
    """The root parser (the solver's flags) with one sub-parser per command."""
    solve = SolveCommand()
    parser = Parser(prog="cmt-scale", negative_ok=solve.negative_ok,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="Print the member of the CMT family (Guo et al., CVPR 2022) that costs a target, "
                                "ready to build.", epilog=MAIN_EXAMPLES)
    solve.add_arguments(parser)
    parser.add_argument("--version", action="version", version=f"cmt-scale {version()}")
    _debug_arg(parser)
    parser.set_defaults(command=solve, command_parser=parser)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help,
                                    epilog=command.epilog or None, negative_ok=command.negative_ok)
        command.add_arguments(sub)
        _debug_arg(sub)
        sub.set_defaults(command=command, command_parser=sub)
    return parser


_LIBRARY_LOGGERS = ("scaling", "cmt_scale", "analysis", "search_spaces")
_HANDLER = logging.StreamHandler(sys.stderr)
_HANDLER.setFormatter(logging.Formatter("cmt-scale: %(message)s"))


def _configure_logging(debug: bool) -> None:
    """The library only logs (``logging.getLogger(__name__)``); the command line shows its INFO lines (a
    first compile, a re-queued trial) on stderr, and DEBUG with ``--debug``."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False


def _debug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback (also CMT_SCALE_DEBUG=1)")


def _one_line(err: BaseException) -> str:
    """The error as one line that names the bad value and what is allowed; a file-system error (``[Errno 2] No
    such file or directory: 'x'``) says so in those words too."""
    if isinstance(err, FileExistsError) and err.filename is not None:  # a folder to make, where a file is
        return f"path {str(err.filename)!r} is not allowed (a file is there); allowed: a folder, new or existing"
    if isinstance(err, OSError) and err.filename is not None:
        problem = (err.strerror or type(err).__name__).lower()
        if isinstance(err, FileNotFoundError):  # an input to read, or an output whose folder is missing
            allowed = "a file that exists (to read), or a path in an existing folder (to write)"
        elif isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)):
            allowed = "a file path you can read or write"
        else:
            allowed = "a path this machine can read or write"
        return f"path {str(err.filename)!r} is not allowed ({problem}); allowed: {allowed}"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmt-scale`` console script; returns the exit code (see the module's docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CMT_SCALE_DEBUG", "") not in ("", "0")
    # Piped output gets a wide console so tables are not truncated to 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    _configure_logging(debug)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command they were given to (argparse would name the root command)
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    prog = "cmt-scale" if isinstance(args.command, SolveCommand) else f"cmt-scale {args.command.name}"
    try:
        return args.command.run(args, console)
    except (ValueError, OSError, OverflowError) as err:  # bad input: the library's errors name the value
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every finished trial is already in the run folder's table; the study resumes from there.
        print("cmt-scale: interrupted; finished trials are saved, run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - anything else is a bug in the toolkit, not the user's input
        if debug:
            traceback.print_exc()
            print(f"{prog}: internal error: {_one_line(err)} ({type(err).__name__})", file=sys.stderr)
        else:
            print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)}; rerun with --debug (or "
                  "CMT_SCALE_DEBUG=1) for the traceback, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
