"""How a trial ended: one enum shared by training, both search backends, the baselines runner and the rows."""

from __future__ import annotations

from enum import Enum

__all__ = ["TrialState"]


class TrialState(str, Enum):
    """A trial's end state. A ``str`` enum so rows (JSON, Parquet) hold the plain value and old rows compare
    equal: ``TrialState.COMPLETE == "complete"``."""

    COMPLETE = "complete"  # trained in full, with a validation top-1
    PRUNED = "pruned"  # stopped early by the search's pruner (successive halving, ASHA)
    FAILED = "failed"  # training broke (diverged, out of memory, missing data): the row says why
    INFEASIBLE = "infeasible"  # not a valid member, or over the space's budget: never trained

    def __str__(self) -> str:
        return self.value
