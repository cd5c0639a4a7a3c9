"""The search driver: one run folder, one protocol, one of two backends, one results table.

``runs/NAME/`` holds ``run.json`` (the exact command, versions, the protocol and the space),
``trials/*.json`` (a row per finished trial), ``results.parquet`` / ``results.csv`` (the table), and
the backend's state: ``study.db`` (Optuna) or ``ray/`` (Ray Tune). Running the same command again
resumes.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from proxy import BASELINE_FAMILIES, ProxyProtocol, load_dataset, resolve_device
from search_spaces import SearchSpace, load_space, space_from_dict

from ._interrupt import interrupt_guard
from ._results import measured_rows, pareto_mask, read_rows, write_results, write_row
from ._trial import check_resolution, run_trial

__all__ = ["BACKENDS", "SearchSummary", "check_protocol_fits", "run_baselines", "run_search"]

BACKENDS = ("optuna", "ray")


@dataclass(frozen=True)
class SearchSummary:
    run_dir: Path
    rows: list[dict[str, Any]]
    wall_s: float

    @property
    def front(self) -> list[dict[str, Any]]:
        """Complete trials on the MACs/top-1 Pareto front, cheapest first; an architecture whose result a later
        trial reused (same config, protocol and seed) is one point, its first trial."""
        done = measured_rows(self.rows)
        keep = pareto_mask([(float(r["macs"]), float(r["top1_final"])) for r in done])
        return sorted((r for r, k in zip(done, keep) if k), key=lambda r: r["macs"])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("cmt-scale", "torch", "timm", "optuna", "ray", "fvcore"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _write_run_json(run_dir: Path, command: Sequence[str] | None, protocol: ProxyProtocol, extra: dict[str, Any]) -> None:
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
        data = load_dataset(protocol.dataset, protocol.data_root, protocol.download, load_size=protocol.resolution)
    available = len(data.train_labels)
    if protocol.val_size >= available:
        raise ValueError(f"val_size={protocol.val_size} is not allowed for {protocol.dataset}; allowed: fewer than its "
                         f"{available} training images")
    if protocol.train_size is not None and protocol.train_size > available - protocol.val_size:
        raise ValueError(f"train_size={protocol.train_size} is not allowed for {protocol.dataset}; allowed: at most "
                         f"{available - protocol.val_size} (its {available} training images less val_size)")


def _check_protocol_matches(run_dir: Path, protocol: ProxyProtocol) -> None:
    path = run_dir / "run.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8")).get("protocol_hash")
        if old and old != protocol.protocol_hash:
            raise ValueError(f"run folder {str(run_dir)!r} holds a run with protocol {old}, not {protocol.protocol_hash}; "
                             "allowed: the same protocol to resume, or another --out")


def run_search(
    space: SearchSpace | str | Path,
    protocol: ProxyProtocol,
    trials: int | None,
    out: str | Path,
    backend: str = "optuna",
    study: str | None = None,
    storage: str | None = None,
    mode: str = "pareto",
    address: str | None = None,
    cpus_per_trial: int = 1,
    num_cpus: int | None = None,
    seed: int = 0,
    command: Sequence[str] | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
) -> SearchSummary:
    """Search ``space`` for ``trials`` trials under ``protocol``; results land in ``out`` (resumable).

    ``on_start`` is called once every input has been checked, just before the first trial, with the rows
    the study already finished (a CLI prints its header there, so bad input gets the error line alone, and
    counts on from the finished trials).

    A ``sampler: grid`` space runs each of its grid points once (``trials=None`` means all of them).

    Example:
        >>> from proxy import ProxyProtocol
        >>> summary = run_search("cmt_compound", ProxyProtocol(dataset="digits", resolution=32, val_size=300,
        ...                      epochs=1), trials=4, out="runs/demo")  # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
    if mode not in ("pareto", "budget"):
        raise ValueError(f"mode={mode!r} is not allowed; allowed: pareto, budget")
    if isinstance(space, dict):
        space = space_from_dict(space)
    elif not isinstance(space, SearchSpace):
        space = load_space(space)
    if trials is None and space.sampler == "grid":
        trials = len(space.grid)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r} is not allowed; allowed: an integer >= 1")
    if space.sampler == "grid" and trials != len(space.grid):
        raise ValueError(f"trials={trials} is not allowed for a grid space; allowed: its {len(space.grid)} grid points")
    backend_options = (("storage", storage, "optuna"), ("address", address, "ray"), ("num_cpus", num_cpus, "ray"))
    for name, value, owner in backend_options:
        if value is not None and backend != owner:  # silently ignoring it would run somewhere the user did not ask
            raise ValueError(f"{name}={value!r} is not allowed with backend={backend!r}; allowed: only with "
                             f"backend={owner!r}")
    for name, value in (("cpus_per_trial", cpus_per_trial), ("num_cpus", num_cpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")
    check_resolution(space, protocol.resolution)
    run_dir = Path(out)
    study_name = study or run_dir.name
    data = load_dataset(protocol.dataset, protocol.data_root, protocol.download, load_size=protocol.resolution)
    check_protocol_fits(protocol, data)
    _check_protocol_matches(run_dir, protocol)
    previous = run_dir / "run.json"
    recorded = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    if (backend == "ray" and space.sampler != "grid" and recorded.get("study") == study_name
            and recorded.get("trials") != trials):
        raise ValueError(f"trials={trials} is not allowed when resuming the Ray run in {str(run_dir)!r}: Tune restores "
                         "an experiment with its own trial count; allowed: the same --trials, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_json(run_dir, command, protocol, {"space": space.source, "family": space.family, "backend": backend,
                                                 "study": study_name, "trials": trials, "mode": mode})
    if on_start is not None:
        on_start([r for r in read_rows(run_dir) if r.get("study") == study_name])
    start = time.perf_counter()
    if backend == "optuna":
        from ._optuna import run_optuna_search

        run_optuna_search(space, protocol, data.num_classes, trials, run_dir, study_name, storage, mode, seed,
                          on_trial=on_trial)
    else:
        from ._ray import run_ray_search

        run_ray_search(space, protocol, data.num_classes, trials, run_dir, study_name, address, cpus_per_trial,
                       num_cpus, seed)
    rows = read_rows(run_dir)
    return SearchSummary(run_dir, rows, time.perf_counter() - start)


def run_baselines(
    protocol: ProxyProtocol,
    out: str | Path,
    families: Sequence[str] = ("deit", "efficientnet"),
    command: Sequence[str] | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SearchSummary:
    """Train every member of the baseline ``families`` under ``protocol``; rows in the same schema.

    Resumable: members that already have a row in ``out`` are not trained again.
    """
    unknown = [f for f in families if f not in BASELINE_FAMILIES]
    if unknown or not families:
        raise ValueError(f"families={','.join(families)!r} is not allowed; allowed: {', '.join(BASELINE_FAMILIES)}")
    spaces = {family: load_space(family) for family in families}
    for space in spaces.values():
        check_resolution(space, protocol.resolution)
    data = load_dataset(protocol.dataset, protocol.data_root, protocol.download, load_size=protocol.resolution)
    check_protocol_fits(protocol, data)
    run_dir = Path(out)
    _check_protocol_matches(run_dir, protocol)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_run_json(run_dir, command, protocol, {"families": list(families), "backend": "baselines"})
    done = {r["trial_id"] for r in read_rows(run_dir)}
    start = time.perf_counter()
    with interrupt_guard() as interrupted:
        for family, space in spaces.items():
            for name in BASELINE_FAMILIES[family]:
                trial_id = f"{family}-{name}"
                if trial_id in done:
                    continue
                if interrupted.raised:  # a Ctrl-C that a finalizer swallowed still stops here
                    raise KeyboardInterrupt
                row = run_trial(space, {"model": name}, protocol, data.num_classes, trial_id=trial_id,
                                backend="baselines", study=run_dir.name)
                write_row(run_dir, row)
                write_results(run_dir)
                if on_trial is not None:
                    on_trial(row)
    write_results(run_dir)
    return SearchSummary(run_dir, read_rows(run_dir), time.perf_counter() - start)
