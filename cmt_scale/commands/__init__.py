"""The ``cmt-scale`` sub-commands, one `Command` class each, grouped by theme: the family (solver, family,
profile, presets), searches (search, baselines, report) and studies (fit-coefficients, ablate-scaling,
proxy-fidelity, sweep-recipes)."""

from ._base import Command, Parser, UsageError
from ._family import FamilyCommand, PresetsCommand, ProfileCommand, SolveCommand, version
from ._search import BaselinesCommand, ReportCommand, SearchCommand
from ._studies import AblateCommand, FidelityCommand, FitCommand, SweepCommand

__all__ = ["COMMANDS", "Command", "Parser", "SolveCommand", "UsageError", "version"]

# Sub-commands in the order ``cmt-scale --help`` lists them; the solver is the default (no sub-command).
COMMANDS: tuple[Command, ...] = (FamilyCommand(), ProfileCommand(), PresetsCommand(), SearchCommand(),
                                 BaselinesCommand(), ReportCommand(), FitCommand(), AblateCommand(),
                                 FidelityCommand(), SweepCommand())
