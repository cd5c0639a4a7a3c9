"""Where a search's trials run: a backend object per engine, the way Optuna takes ``sampler=`` and Ray Tune a
``TuneConfig``. Each object holds only its own engine's options, so an option given to the wrong engine
cannot be written down at all (``OptunaBackend(address=...)`` is a ``TypeError``), instead of being checked
by hand against a backend name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from cmt_scale.proxy import ProxyProtocol
from scaling import check_int
from search_spaces import SearchSpace

__all__ = ["Backend", "OptunaBackend", "RayBackend", "RungJob", "SearchMode", "backend_names"]


class SearchMode(str, Enum):
    """What a search optimises. A ``str`` enum: ``SearchMode("pareto")`` parses the CLI's and run.json's value."""

    PARETO = "pareto"  # maximise top-1 and minimise MACs; the front is re-measured on the reference rung
    BUDGET = "budget"  # top-1 under the space's budget, with pruning (successive halving / ASHA)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RungJob:
    """One rung of a search for a backend to run: its candidates (``space``; a grid for the reference rung),
    the protocol they train under, and where their rows go."""

    space: SearchSpace
    protocol: ProxyProtocol
    num_classes: int
    trials: int
    run_dir: Path
    study: str
    mode: SearchMode
    rung: str = "cheap"
    on_trial: Callable[[dict[str, Any]], None] | None = None
    reused: tuple[Mapping[str, Any], ...] = ()  # earlier runs' rows: a matching trial reuses its result


class Backend(ABC):
    """An engine that runs a rung's trials and writes one row per finished trial to the run folder."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, job: RungJob) -> None:
        """Run ``job`` until it has ``job.trials`` finished trials (resuming what the run folder holds)."""

    def record(self) -> dict[str, Any]:
        """What run.json records of this backend: its name and options."""
        return {"backend": self.name, "backend_options": dict(vars(self))}


@dataclass(frozen=True)
class OptunaBackend(Backend):
    """Optuna in this process. ``storage``: an RDB URL (default ``sqlite:///<run folder>/study.db``); several
    processes given one shared URL (say PostgreSQL) share the study. ``seed``: the sampler's seed."""

    storage: str | None = None
    seed: int = 0
    name: ClassVar[str] = "optuna"

    def run(self, job: RungJob) -> None:
        from ._optuna import run_optuna_search

        run_optuna_search(job, self.storage, self.seed)


@dataclass(frozen=True)
class RayBackend(Backend):
    """Ray Tune. ``address``: a cluster to join (``auto``, ``host:port``, ``ray://host:port``; default a local
    Ray with ``num_cpus``, all by default); each trial gets ``cpus_per_trial`` CPUs and as many torch threads,
    and ``gpus_per_trial`` GPUs (a fraction shares one GPU between trials; Tune's ``with_resources``).
    ``seed``: the OptunaSearch searcher's seed."""

    address: str | None = None
    cpus_per_trial: int = 1
    num_cpus: int | None = None
    seed: int = 0
    gpus_per_trial: float = 0.0
    name: ClassVar[str] = "ray"

    def __post_init__(self) -> None:
        check_int("cpus_per_trial", self.cpus_per_trial)
        check_int("num_cpus", self.num_cpus, none_ok=True)
        gpus = self.gpus_per_trial
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus < float("inf") or (
                gpus > 1 and gpus != int(gpus)):
            raise ValueError(f"gpus_per_trial={gpus!r} is not allowed; allowed: 0, a fraction in (0, 1] or a whole "
                             "number of GPUs")

    def run(self, job: RungJob) -> None:
        from ._ray import run_ray_search

        run_ray_search(job, self)


def backend_names() -> tuple[str, ...]:
    """The backends' names, as the CLI's ``--backend`` and run.json spell them."""
    return (OptunaBackend.name, RayBackend.name)
