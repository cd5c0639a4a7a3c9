"""The search driver: one run folder, one protocol, one of two backends, one results table.

``runs/NAME/`` holds ``run.json`` (the exact command, versions, the protocol and the space),
``trials/*.json`` (a row per finished trial), ``results.parquet`` / ``results.csv`` (the table), and
the backend's state: ``study.db`` (Optuna) or ``ray/`` (Ray Tune). Running the same command again
resumes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import pareto_mask
from cmt_scale.proxy import ProxyProtocol, data_for, resolve_device
from scaling import check_int, counted
from search_spaces import SearchSpace, load_space, space_from_dict

from ._backends import Backend, OptunaBackend, RayBackend, RungJob, SearchMode
from ._promotion import DEFAULT_PROMOTION, Promotion, promoted_rows, reference_space
from ._results import measured_rows, read_rows, reusable_rows, seed_means
from ._trial import check_resolution

__all__ = ["DEFAULT_TRIALS", "RunHooks", "RungStart", "SearchSummary", "check_protocol_fits", "planned_trials",
           "run_search", "with_all_images_as_all", "with_family_recipes"]


@dataclass(frozen=True)
class RungStart:
    """What ``on_start`` is told before a rung trains: its name, trials, the images each sees and its protocol
    hash, and (for the cheap rung of a promoted search) the plan of every rung, to print up front."""

    name: str
    trials: int
    images_per_trial: int
    protocol_hash: str
    plan: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchSummary:
    run_dir: Path
    rows: list[dict[str, Any]]
    wall_s: float

    @property
    def rung(self) -> str:
        """The longest rung with results: the front is reported from it."""
        rungs = {r.get("rung") or "cheap" for r in measured_rows(self.rows)}
        return "reference" if "reference" in rungs else "cheap"

    @property
    def front(self) -> list[dict[str, Any]]:
        """Each family's MACs/top-1 Pareto front on the longest rung, cheapest first: one row per architecture with its
        top-1 averaged over seeds (``top1_final``; ``top1_std`` and ``seeds`` beside it). A trial that reused an
        earlier trial's result (same config, protocol and seed) is the same measurement, counted once."""
        points = seed_means([r for r in measured_rows(self.rows) if (r.get("rung") or "cheap") == self.rung])
        front = []
        for family in sorted({r["family"] for r in points}):  # a baselines run holds several families
            mine = [r for r in points if r["family"] == family]
            keep = pareto_mask([r["macs"] for r in mine], [r["top1_final"] for r in mine])
            front += sorted((r for r, k in zip(mine, keep) if k), key=lambda r: r["macs"])
        return front

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out


def with_family_recipes(protocol: ProxyProtocol) -> ProxyProtocol:
    """``protocol`` with the shipped per-family recipes (``search_spaces/recipes.yaml``) when it names none;
    ``recipes="{}"`` keeps the shared recipe (the protocol's own lr, weight decay, ...) for every family."""
    if protocol.recipes is not None:
        return protocol
    from search_spaces import load_recipes

    return protocol.replace(recipes=json.dumps(load_recipes(), sort_keys=True))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("cmt-scale", "torch", "timm", "optuna", "ray", "fvcore"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _write_run_json(run_dir: Path, command: Sequence[str] | None, protocol: ProxyProtocol,
                    extra: dict[str, Any]) -> None:
    path = run_dir / "run.json"
    record = {
        "command": list(command) if command is not None else sys.argv,
        "versions": _versions(),
        "protocol": protocol.to_dict(),
        "protocol_hash": protocol.protocol_hash,
        **extra,
    }
    if path.is_file():  # a resumed run keeps its first record and notes each restart
        first = json.loads(path.read_text(encoding="utf-8"))
        first.setdefault("resumed", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": record["command"]})
        record = first
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def check_protocol_fits(protocol: ProxyProtocol, data=None) -> None:
    """Catch a protocol the data set or this machine cannot serve before anything is written to the run folder."""
    resolve_device(protocol)
    if data is None:
        data = data_for(protocol)
    available = len(data.train_labels)
    if protocol.val_size >= available:
        raise ValueError(f"val_size={protocol.val_size} is not allowed for {protocol.dataset}; allowed: fewer than its "
                         f"{available} training images")
    if protocol.train_size is not None and protocol.train_size > available - protocol.val_size:
        raise ValueError(f"train_size={protocol.train_size} is not allowed for {protocol.dataset}; allowed: at most "
                         f"{available - protocol.val_size} (its {available} training images less val_size)")


def with_all_images_as_all(protocol: ProxyProtocol, data=None) -> ProxyProtocol:
    """``protocol`` with a ``train_size`` that takes every image left after validation written as ``None``
    ("all"): the same training data, so the same protocol hash, and the rows of one are reused by the other
    (a reference rung of "all" on a cheap rung that already took them all trains nothing again)."""
    if protocol.train_size is None:
        return protocol
    if data is None:
        data = data_for(protocol)
    if protocol.train_size == len(data.train_labels) - protocol.val_size:  # more is refused by check_protocol_fits
        return protocol.replace(train_size=None)
    return protocol


def _check_protocol_matches(run_dir: Path, protocol: ProxyProtocol, reference: ProxyProtocol | None = None) -> None:
    """A resumed run keeps its protocols (each rung's): other ones would put incomparable rows in one table."""
    path = run_dir / "run.json"
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        old = recorded.get("protocol_hash")
        if old and old != protocol.protocol_hash:
            raise ValueError(f"run folder {str(run_dir)!r} holds a run with protocol {old}, "
                             f"not {protocol.protocol_hash}; "
                             "allowed: the same protocol to resume, or another --out")
        old_reference = (recorded.get("rungs") or {}).get("reference", {}).get("protocol_hash")
        if reference is not None and old_reference and old_reference != reference.protocol_hash:
            raise ValueError(f"run folder {str(run_dir)!r} holds a reference rung with protocol {old_reference}, not "
                             f"{reference.protocol_hash}; allowed: the same reference rung to resume, or another --out")


DEFAULT_TRIALS = 20  # a sampled space's finished trials when none are asked for


def planned_trials(space: SearchSpace, trials: int | None) -> int:
    """The trials a search of ``space`` runs: ``trials`` when given, else every grid point of a grid space
    or `DEFAULT_TRIALS`."""
    if trials is not None:
        return trials
    return len(space.grid) if space.sampler == "grid" else DEFAULT_TRIALS


@dataclass(frozen=True)
class RunHooks:
    """What a caller hears of a run and records about itself: ``on_start(finished_rows, rung)`` before each
    rung trains (once every input has been checked; a CLI prints its header and the plan there, so bad input
    gets the error line alone), ``on_trial(row)`` after each trial, and ``command``, the command line run.json
    records (default ``sys.argv``)."""

    on_start: Callable[[list[dict[str, Any]], RungStart], None] | None = None
    on_trial: Callable[[dict[str, Any]], None] | None = None
    command: Sequence[str] | None = None


def _checked_backend(backend: Backend | None) -> Backend:
    if backend is None:
        return OptunaBackend()
    if not isinstance(backend, Backend):
        raise ValueError(f"backend={backend!r} is not allowed; allowed: OptunaBackend(...) or RayBackend(...)")
    return backend


def _checked_mode(mode: SearchMode | str) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(m.value for m in SearchMode)}") from None


def run_search(
    space: SearchSpace | str | Path,
    protocol: ProxyProtocol,
    out: str | Path,
    trials: int | None = None,
    *,
    backend: Backend | None = None,
    mode: SearchMode | str = SearchMode.PARETO,
    study: str | None = None,
    promotion: Promotion | None = DEFAULT_PROMOTION,
    hooks: RunHooks | None = None,
    reuse: Sequence[str | Path] = (),
) -> SearchSummary:
    """Search ``space`` for ``trials`` trials under ``protocol`` on ``backend`` (default `OptunaBackend`);
    results land in ``out`` (resumable).

    In ``pareto`` mode every candidate trains on the cheap rung (``protocol``); then ``promotion`` re-trains
    the cheap rung's non-dominated set plus its margin on the reference rung, with its seeds, as the study
    ``<study>-reference``, and the summary's front is the reference rung's (see `Promotion`; ``None``: no
    reference rung, as for a study's fixed design). ``budget`` mode prunes by successive halving instead.
    Each family trains with its recipe (`with_family_recipes`).

    A ``sampler: grid`` space runs each of its grid points once (``trials=None`` means all of them); a sampled
    space runs `DEFAULT_TRIALS` when ``trials`` is None.

    ``reuse`` names earlier run folders whose complete rows stand for trials of the same architecture,
    recipe, protocol and seed (`reusable_rows`): extending a run with a longer reference rung in a new folder
    (``--reuse runs/old --reference-epochs 5 --out runs/new``) re-trains only what the new rung adds.

    Example:
        >>> from cmt_scale.proxy import ProxyProtocol
        >>> summary = run_search("cmt_compound", ProxyProtocol(dataset="digits", resolution=32, val_size=300,
        ...                      epochs=1), "runs/demo", trials=4)  # doctest: +SKIP
    """
    backend, mode, hooks = _checked_backend(backend), _checked_mode(mode), hooks or RunHooks()
    if isinstance(space, dict):
        space = space_from_dict(space)
    elif not isinstance(space, SearchSpace):
        space = load_space(space)
    trials = planned_trials(space, trials)
    check_int("trials", trials)
    if space.sampler == "grid" and trials != len(space.grid):
        raise ValueError(f"trials={trials} is not allowed for a grid space; allowed: its {len(space.grid)} grid points")
    protocol = with_family_recipes(protocol)
    promote = promotion is not None and mode == SearchMode.PARETO
    reference = promotion.protocol(protocol) if promote else None
    check_resolution(space, protocol.resolution, protocol)
    run_dir = Path(out)
    study_name = study or run_dir.name
    data = data_for(protocol)
    check_protocol_fits(protocol, data)
    if reference is not None:
        check_protocol_fits(reference, data)
        reference = with_all_images_as_all(reference, data)
    protocol = with_all_images_as_all(protocol, data)
    _check_protocol_matches(run_dir, protocol, reference)
    reused = reusable_rows(reuse)
    previous = run_dir / "run.json"
    recorded = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    if (isinstance(backend, RayBackend) and space.sampler != "grid" and recorded.get("study") == study_name
            and recorded.get("trials") != trials):
        raise ValueError(f"trials={trials} is not allowed when resuming the Ray run in {str(run_dir)!r}: Tune restores "
                         "an experiment with its own trial count; allowed: the same --trials, or another --out")
    rungs, plan = _rung_plan(protocol, promotion if reference is not None else None, trials,
                             len(data.train_labels) - protocol.val_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_json(run_dir, hooks.command, protocol, {"space": space.source, "family": space.family,
                                                       **backend.record(), "study": study_name, "trials": trials,
                                                       "mode": mode.value, "rungs": rungs})

    def run_rung(job: RungJob, start: RungStart) -> None:
        if hooks.on_start is not None:
            hooks.on_start([r for r in read_rows(run_dir) if r.get("study") == job.study], start)
        backend.run(job)

    job = RungJob(space, protocol, data.num_classes, trials, run_dir, study_name, mode, "cheap", hooks.on_trial, reused)
    began = time.perf_counter()
    run_rung(job, RungStart("cheap", trials, rungs["cheap"]["images_per_trial"], protocol.protocol_hash, plan))
    if reference is not None:
        promoted = promoted_rows([r for r in read_rows(run_dir) if r.get("study") == study_name], promotion.margin)
        if promoted:
            grid = reference_space(space, promoted, promotion.seeds)
            run_rung(dataclasses.replace(job, space=grid, protocol=reference, trials=len(grid.grid),
                                         study=f"{study_name}-reference", rung="reference"),
                     RungStart("reference", len(grid.grid), rungs["reference"]["images_per_trial"],
                               reference.protocol_hash))
    return SearchSummary(run_dir, read_rows(run_dir), time.perf_counter() - began)


def _rung_plan(protocol: ProxyProtocol, promotion: Promotion | None, trials: int,
               available: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Each rung's record for ``run.json`` and the lines that print its budget before anything trains."""
    cheap_images = min(protocol.train_size or available, available) * protocol.epochs
    rungs: dict[str, Any] = {"cheap": {"protocol_hash": protocol.protocol_hash, "images_per_trial": cheap_images}}
    plan = [f"cheap rung: {trials} candidates x {cheap_images:,} images ({counted(protocol.epochs, 'epoch')} x "
            f"{cheap_images // protocol.epochs:,}), 1 seed = {trials * cheap_images:,} images"]
    if promotion is not None:
        reference = promotion.protocol(protocol)
        images = promotion.images(protocol, available)
        rungs["reference"] = {"protocol": reference.to_dict(), "protocol_hash": reference.protocol_hash,
                              "images_per_trial": images, "seeds": list(promotion.seeds), "margin": promotion.margin}
        margin = {"layer": "front + next non-dominated layer", "none": "front"}.get(
            str(promotion.margin), f"front + members within {promotion.margin} points")
        plan.append(f"reference rung: the cheap rung's {margin} x {counted(len(promotion.seeds), 'seed')} x "
                    f"{images:,} images ({counted(reference.epochs, 'epoch')} x {images // reference.epochs:,}) "
                    "per member")
    return rungs, tuple(plan)
