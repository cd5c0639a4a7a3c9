"""The embedded backend: Optuna in this process, its study in a SQLite file under the run folder.

Two modes:

- ``pareto`` (default): two objectives, maximise top-1 and minimise MACs, with Optuna's multi-objective
  TPE sampler. TPE over NSGA-II because searches here are small (tens of trials): TPE models the good
  region from the first trials on, while NSGA-II needs several generations of a population before its
  selection means anything. Optuna cannot prune multi-objective studies, so every feasible trial runs its
  full protocol.
- ``budget``: one objective, top-1, under the space's budget (a hard constraint checked before training),
  with Optuna's successive-halving pruner on the per-epoch validation top-1: multi-fidelity for when
  the budget, not the front, is the question.

Resuming: the study lives in ``study.db`` (``optuna-dashboard sqlite:///runs/NAME/study.db`` opens it as
is) and is loaded with ``load_if_exists``. Each trial records its process and host; on start, a trial
left RUNNING by a process of this host that no longer exists is failed and re-queued with the same
parameters, and the heartbeat does the same for other hosts after its grace period
(``RetryHeartbeatStaleTrialCallback``). The search then runs until the requested number of trials has *finished*:
trials that were killed are neither lost nor counted twice.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from cmt_scale.proxy import TrialPruned, TrialState
from search_spaces import SearchSpace

from ._backends import RungJob, SearchMode
from ._interrupt import interrupt_guard
from ._results import read_rows, write_results, write_row
from ._trial import run_trial

__all__ = ["run_optuna_search"]

log = logging.getLogger(__name__)
HEARTBEAT_S = 5
GRACE_S = 30


def _retry_callback():
    """Optuna's re-queue of a stale trial with its parameters: ``RetryHeartbeatStaleTrialCallback`` where Optuna
    has it (4.9 on), ``RetryFailedTrialCallback`` (the same re-queue, the older name; Optuna 4.0 is the floor
    .ci/run tests) before."""
    from optuna import storages

    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return retry(max_retry=3)


def _stale_trial_keyword() -> str:
    """The name under which `RDBStorage` takes the stale-trial callback: ``heartbeat_stale_trial_callback`` in
    the Optuna versions that have it (4.9 on), ``failed_trial_callback`` before (read from its signature)."""
    import inspect

    from optuna.storages import RDBStorage

    names = inspect.signature(RDBStorage.__init__).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_dead_trials(study, run_dir: Path) -> int:
    """Fail and re-queue trials that a dead process of this host left RUNNING; return how many re-queued.

    Public API only: ``study.tell`` finishes another process's RUNNING trial as FAIL, and the retry callback
    (the one the heartbeat uses for other hosts) enqueues its parameters again. A trial whose row was written
    before its process died is failed but not re-queued: it finished (`_finished_numbers` counts it), and
    training it again would spend a trial on an architecture the run already has."""
    import optuna

    host, count = socket.gethostname(), 0
    retry = _retry_callback()
    finished = _finished_numbers(study, run_dir)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, trial_host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if trial_host == host and pid is not None and not _process_alive(int(pid)):
            failed = study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            # not finished meanwhile by its own heartbeat, and without a row
            if failed.state == optuna.trial.TrialState.FAIL and trial.number not in finished:
                retry(study, failed)
                count += 1
    return count


def _finished_numbers(study, run_dir: Path) -> set[int]:
    """Trials that ended with a recorded row (complete, pruned, infeasible or failed with a reason).

    The row files are the truth: a Ctrl-C that lands after a trial's row is written but before Optuna
    hears of it leaves that trial FAIL in the study, yet it finished and must not be run again.
    """
    # A re-queued copy inherits its original's user attributes (Optuna's retry callback copies them), so only a
    # trial that has itself ended counts by its ``row_written``; else a copy waiting to run would count as done
    # and the rung would end a trial short, to run it on the next resume after its promotion was decided.
    numbers = {t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get("row_written") and t.state.is_finished()}
    numbers |= {int(r["trial_id"]) for r in read_rows(run_dir)
                if r.get("backend") == "optuna" and r.get("study") == study.study_name and str(r["trial_id"]).isdigit()}
    return numbers


def _finished(study, run_dir: Path) -> int:
    return len(_finished_numbers(study, run_dir))


def _point_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _enqueue_missing_grid_points(study, space: SearchSpace, run_dir: Path) -> int:
    """Queue every grid point that has no row yet (once); return how many trials remain.

    Each point is enqueued explicitly rather than left to ``GridSampler``, which counts a point whose
    trial was interrupted (FAIL, no row) as visited and would never train it again.
    """
    import optuna

    finished = _finished_numbers(study, run_dir)
    trials = study.get_trials(deepcopy=False)
    done = {_point_key(t.params) for t in trials if t.number in finished}
    waiting = {_point_key(t.system_attrs.get("fixed_params", t.params)) for t in trials
               if t.state == optuna.trial.TrialState.WAITING}
    missing = [point for point in space.grid if _point_key(point) not in done]
    for point in missing:
        if _point_key(point) not in waiting:
            study.enqueue_trial(point)
    return len(missing)


def _suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's values for ``space``'s parameters, from the distributions `SearchSpace.to_optuna` defines."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for name, dist in space.to_optuna().items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def run_optuna_search(job: RungJob, storage_url: str | None = None, seed: int = 0) -> None:
    """Run ``job`` on an Optuna study in ``storage_url`` (default the run folder's ``study.db``), resuming it."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is reported by our own rows and lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space, protocol, run_dir, study_name, mode = job.space, job.protocol, job.run_dir, job.study, job.mode
    url = storage_url or f"sqlite:///{(run_dir / 'study.db').as_posix()}"
    from sqlalchemy.exc import SQLAlchemyError

    try:
        storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             **{_stale_trial_keyword(): _retry_callback()})
    except (SQLAlchemyError, ImportError, ValueError) as err:  # a bad URL or a missing database driver
        raise ValueError(f"--storage={url!r} cannot be opened ({type(err).__name__}); allowed: an Optuna RDB URL "
                         "such as sqlite:///runs/NAME/study.db or postgresql://...") from None
    if space.sampler == "grid":  # a study fixed in advance: every point is enqueued, the sampler never asked
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if mode == SearchMode.PARETO:
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, sampler=sampler,
                                    directions=["maximize", "minimize"])
        study.set_metric_names(["top1", "macs"])  # optuna-dashboard labels the two objectives
    else:
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, sampler=sampler,
                                    direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner())
        study.set_metric_names(["top1"])
    if study.trials and space.sampler != "grid":
        # A resumed study's sampler starts from its seed again and would replay the first run's proposals,
        # which the rows then reuse: trials spent, no new architecture. Seeded on from the trials it has
        # instead: still reproducible, and each resume explores on.
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), multivariate=True,
                                                   constant_liar=True)
    requeued = _requeue_dead_trials(study, run_dir)
    if requeued:
        log.info("re-queued %d trial(s) that a killed process of this host left running", requeued)
    remaining = (_enqueue_missing_grid_points(study, space, run_dir) if space.sampler == "grid"
                 else job.trials - _finished(study, run_dir))
    if remaining <= 0:
        write_results(run_dir)
        return

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        values = _suggest(trial, space)
        values_all = space.trial_values(values)

        def report(epoch: int, top1: float) -> None:
            if mode == SearchMode.BUDGET:
                trial.report(top1, epoch)
                if trial.should_prune():
                    raise TrialPruned()

        # A Ctrl-C recorded between trials is raised on entry (nothing new trains); one during training stops
        # it at once; one in Optuna's own bookkeeping waits for the callback, so it is never left half-done.
        with interrupted.immediate():
            row = run_trial(space, values_all, protocol, job.num_classes, trial_id=str(trial.number),
                            backend="optuna", study=study_name, report=report,
                            done=[*read_rows(run_dir), *job.reused], rung=job.rung)
        write_row(run_dir, row)
        write_results(run_dir)
        trial.set_user_attr("state", row["state"])
        trial.set_user_attr("row_written", True)
        if row["error"]:
            trial.set_user_attr("error", row["error"][:500])
        if job.on_trial is not None:
            job.on_trial(row)
        if row["state"] in (TrialState.INFEASIBLE, TrialState.PRUNED):
            raise optuna.TrialPruned(row["error"] or row["state"])
        if row["state"] == TrialState.FAILED:
            raise _TrialFailed(row["error"])
        return (row["top1_final"], row["macs"]) if mode == SearchMode.PARETO else row["top1_final"]

    # A failed trial is recorded (its row says why) and the search goes on; whatever ends the loop (Ctrl-C
    # included), the table is rebuilt from the rows that were written.
    with interrupt_guard(deferred=True) as interrupted:
        try:
            study.optimize(objective, n_trials=remaining, catch=(_TrialFailed,), gc_after_trial=False,
                           callbacks=[lambda study, _trial: study.stop() if interrupted.raised else None])
        finally:
            write_results(run_dir)
        if interrupted.raised:  # a Ctrl-C that a finalizer swallowed still ends the search
            raise KeyboardInterrupt


class _TrialFailed(Exception):
    pass
