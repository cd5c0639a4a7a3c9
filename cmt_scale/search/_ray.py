"""The distributed backend: the same space and trainable on Ray Tune (OptunaSearch + ASHA).

Local runs start Ray with ``num_cpus`` and ``RAY_AUTH_MODE=disabled`` (no token written under the home
directory), its session files in a short folder under the system temp dir; ``--address`` joins an
existing cluster (``auto``, ``host:port`` or ``ray://...``). Each trial gets ``cpus_per_trial`` CPUs and
as many torch threads. Tune's experiment state lives in ``runs/NAME/ray/`` and ``Tuner.restore`` resumes
it, with the OptunaSearch searcher's state (its study) restored from the experiment checkpoint, not only
the trials. ASHA stops weak trials early on the per-epoch validation top-1. A ``sampler: grid`` space
runs each grid point once (``tune.grid_search``), trained in full.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cmt_scale.proxy import ProxyProtocol, TrialState
from search_spaces import SearchSpace

from ._backends import RayBackend, RungJob
from ._results import make_row, read_rows, write_results, write_row
from ._trial import make_candidate, run_trial, trial_protocol, trial_recipe

__all__ = ["run_ray_search"]


def _trainable(config: dict[str, Any], space: SearchSpace, protocol: ProxyProtocol, num_classes: int,
               run_dir: str, study_name: str, rung: str = "cheap", reused: tuple = ()) -> None:
    import ray

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    # the trial's data workers come out of its CPUs too (one per CPU), not one per core of the node
    protocol = protocol.replace(threads=threads, workers=protocol.workers if protocol.workers is not None else threads)
    session = _session()
    trial_id = session.get_context().get_trial_id()
    macs_holder: dict[str, Any] = {}

    def report(epoch: int, top1: float) -> None:
        # The last epoch is reported after the row is written: ASHA stops a trial that reaches max_t at
        # its report, and a stopped function never runs another line.
        if epoch + 1 < protocol.epochs:
            session.report({"top1": top1, "macs": macs_holder.get("macs", 0), "epoch": epoch + 1})

    candidate = make_candidate(space, space.trial_values(config), protocol, num_classes, reused)
    macs_holder["macs"] = candidate.macs or 0
    row = run_trial(space, space.trial_values(config), protocol, num_classes, trial_id=trial_id, backend="ray",
                    study=study_name, report=report, rung=rung, done=reused)
    write_row(run_dir, row)  # on the driver's disk when it shares the run folder
    # Infeasible or failed trials tell the searcher they are a bad point (top-1 0). The row travels with the
    # result too, so a driver on another machine than the worker still records it.
    top1 = row["top1_final"] if row["state"] == TrialState.COMPLETE else 0.0
    session.report({"top1": top1, "macs": row["macs"] or 0, "epoch": protocol.epochs, "state": row["state"],
                 "row": json.dumps(row)})


def _session():
    """Where a function trainable reports and finds its trial: ``ray.tune`` in the Ray versions that have
    ``tune.report`` and ``tune.get_context``, ``ray.train`` (their older home) from the 2.40 floor on."""
    from ray import tune

    if hasattr(tune, "report") and hasattr(tune, "get_context"):
        return tune
    from ray import train

    return train


def _run_config():
    """Tune's ``RunConfig``: ``ray.tune.RunConfig`` in the Ray versions that have it, ``ray.train.RunConfig``
    (the same class, its older home) from the 2.40 floor on."""
    from ray import tune

    if hasattr(tune, "RunConfig"):
        return tune.RunConfig
    from ray import train

    return train.RunConfig


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, on a cluster address nothing listens at (Ray itself retries for minutes)."""
    import socket

    if address == "auto":
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError):
        raise ValueError(f"--address={address!r} is not reachable; allowed: auto, or host:port / ray://host:port of "
                         "a running Ray head node") from None


def _ray_init(address: str | None, num_cpus: int) -> Path | None:
    """Join ``address`` or start a local Ray; returns the local session folder to remove afterwards."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return None
    if address:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
        return None
    temp = Path(tempfile.mkdtemp(prefix="cmtray"))  # short: Ray's socket paths are limited to 107 bytes
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp))
    return temp


def _check_gpus(per_trial: float) -> None:
    """Tune waits forever for resources no node has: a GPU request the cluster cannot meet is an error now."""
    import ray

    if per_trial <= 0:
        return
    available = ray.cluster_resources().get("GPU", 0)
    if available < per_trial:
        raise ValueError(f"gpus_per_trial={per_trial:g} is not allowed on this Ray cluster: it has {available:g} "
                         "GPUs; allowed: 0 (CPU trials), or a cluster whose nodes have GPUs")


def run_ray_search(job: RungJob, backend: RayBackend) -> None:
    """Run ``job`` as a Ray Tune experiment under the run folder's ``ray/``, restoring it when it exists."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space, protocol, num_classes, run_dir, study_name = job.space, job.protocol, job.num_classes, job.run_dir, job.study
    session_dir = _ray_init(backend.address, backend.num_cpus or os.cpu_count() or 2)
    try:
        _check_gpus(backend.gpus_per_trial)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, space=space, protocol=protocol, num_classes=num_classes,
                                 run_dir=str(run_dir.resolve()), study_name=study_name, rung=job.rung,
                                 # the run's own rows too, as Optuna's trials read them: a promoted member's
                                 # name, and results to reuse (the worker may not share the run folder)
                                 reused=(*read_rows(run_dir), *job.reused)),
            {"cpu": backend.cpus_per_trial, "gpu": backend.gpus_per_trial},
        )
        storage = (run_dir / "ray").resolve()
        experiment = storage / study_name
        if tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            if space.sampler == "grid":  # every grid point once, trained in full (no early stopping)
                searcher, scheduler, samples = None, None, 1
            else:
                searcher = OptunaSearch(metric=["top1", "macs"], mode=["max", "min"], seed=backend.seed)
                scheduler = ASHAScheduler(metric="top1", mode="max", time_attr="epoch", max_t=protocol.epochs,
                                          grace_period=1, reduction_factor=2)
                samples = job.trials
            tuner = tune.Tuner(
                trainable,
                param_space=space.to_ray(),
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=samples),
                run_config=_run_config()(name=study_name, storage_path=str(storage), verbose=1),
            )
        grid = tuner.fit()
        _rows_for_stopped_trials(grid, job)
    finally:
        if session_dir is not None:
            ray.shutdown()
            shutil.rmtree(session_dir, ignore_errors=True)
    write_results(run_dir)


def _trial_id_of(result) -> str | None:
    """A Tune result's trial id. Tune puts it in every reported result (``metrics["trial_id"]``); a trial that
    never reported has no public field with it, only its folder's name (``<trainable>_<8 hex id>_<n>_<params>``),
    so that one case parses the name (ray-project/ray#33198 asks for a public way to match a result to its
    trial)."""
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id is None:
        found = re.search(r"_([0-9a-f]{8})_\d+", os.path.basename(str(result.path or "")))
        trial_id = found.group(1) if found else None
    return trial_id


def _rows_for_stopped_trials(grid, job: RungJob) -> None:
    """Trials ASHA stopped never wrote their own row: build it from their last reported metrics."""
    space, protocol, run_dir = job.space, job.protocol, job.run_dir
    written = {str(r["trial_id"]) for r in read_rows(run_dir) if r.get("backend") == "ray"}
    for result in grid:
        trial_id = _trial_id_of(result)
        if trial_id is None or trial_id in written:
            continue
        metrics = result.metrics or {}
        if metrics.get("row"):  # the worker's own row, reported with its last result
            write_row(run_dir, json.loads(metrics["row"]))
            continue
        values = space.trial_values(result.config or {})
        candidate = make_candidate(space, values, protocol, job.num_classes, read_rows(run_dir))
        recipe = trial_recipe(space, values, protocol)
        state = TrialState.FAILED if result.error else TrialState.PRUNED
        write_row(run_dir, make_row(
            trial_id=trial_id, backend="ray", study=job.study, family=candidate.family, name=candidate.name,
            config=candidate.config_json, macs=candidate.macs, params=candidate.params,
            top1_final=metrics.get("top1"), top1_best=metrics.get("top1"), epochs_run=metrics.get("epoch"),
            state=state, error=str(result.error).splitlines()[0] if result.error else "stopped early by ASHA",
            seed=trial_protocol(protocol, values, candidate).seed, protocol_hash=protocol.protocol_hash,
            dataset=protocol.dataset, rung=job.rung, recipe=json.dumps(recipe.to_dict(), sort_keys=True),
        ))
