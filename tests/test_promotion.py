"""Promotion (multi-objective successive halving): the cheap rung's front plus margin, and only that, is re-trained
on the reference rung with its seeds; it resumes after kill -9 at either rung without re-training a finished row;
Optuna and Ray Tune promote and measure the same members."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmt_scale.proxy import ProxyProtocol
from cmt_scale.search import (
    OptunaBackend,
    Promotion,
    RayBackend,
    non_dominated_layers,
    promoted_rows,
    read_rows,
    run_search,
    with_family_recipes,
)
from search_spaces import space_from_dict

TINY = ProxyProtocol(dataset="digits", train_size=300, val_size=200, resolution=32, epochs=1, batch_size=64, threads=1,
                     low_res="native")  # the published strides: 4x cheaper at 32 px, for speed
REFERENCE = Promotion(train_size=500, epochs=1, seeds=(0, 1))
GRID = space_from_dict({"family": "cmt_compound", "base": "cmt_ti", "sampler": "grid",
                        "params": {"phi": {"type": "categorical", "choices": [-2.0, -1.75, -1.5, -1.25]}}})


def _row(config: str, macs: float, top1: float, seed: int = 0, rung: str = "cheap") -> dict:
    return {"config": config, "macs": macs, "top1_final": top1, "state": "complete", "protocol_hash": "h",
            "seed": seed, "rung": rung, "trial_id": config}


def test_non_dominated_layers_by_hand() -> None:
    # (cost, top-1): a and b are the front; c is dominated by b only; d by c (and b); e ties a exactly
    points = [(1, 50), (2, 60), (3, 55), (4, 50), (1, 50)]
    assert non_dominated_layers(points) == [0, 0, 1, 2, 0]


def test_a_reference_rung_on_the_cheap_protocol_keeps_both_seeds_on_the_front(tmp_path) -> None:
    """The reference rung's seed 0 reuses the cheap row (same protocol, config, seed and top-1): the front, read
    from the reference rung, still averages both of its seeds, in whichever order the rows were written."""
    from cmt_scale.search import SearchSummary

    cheap = [{**_row("a", 1.0, 36.0), "family": "f"}, {**_row("b", 2.0, 26.0), "family": "f"}]
    reference = [{**_row(c, m, t, seed=s, rung="reference"), "family": "f"}
                 for c, m, t, s in (("a", 1.0, 36.0, 0), ("a", 1.0, 26.0, 1), ("b", 2.0, 26.0, 0), ("b", 2.0, 38.5, 1))]
    for rows in (cheap + reference, reference + cheap):
        front = SearchSummary(tmp_path, rows, 0.0).front
        # by hand: a = (36 + 26) / 2 = 31.0, b = (26 + 38.5) / 2 = 32.25, each of 2 seeds
        assert [(r["config"], r["top1_final"], r["seeds"]) for r in front] == [("a", 31.0, 2), ("b", 32.25, 2)]


def test_promotion_takes_the_front_and_the_next_layer() -> None:
    rows = [_row("a", 1, 50), _row("b", 2, 60), _row("c", 3, 55), _row("d", 4, 50), _row("e", 5, 40)]
    assert [r["config"] for r in promoted_rows(rows, "layer")] == ["a", "b", "c"]
    assert [r["config"] for r in promoted_rows(rows, "none")] == ["a", "b"]
    # within 5 points of the best front top-1 at its cost or less: c (55 vs 60) but not d (50 vs 60)
    assert [r["config"] for r in promoted_rows(rows, 5.0)] == ["a", "b", "c"]
    assert [r["config"] for r in promoted_rows(rows, 10.0)] == ["a", "b", "c", "d"]
    # seeds of one member are averaged before ranking; reference rows never promote anything
    seeded = rows + [_row("c", 3, 75, seed=1), _row("z", 1, 99, rung="reference")]
    assert [r["config"] for r in promoted_rows(seeded, "none")] == ["a", "b", "c"]  # c at its mean, 65, beats b
    with pytest.raises(ValueError, match="seeds=.* is not allowed; allowed: 2 or more"):
        Promotion(seeds=(0,))
    with pytest.raises(ValueError, match="margin='wide' is not allowed"):
        Promotion(margin="wide")


def test_the_reference_rung_retrains_exactly_the_promoted_members(tmp_path) -> None:
    summary = run_search(GRID, TINY, tmp_path / "run", promotion=REFERENCE)
    rows = read_rows(tmp_path / "run")
    cheap = [r for r in rows if r["rung"] == "cheap"]
    reference = [r for r in rows if r["rung"] == "reference"]
    assert len(cheap) == 4 and all(r["state"] == "complete" for r in rows)
    expected = {r["config"] for r in promoted_rows(cheap, "layer")}
    assert {(r["config"], r["seed"]) for r in reference} == {(c, s) for c in expected for s in (0, 1)}
    assert len(reference) == 2 * len(expected)
    names = {r["config"]: r["name"] for r in cheap}
    assert all(r["name"] == names[r["config"]] for r in reference)  # "cmt phi=-2.00", not only its shape
    assert {r["protocol_hash"] for r in reference} == {REFERENCE.protocol(with_family_recipes(TINY)).protocol_hash}
    assert summary.rung == "reference" and all(p["seeds"] == 2 for p in summary.front)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["rungs"]["reference"]["seeds"] == [0, 1]
    # the same call again trains nothing
    again = run_search(GRID, TINY, tmp_path / "run", promotion=REFERENCE)
    assert len(again.rows) == len(rows)
    with pytest.raises(ValueError, match="holds a reference rung with protocol"):
        run_search(GRID, TINY, tmp_path / "run", promotion=Promotion(train_size=400, epochs=1))


@pytest.mark.slow  # two searches (about a minute): kept out of the 10-minute default run
def test_a_longer_reference_rung_in_a_new_folder_reuses_the_cheap_rung(tmp_path) -> None:
    old = tmp_path / "old"
    run_search(GRID, TINY, old, promotion=REFERENCE)
    before = _snapshot(old)
    longer = Promotion(train_size=500, epochs=2, seeds=(0, 1), test=True)
    with pytest.raises(ValueError, match=r"reuse=.*nowhere.*holds no trial rows"):
        run_search(GRID, TINY, tmp_path / "new", promotion=longer, reuse=[tmp_path / "nowhere"])
    assert not (tmp_path / "new").exists()  # bad input writes nothing

    summary = run_search(GRID, TINY, tmp_path / "new", promotion=longer, reuse=[old])
    assert _snapshot(old) == before  # the earlier run is read, never written
    old_cheap = {r["config"]: r for r in read_rows(old) if r["rung"] == "cheap"}
    rows = read_rows(tmp_path / "new")
    cheap = [r for r in rows if r["rung"] == "cheap"]
    assert {r["config"] for r in cheap} == set(old_cheap)
    for row in cheap:  # reused, not retrained: the earlier run's result, named as such
        assert row["top1_final"] == old_cheap[row["config"]]["top1_final"]
        assert f"of study {old.name}: result reused" in row["error"]
    reference = [r for r in rows if r["rung"] == "reference"]
    expected = {r["config"] for r in promoted_rows(cheap, "layer")}
    assert {(r["config"], r["seed"]) for r in reference} == {(c, s) for c in expected for s in (0, 1)}
    assert all(r["epochs_run"] == 2 and r["error"] is None for r in reference)  # trained on the new rung
    assert all(r["test_top1"] is not None and 0 <= r["test_top1"] <= 100 for r in reference)
    assert all(r["test_top1"] is None for r in cheap)
    assert summary.rung == "reference"
    assert longer.protocol(TINY).eval_test and not REFERENCE.protocol(TINY).eval_test


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmt_scale.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, out: Path, rung: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r.get("rung") == rung for r in read_rows(out)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no {rung} row in time")


def _snapshot(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (out / "trials").glob("*.json")}


@pytest.mark.slow  # over 30 s on 2 cores: runs after the default suite
def test_promotion_resumes_after_kill_9_at_either_rung_without_retraining(tmp_path) -> None:
    out = tmp_path / "killed"
    args = ["search", "--space", "cmt_compound", "--dataset", "digits", "--train-size", "300", "--val-size", "200",
            "--epochs", "1", "--threads", "1", "--trials", "4", "--reference-train-size", "500",
            "--reference-epochs", "1", "--out", str(out), "--low-res", "native"]
    proc = _cli(*args)
    _kill_after(proc, out, "cheap")
    first = _snapshot(out)
    proc = _cli(*args)
    _kill_after(proc, out, "reference")
    second = _snapshot(out)
    assert all(second[name] == text for name, text in first.items())  # nothing that finished was redone
    done = _cli(*args)
    _, stderr = done.communicate(timeout=900)
    assert done.returncode == 0, stderr[-3000:]
    final = _snapshot(out)
    assert all(final[name] == text for name, text in second.items())
    rows = read_rows(out)
    cheap = [r for r in rows if r["rung"] == "cheap"]
    reference = [r for r in rows if r["rung"] == "reference"]
    assert len(cheap) == 4
    expected = {r["config"] for r in promoted_rows(cheap, "layer")}
    assert sorted((r["config"], r["seed"]) for r in reference) == sorted((c, s) for c in expected for s in (0, 1))


@pytest.mark.slow
def test_optuna_and_ray_promote_and_measure_the_same_front(tmp_path) -> None:
    fronts = {}
    for backend in (OptunaBackend(), RayBackend(num_cpus=2)):
        summary = run_search(GRID, TINY, tmp_path / backend.name, backend=backend, promotion=REFERENCE)
        # each row's name too: a promoted member keeps its cheap-rung name on either backend
        reference = sorted((r["config"], r["seed"], r["top1_final"], r["name"]) for r in summary.rows
                           if r["rung"] == "reference")
        cheap_names = {r["config"]: r["name"] for r in summary.rows if r["rung"] == "cheap"}
        assert reference and all(name == cheap_names[config] for config, _, _, name in reference), backend.name
        fronts[backend.name] = ([(p["config"], round(p["top1_final"], 6)) for p in summary.front], reference)
    assert fronts["optuna"] == fronts["ray"]


def test_the_printed_budget_counts_one_epoch_and_one_seed_in_the_singular() -> None:
    from cmt_scale.search._driver import _rung_plan

    # TINY: 300 images x 1 epoch; REFERENCE: 500 images x 1 epoch, 2 seeds (hand-computed lines)
    _, plan = _rung_plan(TINY, REFERENCE, trials=3, available=1000)
    assert plan[0] == "cheap rung: 3 candidates x 300 images (1 epoch x 300), 1 seed = 900 images"
    assert plan[1] == ("reference rung: the cheap rung's front + next non-dominated layer x 2 seeds x 500 images "
                       "(1 epoch x 500) per member")


def test_a_train_size_of_every_image_left_is_all_and_its_rows_are_reused(tmp_path) -> None:
    """digits: 1,198 training images less 200 held out = 998. A cheap rung of 998 images and a reference rung
    of "all" are one protocol (one hash), so the reference rung's seed 0 reuses the cheap rows, not retrains."""
    grid = space_from_dict({"family": "cmt_compound", "base": "cmt_ti", "sampler": "grid",
                            "params": {"phi": {"type": "categorical", "choices": [-2.0, -1.75]}}})
    cheap = TINY.replace(train_size=998)
    summary = run_search(grid, cheap, tmp_path / "run", promotion=Promotion(seeds=(0, 1)))
    assert len({r["protocol_hash"] for r in summary.rows}) == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["protocol"]["train_size"] is None
    reference = [r for r in summary.rows if r["rung"] == "reference"]
    assert reference and all(("result reused" in (r["error"] or "")) == (r["seed"] == 0) for r in reference)
