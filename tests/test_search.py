"""Search end to end at CI size: Optuna, Ray Tune (local and a real head node), baselines, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cmt_scale.proxy import ProxyProtocol, get_family
from cmt_scale.search import (
    RESULT_COLUMNS,
    OptunaBackend,
    RayBackend,
    read_rows,
    run_baselines,
    run_search,
    with_family_recipes,
)
from cmt_scale.search._results import write_row
from search_spaces import space_from_dict

TINY = ProxyProtocol(dataset="digits", train_size=400, val_size=200, resolution=32, epochs=1, batch_size=64, threads=2,
                     low_res="native")  # the published strides: 4x cheaper at 32 px, for speed


def _check_table(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert list(frame.columns) == list(RESULT_COLUMNS)
    csv = pd.read_csv(run_dir / "results.csv")
    assert len(csv) == len(frame)
    return frame


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmt_scale.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _search_args(out: Path, train_size: int, trials: int) -> list[str]:
    return ["search", "--space", "cmt_compound", "--dataset", "digits", "--train-size", str(train_size),
            "--val-size", "200", "--epochs", "3", "--trials", str(trials), "--threads", "2", "--out", str(out),
            "--no-promotion", "--low-res", "native"]


def _start_and_wait_for_a_row(args: list[str], out: Path) -> subprocess.Popen:
    """Start a CLI search and return once its first trial's row is on disk (a second trial is running)."""
    proc = _cli(*args)
    deadline = time.time() + 600  # generous: a loaded CI machine trains slowly
    while time.time() < deadline and len(list((out / "trials").glob("*.json"))) < 1:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    assert list((out / "trials").glob("*.json")), "no trial finished in time"
    return proc


def test_optuna_search_end_to_end(tmp_path) -> None:
    summary = run_search("cmt_compound", TINY, trials=3, out=tmp_path / "run", promotion=None)
    frame = _check_table(tmp_path / "run")
    assert len(frame) == 3 and set(frame["backend"]) == {"optuna"}
    assert summary.front and all(r["state"] == "complete" for r in summary.front)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["protocol_hash"] == with_family_recipes(TINY).protocol_hash and "torch" in run["versions"]
    assert (tmp_path / "run" / "study.db").is_file()
    # the same command again: nothing more to do, nothing counted twice
    again = run_search("cmt_compound", TINY, trials=3, out=tmp_path / "run", promotion=None)
    assert len(again.rows) == 3


def test_budget_mode_single_objective_with_pruner(tmp_path) -> None:
    import optuna

    summary = run_search("cmt_compound", TINY.replace(epochs=2), trials=3, out=tmp_path / "budget", mode="budget",
                         promotion=None)
    assert len(summary.rows) == 3 and {r["state"] for r in summary.rows} <= {"complete", "pruned"}
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path / 'budget' / 'study.db'}")
    assert len(study.directions) == 1


def test_ctrl_c_leaves_a_valid_table_and_a_resumable_study(tmp_path) -> None:
    out = tmp_path / "interrupted"
    args = _search_args(out, train_size=400, trials=2)
    proc = _start_and_wait_for_a_row(args, out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert len(_check_table(out)) >= 1
    done = _cli(*args)
    done.communicate(timeout=300)
    assert done.returncode == 0 and len(read_rows(out)) == 2


def test_a_trial_whose_row_was_written_before_an_interrupt_is_not_run_again(tmp_path) -> None:
    """Ctrl-C between a trial's row file and Optuna's bookkeeping: the study says FAIL, the row says done."""
    import optuna

    out = tmp_path / "late"
    run_search("cmt_compound", TINY, trials=1, out=out, promotion=None)
    study = optuna.load_study(study_name="late", storage=f"sqlite:///{out / 'study.db'}")
    interrupted = study.ask()
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    row = dict(read_rows(out)[0], trial_id=str(interrupted.number))
    write_row(out, row)
    summary = run_search("cmt_compound", TINY, trials=2, out=out, promotion=None)
    assert len(summary.rows) == 2 and len(study.trials) == 2


def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_search(monkeypatch) -> None:
    """Python ignores exceptions raised in finalizers; the guard's flag keeps the Ctrl-C anyway, and leaves out
    Python's "Exception ignored ... KeyboardInterrupt" traceback for it (other ignored exceptions still show)."""
    from cmt_scale.search._interrupt import interrupt_guard

    class SendsCtrlCWhileFinalizing:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside __del__, and Python drops its KeyboardInterrupt

    class FailsWhileFinalizing:
        def __del__(self) -> None:
            raise RuntimeError("a finalizer's own bug")

    reported: list = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with interrupt_guard() as interrupted:
        SendsCtrlCWhileFinalizing()  # finalized at once
        assert interrupted.raised
        FailsWhileFinalizing()
    assert [r.exc_type for r in reported] == [RuntimeError]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook == reported.append


def test_a_ctrl_c_while_optuna_records_a_trial_stops_cleanly_with_the_row_saved(tmp_path, monkeypatch) -> None:
    """The CI failure: SIGINT inside Optuna's tell left its ``_run_trial`` with an unbound local (internal error)."""
    from optuna.storages import RDBStorage

    record = RDBStorage.set_trial_state_values

    def ctrl_c_then_record(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, inside the storage call
        return record(self, *args, **kwargs)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", ctrl_c_then_record)
    with pytest.raises(KeyboardInterrupt):
        run_search("cmt_compound", TINY, trials=2, out=tmp_path / "told", promotion=None)
    assert len(read_rows(tmp_path / "told")) == 1  # the trial that finished keeps its row; the second never started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_ctrl_c_waits_outside_training_and_interrupts_inside_it() -> None:
    from cmt_scale.search._interrupt import interrupt_guard

    with interrupt_guard(deferred=True) as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert interrupted.raised  # recorded, not raised
        with pytest.raises(KeyboardInterrupt), interrupted.immediate():
            pass  # a recorded Ctrl-C is raised on entry
        interrupted.raised = False
        with pytest.raises(KeyboardInterrupt), interrupted.immediate():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_two_studies_share_a_run_folder_without_overwriting(tmp_path) -> None:
    run_search("cmt_compound", TINY, trials=1, out=tmp_path / "shared", study="A", promotion=None)
    run_search("cmt_compound", TINY, trials=1, out=tmp_path / "shared", study="B", promotion=None)
    assert sorted(r["study"] for r in read_rows(tmp_path / "shared")) == ["A", "B"]


def test_a_protocol_the_data_cannot_serve_fails_before_the_run_folder_exists(tmp_path) -> None:
    with pytest.raises(ValueError, match="val_size=2000 is not allowed for digits"):
        run_search("cmt_compound", TINY.replace(val_size=2000), trials=1, out=tmp_path / "never", promotion=None)
    assert not (tmp_path / "never").exists()


def test_resolution_check_accepts_exactly_what_builds() -> None:
    """`check_resolution` against the builders themselves: a resolution passes iff the model builds."""
    from cmt_scale.proxy import build_baseline
    from cmt_scale.search import check_resolution
    from scaling import get_preset
    from search_spaces import load_space

    def builds(make) -> bool:
        try:
            make()
        except ValueError:
            return False
        return True

    def passes(space, resolution: int) -> bool:
        return builds(lambda: check_resolution(space, resolution))

    deit, cmt, effnet = load_space("deit"), load_space("cmt_compound"), load_space("efficientnet")
    for resolution in range(4, 97, 2):
        assert passes(deit, resolution) == builds(lambda: build_baseline("deit_tiny", 10, resolution)), resolution
        assert passes(cmt, resolution) == builds(lambda: get_preset("cmt_ti").replace(img_size=resolution)), resolution
        assert passes(effnet, resolution)


def test_a_resolution_no_member_builds_at_fails_before_the_run_folder_exists(tmp_path) -> None:
    with pytest.raises(ValueError, match="resolution=48 is not allowed for the cmt_ti compound family; allowed: a "
                                         "positive multiple of 32"):
        run_search("cmt_compound", TINY.replace(resolution=48), trials=1, out=tmp_path / "never", promotion=None)
    with pytest.raises(ValueError, match=r"resolution=30 is not allowed for DeiT .*allowed: a multiple of 16"):
        run_baselines(TINY.replace(resolution=30), tmp_path / "never", families=["efficientnet", "deit"])
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("backend, option", [
    (OptunaBackend, {"address": "10.0.0.5:6379"}),
    (OptunaBackend, {"num_cpus": 2}),
    (RayBackend, {"storage": "sqlite:///x.db"}),
])
def test_an_option_of_the_other_backend_cannot_be_expressed(backend, option) -> None:
    """Each backend object holds only its own engine's options: there is nothing to check by hand."""
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(option))}'"):
        backend(**option)


@pytest.mark.parametrize("args, message", [
    (["--backend", "optuna", "--address", "10.0.0.5:6379"],
     "--address='10.0.0.5:6379' is not allowed with --backend optuna; allowed: only with --backend ray"),
    (["--backend", "optuna", "--num-cpus", "2"], "--num-cpus=2 is not allowed with --backend optuna"),
    (["--backend", "ray", "--storage", "sqlite:///x.db"],
     "--storage='sqlite:///x.db' is not allowed with --backend ray; allowed: only with --backend optuna"),
    (["--dataset", "digits", "--val-size", "200", "--train-size", "300", "--reuse",
      "no/such/run"],
     "reuse='no/such/run' is not allowed: it holds no trial rows; allowed: a run folder"),
])
def test_a_flag_that_cannot_apply_is_refused_on_the_command_line(args, message, tmp_path, capsys) -> None:
    from cmt_scale.cli import main

    assert main(["search", "--space", "cmt_compound", "--out", str(tmp_path / "never"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_a_backend_s_resources_are_checked_when_it_is_made() -> None:
    with pytest.raises(ValueError, match="cpus_per_trial=0 is not allowed; allowed: an integer >= 1"):
        RayBackend(cpus_per_trial=0)
    with pytest.raises(ValueError, match=r"backend='ray' is not allowed; allowed: OptunaBackend\(...\) or RayBackend"):
        run_search("cmt_compound", TINY, "never", trials=1, backend="ray")


def test_a_missing_gpu_fails_before_the_run_folder_exists(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device='cuda' is not available here; allowed: 'cpu' or 'auto'"):
        run_search("cmt_compound", TINY.replace(device="cuda"), trials=1, out=tmp_path / "never", promotion=None)
    with pytest.raises(ValueError, match="device='cuda' is not available here"):
        run_baselines(TINY.replace(device="cuda"), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_infeasible_candidates_are_never_trained(tmp_path) -> None:
    space = space_from_dict({"family": "cmt_compound", "base": "cmt_ti",
                             "params": {"phi": {"type": "float", "low": 0.5, "high": 1.0}},
                             "budget": {"max_macs": "1M"}})
    summary = run_search(space, TINY, trials=2, out=tmp_path / "inf", promotion=None)
    assert [r["state"] for r in summary.rows] == ["infeasible", "infeasible"]
    assert all(r["epochs_run"] == 0 and "max_macs" in r["error"] and r["wall_s"] < 1.0 for r in summary.rows)


def test_a_repeated_architecture_is_not_trained_twice(tmp_path) -> None:
    space = space_from_dict({"family": "cmt_compound", "base": "cmt_ti",
                             "params": {"phi": {"type": "categorical", "choices": [0.0]}}})
    summary = run_search(space, TINY, trials=2, out=tmp_path / "dup", promotion=None)
    first, second = summary.rows
    assert first["state"] == second["state"] == "complete" and first["top1_final"] == second["top1_final"]
    assert second["error"].startswith("same architecture as trial 0") and second["wall_s"] < 1.0
    # one architecture is one point on the front, in the summary and in the report's tables
    assert [r["trial_id"] for r in summary.front] == [first["trial_id"]]
    from analysis import load_results, pareto_front

    assert len(pareto_front(load_results(tmp_path / "dup"))) == 1


def test_latency_budget_is_measured_before_training(tmp_path) -> None:
    space = space_from_dict({"family": "cmt_compound", "base": "cmt_ti",
                             "params": {"phi": {"type": "float", "low": -1.0, "high": 0.0}},
                             "budget": {"max_latency_ms": "0.001ms"}})
    summary = run_search(space, TINY, trials=1, out=tmp_path / "lat", promotion=None)
    row = summary.rows[0]
    assert row["state"] == "infeasible" and row["latency_ms"] > 0.001 and "max_latency_ms" in row["error"]


def test_invalid_free_form_members_are_infeasible(tmp_path) -> None:
    space = space_from_dict({"family": "cmt_free", "params": {
        "dim_0": {"type": "categorical", "choices": [12]}, "dim_1": {"type": "categorical", "choices": [16]},
        "dim_2": {"type": "categorical", "choices": [24]}, "dim_3": {"type": "categorical", "choices": [32]},
        "heads_0": {"type": "categorical", "choices": [8]}, "heads_1": {"type": "categorical", "choices": [2]},
        "heads_2": {"type": "categorical", "choices": [4]}, "heads_3": {"type": "categorical", "choices": [8]},
        "depth_0": {"type": "int", "low": 1, "high": 1}, "depth_1": {"type": "int", "low": 1, "high": 1},
        "depth_2": {"type": "int", "low": 1, "high": 1}, "depth_3": {"type": "int", "low": 1, "high": 1}}})
    summary = run_search(space, TINY, trials=1, out=tmp_path / "free", promotion=None)
    assert summary.rows[0]["state"] == "infeasible"
    assert "embed_dims[0]=12 is not divisible by num_heads[0]=8" in summary.rows[0]["error"]


def test_baselines_write_the_same_schema(tmp_path) -> None:
    run_baselines(TINY, tmp_path / "base", families=["efficientnet"])
    frame = _check_table(tmp_path / "base")
    assert set(frame["name"]) == set(get_family("efficientnet").members) and set(frame["rung"]) == {"cheap"}
    assert set(frame["state"]) == {"complete"} and (frame["macs"] > 0).all()
    recipes = {json.loads(r)["lr"] for r in frame["recipe"]}
    assert recipes == {json.loads(with_family_recipes(TINY).recipes)["efficientnet"]["lr"]}  # the family's recipe
    assert len(run_baselines(TINY, tmp_path / "base", families=["efficientnet"]).rows) == 4  # resumed: no rerun
    with pytest.raises(ValueError, match="families='resnet' is not allowed"):
        run_baselines(TINY, tmp_path / "x", families=["resnet"])


def test_baselines_promote_each_family_s_front_to_the_reference_rung(tmp_path) -> None:
    from cmt_scale.search import Promotion, promoted_rows

    promotion = Promotion(train_size=500, epochs=1, seeds=(0, 1))
    summary = run_baselines(TINY, tmp_path / "base", families=["deit"], seeds=(0, 1), promotion=promotion)
    cheap = [r for r in summary.rows if r["rung"] == "cheap"]
    reference = [r for r in summary.rows if r["rung"] == "reference"]
    assert sorted((r["name"], r["seed"]) for r in cheap) == sorted((m, s) for m in get_family("deit").members
                                                                   for s in (0, 1))
    promoted = {r["config"] for r in promoted_rows(cheap, "layer")}
    assert sorted((r["config"], r["seed"]) for r in reference) == sorted((c, s) for c in promoted for s in (0, 1))
    assert summary.rung == "reference" and {p["seeds"] for p in summary.front} == {2}




def test_kill_and_resume_loses_nothing_and_counts_nothing_twice(tmp_path) -> None:
    out = tmp_path / "killed"
    args = _search_args(out, train_size=600, trials=3)
    proc = _start_and_wait_for_a_row(args, out)
    time.sleep(1.0)  # now inside the second trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(read_rows(out))
    assert 1 <= finished_before < 3
    done = _cli(*args)
    stdout, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    rows = read_rows(out)
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    import optuna

    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1  # the killed trial, re-queued with its parameters
    killed = next(t for t in study.trials if t.state.name == "FAIL")
    assert any(t.params == killed.params and t.state.name == "COMPLETE" for t in study.trials if t is not killed)


def test_bad_space_file_on_the_cli_is_one_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("family: cmt_compound\nbase: cmt_ti\nparams:\n  phi: {type: float, low: 2, high: 1}\n")
    proc = _cli("search", "--space", str(path), "--dataset", "digits", "--trials", "1", "--out", str(tmp_path / "r"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stderr.strip().count("\n") == 0
    assert "params.phi.high=1 is not allowed" in stderr


def test_a_resumed_search_counts_on_from_its_finished_trials(tmp_path, capsys) -> None:
    from cmt_scale.cli import main

    args = ["search", "--space", "cmt_compound", "--dataset", "digits", "--train-size", "150", "--val-size", "100",
            "--epochs", "1", "--threads", "2", "--out", str(tmp_path / "r"), "--no-promotion", "--low-res", "native"]
    assert main([*args, "--trials", "1"]) == 0
    assert "[1/1] complete" in capsys.readouterr().out
    assert main([*args, "--trials", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("[2/2] complete") and "complete 2 " in lines[0]
    # bad input is the error line alone: the header waits until every input has been checked
    assert main([*args, "--trials", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "cmt-scale search: error: trials=0 is not allowed; allowed: an integer >= 1"


def test_a_small_data_set_gets_sizes_it_can_serve_when_none_are_given(tmp_path, capsys) -> None:
    """The defaults (2,000 validation, 15,000 training images) are Fashion-MNIST's: on digits' 1,198 training
    images a search the user did not size holds out a fifth (239) and trains on the rest, and says so; a size
    the user gives is kept."""
    from cmt_scale.cli import main

    args = ["search", "--space", "cmt_compound", "--dataset", "digits", "--trials", "1", "--epochs", "1",
            "--resolution", "32", "--threads", "2", "--no-promotion", "--low-res", "native"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "digits has 1,198 training images: validation on 239, training on the rest" in out
    protocol = json.loads((tmp_path / "a" / "run.json").read_text())["protocol"]
    assert (protocol["val_size"], protocol["train_size"]) == (239, None)
    assert main([*args, "--val-size", "100", "--out", str(tmp_path / "b")]) == 0
    assert "validation on 100, training on the rest" in capsys.readouterr().out
    protocol = json.loads((tmp_path / "b" / "run.json").read_text())["protocol"]
    assert (protocol["val_size"], protocol["train_size"]) == (100, None)


def test_a_resumed_search_proposes_new_architectures_not_the_first_runs_again(tmp_path) -> None:
    """An interrupted search resumed: its sampler must not replay the first process's proposals (they would be
    reused, not retrained, but each would spend a trial of the budget on an architecture already measured)."""
    run_search("cmt_compound", TINY, tmp_path / "r", trials=2, promotion=None)
    run_search("cmt_compound", TINY, tmp_path / "r", trials=4, promotion=None)
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 4 and not any("result reused" in (r["error"] or "") for r in rows)
    assert len({r["config"] for r in rows}) == 4


@pytest.mark.slow
def test_ray_search_end_to_end_local(tmp_path) -> None:
    summary = run_search("cmt_compound", TINY, trials=3, out=tmp_path / "ray",
                         backend=RayBackend(num_cpus=2, cpus_per_trial=1), promotion=None)
    frame = _check_table(tmp_path / "ray")
    assert len(frame) == 3 and set(frame["backend"]) == {"ray"}
    assert summary.front
    again = run_search("cmt_compound", TINY, trials=3, out=tmp_path / "ray", backend=RayBackend(num_cpus=2),
                       promotion=None)
    assert len(again.rows) == 3  # Tuner.restore: the finished experiment is not run again


@pytest.mark.slow
def test_ray_search_with_a_relative_run_folder(tmp_path) -> None:
    """Ray workers run in their own folders: a relative --out must still receive every trial's row."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    args = _search_args(Path("runs/rel"), train_size=300, trials=2) + ["--backend", "ray", "--num-cpus", "2"]
    proc = subprocess.run([sys.executable, "-m", "cmt_scale.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(tmp_path / "runs" / "rel")
    assert len(rows) == 2 and all(r["state"] in ("complete", "pruned") for r in rows)
    assert any(r["state"] == "complete" and r["wall_s"] for r in rows)


@pytest.mark.slow
def test_ray_search_against_a_real_head_node(tmp_path) -> None:
    import shutil
    import tempfile

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # the head node must run the Ray this interpreter imports (a venv's, not whatever `ray` is first on PATH)
    beside = Path(sys.executable).parent / "ray"
    ray_cli = str(beside) if beside.exists() else "ray"
    port = "6399"
    temp = Path(tempfile.mkdtemp(prefix="crt"))  # short: Ray's socket paths are limited to 107 bytes
    start = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port,
                            "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(temp)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        proc = _cli("search", "--space", "cmt_compound", "--dataset", "digits", "--train-size", "400", "--val-size",
                    "200", "--epochs", "1", "--trials", "2", "--backend", "ray", "--address", f"127.0.0.1:{port}",
                    "--out", str(tmp_path / "cluster"), "--no-promotion", env=env)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        frame = _check_table(tmp_path / "cluster")
        assert len(frame) == 2 and set(frame["backend"]) == {"ray"}
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_kill_and_restore_loses_nothing(tmp_path) -> None:
    out = tmp_path / "raykilled"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    args = _search_args(out, train_size=400, trials=4) + ["--backend", "ray", "--num-cpus", "1"]
    proc = _start_and_wait_for_a_row(args, out)
    time.sleep(2.0)  # the next trial is running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(read_rows(out)) < 4
    done = _cli(*args, env=env)
    _, stderr = done.communicate(timeout=400)
    assert done.returncode == 0, stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4  # Tuner.restore: none lost, none twice


def _study_with_a_trial_left_running_by_a_dead_process(tmp_path: Path, row_written: bool):
    """An Optuna study in ``tmp_path`` whose trial 0 a process of this host left RUNNING and then died; with
    ``row_written``, it had written its row (file and attribute) first, as a kill -9 right after does."""
    import socket

    import optuna

    study = optuna.create_study(study_name="run", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=["maximize", "minimize"])
    trial = study.ask({"width": optuna.distributions.IntDistribution(1, 9)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr("pid", dead.pid)
    trial.set_user_attr("host", socket.gethostname())
    if row_written:
        write_row(tmp_path, {"backend": "optuna", "study": "run", "trial_id": "0", "state": "complete"})
        trial.set_user_attr("row_written", True)
    return study


@pytest.mark.parametrize("row_written", [False, True])
def test_a_killed_trial_is_requeued_only_when_it_left_no_row(tmp_path: Path, row_written: bool) -> None:
    """A trial killed before its row is re-run (re-queued with its parameters); one killed after its row was
    written finished and is counted once: re-queuing it would spend a trial of the budget on a copy, and the
    copy (which inherits the ``row_written`` attribute) must not count as finished while it waits, or the rung
    ends a trial short and runs it on the next resume, after its promotion was decided."""
    import optuna

    from cmt_scale.search._optuna import _finished, _requeue_dead_trials, _retry_callback

    study = _study_with_a_trial_left_running_by_a_dead_process(tmp_path, row_written)
    assert _requeue_dead_trials(study, tmp_path) == (0 if row_written else 1)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.params for t in waiting] == ([] if row_written else [study.trials[0].params])
    assert _finished(study, tmp_path) == (1 if row_written else 0)
    if row_written:  # the heartbeat's re-queue (other hosts) copies the attribute: the copy is not done
        _retry_callback()(study, study.trials[0])
        assert study.trials[-1].state == optuna.trial.TrialState.WAITING and study.trials[-1].user_attrs["row_written"]
        assert _finished(study, tmp_path) == 1
