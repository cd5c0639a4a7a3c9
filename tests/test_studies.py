"""The studies beyond the paper at CI size (digits, tiny members): coefficient fit, scaling ablation, proxy fidelity."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from analysis import bootstrap_interval, kendall_tau, rank_agreement, spearman_rho, top_k_overlap
from cmt_scale.cli import main
from cmt_scale.proxy import ProxyProtocol, get_family
from cmt_scale.search import RayBackend, read_rows
from cmt_scale.studies import TOLERANCE, ablate_scaling, coefficient_grid, fit_coefficients, proxy_fidelity
from scaling import estimate_cost, scale

TINY = ProxyProtocol(dataset="digits", train_size=200, val_size=100, resolution=32, epochs=1, batch_size=64, threads=2,
                     low_res="native")  # the published strides: 4x cheaper at 32 px, for speed


# ---------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlations_agree_with_scipy_on_constructed_rankings(seed) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.permutation(12).astype(float)
    cheap = reference + rng.normal(0, 3, 12)
    cheap[:3] = cheap[3]  # ties on one side (tau-b's correction)
    assert spearman_rho(cheap, reference) == pytest.approx(scipy.stats.spearmanr(cheap, reference)[0], abs=1e-12)
    assert kendall_tau(cheap, reference) == pytest.approx(scipy.stats.kendalltau(cheap, reference)[0], abs=1e-12)


def test_rank_statistics_on_hand_computed_cases() -> None:
    ranks = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman_rho(ranks, ranks) == 1.0 and kendall_tau(ranks, ranks[::-1]) == -1.0
    # one swapped adjacent pair among 5: tau = (9 - 1) / 10, rho = 1 - 6 * 2 / (5 * 24)
    swapped = [2.0, 1.0, 3.0, 4.0, 5.0]
    assert kendall_tau(swapped, ranks) == pytest.approx(0.8) and spearman_rho(swapped, ranks) == pytest.approx(0.9)
    # the best two by x are models 4 and 3; by y, models 4 and 0: one of two shared
    assert top_k_overlap([1, 2, 3, 4, 5], [4.5, 2, 3, 1, 5], k=2) == 0.5
    with pytest.raises(ValueError, match="k=0 is not allowed"):
        top_k_overlap(ranks, ranks, k=0)


def test_top_k_overlap_counts_ties_by_their_chance_of_being_picked() -> None:
    # two models tied best by x, y ranks one of them first: a coin flip, not the list order
    assert top_k_overlap([1.0, 1.0, 0.0], [0.0, 1.0, 0.5], k=1) == 0.5
    assert top_k_overlap([1.0, 1.0, 0.0], [1.0, 0.0, 0.5], k=1) == 0.5
    # against every way of breaking the ties on both sides, averaged (an independent brute force)
    x, y = [3.0, 3.0, 3.0, 1.0, 0.0], [2.0, 3.0, 0.0, 3.0, 3.0]
    for k in (1, 2, 3, 4):
        overlaps = []
        for order_x in itertools.permutations(range(5)):
            top_x = set(sorted(range(5), key=lambda i: (-x[i], order_x[i]))[:k])
            for order_y in itertools.permutations(range(5)):
                top_y = set(sorted(range(5), key=lambda i: (-y[i], order_y[i]))[:k])
                overlaps.append(len(top_x & top_y) / k)
        assert top_k_overlap(x, y, k) == pytest.approx(sum(overlaps) / len(overlaps), abs=1e-12)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    x = np.arange(15, dtype=float)
    y = x + rng.normal(0, 4, 15)
    low, high = bootstrap_interval(x, y, spearman_rho, resamples=500, seed=7)
    assert low < spearman_rho(x, y) < high <= 1.0
    assert (low, high) == bootstrap_interval(x, y, spearman_rho, resamples=500, seed=7)
    agreement = rank_agreement(x, y, resamples=200)
    assert agreement.top_k == 3 and agreement.models == 15


# ---------------------------------------------------------------------------------------------- coefficient fit
def test_coefficient_grid_matches_a_hand_enumeration_and_holds_the_constraint() -> None:
    grid = coefficient_grid(step=0.5)
    # alpha, beta in {1, 1.5, 2, 2.5}: (1.5, 1.5) and (2, 1.5) already exceed 2.5 before gamma
    expected = {(1.0, 1.0): math.sqrt(2.5), (1.0, 1.5): math.sqrt(2.5 / 1.5**1.5), (1.5, 1.0): math.sqrt(2.5 / 1.5),
                (2.0, 1.0): math.sqrt(2.5 / 2), (2.5, 1.0): 1.0}
    assert {(c.alpha, c.beta): c.gamma for c in grid} == {k: round(v, 3) for k, v in expected.items()}
    for c in coefficient_grid(step=0.1):
        assert min(c.alpha, c.beta, c.gamma) >= 1 and abs(c.cost_multiplier / 2.5 - 1) <= TOLERANCE
    with pytest.raises(ValueError, match="step=0 is not allowed"):
        coefficient_grid(step=0)


def test_fit_trains_each_architecture_once_and_keeps_the_constraint(tmp_path) -> None:
    # target 1.2, step 0.1: (1, 1, 1.095), (1, 1.1, 1.02), (1.1, 1, 1.044), (1.2, 1, 1); at 32 px every gamma
    # rounds back to 32, and alpha 1.1 and 1.2 both give the 7-block stage 8 blocks: one architecture.
    result = fit_coefficients(TINY, tmp_path / "fit", phi=1.0, base_phi=-2, step=0.1, target=1.2)
    table = result.table
    assert len(table) == 5 and bool(table.iloc[0]["is_paper"])
    grid = table[~table["is_paper"]]
    assert all(abs(g / 1.2 - 1) <= TOLERANCE for g in grid["cost_growth"])
    base = scale("cmt_ti", -2, resolution=32)
    a11 = scale(base, 1.0, 1.1, 1.0, 1.044)
    assert a11.depths == (1, 1, 8, 1) and a11.depths == scale(base, 1.0, 1.2, 1.0, 1.0).depths
    twins = grid[grid["alpha"].isin([1.1, 1.2]) & (grid["beta"] == 1.0)]
    assert twins["trained_as"].nunique() == 1 and twins["top1"].nunique() == 1
    rows = [r for r in read_rows(tmp_path / "fit") if r["study"].startswith("fit-")]
    assert len(rows) == table["trained_as"].nunique() == 4
    assert all(r["state"] == "complete" and "reused" not in (r["error"] or "") for r in rows)
    summary = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert summary["architectures_trained"] == 4 and summary["best"]["top1"] == grid["top1"].max()
    assert (tmp_path / "fit" / "fit.png").is_file() and (tmp_path / "fit" / "fit.md").is_file()
    # the same command again resumes: nothing is trained twice
    again = fit_coefficients(TINY, tmp_path / "fit", phi=1.0, base_phi=-2, step=0.1, target=1.2)
    assert len([r for r in read_rows(tmp_path / "fit") if r["study"].startswith("fit-")]) == 4
    pd.testing.assert_frame_equal(again.table, table)


# ---------------------------------------------------------------------------------------------- ablation
@pytest.mark.slow  # over 30 s on 2 cores: runs after the default suite
def test_ablation_matches_budgets_and_scales_one_axis_per_strategy(tmp_path) -> None:
    result = ablate_scaling(TINY, tmp_path / "abl", base_phi=-2, multiples=(2.0, 4.0), seeds=(0, 1))
    members = result.members.set_index(["strategy", "multiple"])
    base = members.loc[("base", 1.0)]
    # MACs as trained: the digits' 10 classes, not the preset's 1000 (the head is a large share at 32 px)
    assert base["macs"] == estimate_cost(scale("cmt_ti", -2, resolution=32).replace(num_classes=10)).macs
    for (strategy, multiple), row in members.iterrows():
        if strategy == "base":
            continue
        assert abs(row["budget_error"]) <= 0.05 and row["matched"], (strategy, multiple, row["budget_error"])
        same = {"depth": ("embed_dims", "img_size"), "stage_ratio": ("embed_dims", "img_size"),
                "width": ("depths", "img_size"), "resolution": ("depths", "embed_dims")}.get(strategy, ())
        for column in same:
            assert row[column] == base[column], (strategy, column)
    # at 32 px the next resolution (64 px) is about 4x: the 2x budget has no resolution-only member
    assert ("resolution", 2.0) not in members.index and members.loc[("resolution", 4.0)]["img_size"] == 64
    assert members.loc[("stage_ratio", 4.0)]["depths"] != members.loc[("depth", 4.0)]["depths"]
    # the seed spread is the spread of the rows the two seeds wrote
    rows = pd.DataFrame(read_rows(tmp_path / "abl"))
    width4 = members.loc[("width", 4.0)]
    seeds = rows[rows["config"].str.contains(f'"embed_dims": [{width4["embed_dims"].replace("-", ", ")}]',
                                             regex=False)]
    assert sorted(seeds["seed"]) == [0, 1]
    assert width4["top1_std"] == pytest.approx(np.std(seeds["top1_final"], ddof=1))
    assert (tmp_path / "abl" / "ablation.png").is_file() and (tmp_path / "abl" / "ablation.svg").is_file()


# ---------------------------------------------------------------------------------------------- proxy fidelity
def test_proxy_fidelity_ranks_the_same_models_under_both_protocols(tmp_path) -> None:
    result = proxy_fidelity(TINY, TINY.replace(epochs=2), tmp_path / "fid", phis=(-2.0, -1.0), families=("deit",),
                            resamples=200)
    table = result.table
    assert len(table) == 2 + len(get_family("deit").members) and set(table["family"]) == {"cmt_compound", "deit"}
    assert result.agreement.spearman == pytest.approx(
        scipy.stats.spearmanr(table["cheap_top1"], table["reference_top1"])[0], nan_ok=True)
    assert result.agreement.kendall == pytest.approx(
        scipy.stats.kendalltau(table["cheap_top1"], table["reference_top1"])[0], nan_ok=True)
    for folder, epochs in (("cheap", 1), ("reference", 2)):
        rows = read_rows(tmp_path / "fid" / folder)
        assert len(rows) == 2 + len(get_family("deit").members) and {r["epochs_run"] for r in rows} == {epochs}
    saved = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert saved["agreement"]["spearman"] == pytest.approx(result.agreement.spearman)
    deit = table[table["family"] == "deit"]
    assert set(result.by_family) == {"deit"} and result.by_family["deit"].models == len(get_family("deit").members)
    assert result.by_family["deit"].kendall == pytest.approx(
        scipy.stats.kendalltau(deit["cheap_top1"], deit["reference_top1"])[0], nan_ok=True)


def test_proxy_fidelity_needs_the_same_data_and_two_protocols(tmp_path) -> None:
    with pytest.raises(ValueError, match="allowed: the same data set"):
        proxy_fidelity(TINY, TINY.replace(dataset="fashion-mnist"), tmp_path / "x")
    with pytest.raises(ValueError, match="differs from the cheap one"):
        proxy_fidelity(TINY, TINY.replace(threads=1), tmp_path / "x")
    with pytest.raises(ValueError, match="k=99 is not allowed"):
        proxy_fidelity(TINY, TINY.replace(epochs=2), tmp_path / "x", k=99)
    # the reference is checked against the data before the cheap protocol trains
    with pytest.raises(ValueError, match="train_size=5000 is not allowed for digits"):
        proxy_fidelity(TINY, TINY.replace(train_size=5000), tmp_path / "x")
    with pytest.raises(ValueError, match="resolution=30 is not allowed for the cmt_ti compound family"):
        proxy_fidelity(TINY, TINY.replace(resolution=30), tmp_path / "x")
    with pytest.raises(ValueError, match="resolution=60 is not allowed for the cmt_ti compound family"):
        proxy_fidelity(TINY, TINY.replace(resolution=60), tmp_path / "x", families=())
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv, message", [
    (["fit-coefficients", "--dataset", "digits", "--step", "5"], "step=5.0 is not allowed"),
    (["fit-coefficients", "--dataset", "digits", "--budget-phi", "-1"], "phi=-1.0 is not allowed"),
    # beyond the solver's phi range a member outgrows the machine: refused before anything trains
    (["fit-coefficients", "--dataset", "digits", "--budget-phi", "9"], 
     "phi=9.0 is not allowed; allowed: a number in (0, 3]"),
    (["fit-coefficients", "--dataset", "digits", "--base-phi", "2.5"], "base_phi + phi=3.5 is not allowed"),
    (["ablate-scaling", "--dataset", "digits", "--base-phi", "9"], 
     "base_phi=9.0 is not allowed; allowed: a number in [-3, 3]"),
    (["proxy-fidelity", "--dataset", "digits", "--phis", "-2,9"],
     "phi=9.0 is not allowed; allowed: a number in [-3, 3]"),
    (["ablate-scaling", "--dataset", "digits", "--seeds", "0,0"], "seeds=[0, 0] is not allowed"),
    (["ablate-scaling", "--dataset", "digits", "--multiples", "0.5"], "multiples=[0.5] is not allowed"),
    (["ablate-scaling", "--dataset", "digits", "--stage-ratio", "1:x"], "1:x"),
    (["proxy-fidelity", "--dataset", "digits", "--families", "vit"], "families='vit' is not allowed"),
    (["proxy-fidelity", "--dataset", "digits", "--train-size", "200", "--val-size", "300",
      "--reference-resolution", "30"],
     "resolution=30 is not allowed"),
])
def test_bad_study_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, "--out", str(tmp_path / "never")]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""  # the header waits until the inputs are checked
    assert not (tmp_path / "never").exists()


@pytest.mark.slow  # over 30 s on 2 cores: runs after the default suite
def test_proxy_fidelity_command_prints_the_statistics(tmp_path, capsys) -> None:
    code = main(["proxy-fidelity", "--dataset", "digits", "--train-size", "200", "--val-size", "100", "--epochs", "1",
                 "--reference-epochs", "2", "--phis", "-2,-1.5,-1", "--families", "", "--threads", "2",
                 "--resamples", "100", "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert code == 0 and "all: Spearman rho" in out and "cmt_compound: Spearman" in out and "3 models" in out
    assert (tmp_path / "cli" / "fidelity.csv").is_file()


def test_a_grid_point_whose_trial_was_interrupted_is_trained_on_resume(tmp_path) -> None:
    """An interrupted grid trial is FAIL with no row; resuming must train that point, not count it visited."""
    import optuna

    from cmt_scale.search import run_search
    from cmt_scale.studies._grid import compound_grid_space, design_study

    space = compound_grid_space("cmt_ti", ["phi=-2", "phi=-1.5"], 0.0, False)
    out, study_name = tmp_path / "grid", design_study("g", space)
    out.mkdir()
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{out / 'study.db'}",
                                directions=["maximize", "minimize"])
    study.enqueue_trial({"point": "phi=-2"})
    interrupted = study.ask()
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    run_search(space, TINY, out, study=study_name, promotion=None)
    rows = read_rows(out)
    assert sorted(r["name"] for r in rows) == ["cmt phi=-1.50", "cmt phi=-2.00"]
    assert all(r["state"] == "complete" for r in rows)


@pytest.mark.slow
def test_fidelity_on_ray_runs_several_studies_in_one_folder(tmp_path) -> None:
    result = proxy_fidelity(TINY, TINY.replace(epochs=2), tmp_path / "fid", phis=(-2.0, -1.5), families=("deit",),
                            resamples=50, backend=RayBackend(num_cpus=2))
    assert (len(result.table) == 2 + len(get_family("deit").members)
            and {r["backend"] for r in read_rows(tmp_path / "fid" / "reference")} == {"ray"})


@pytest.mark.slow
def test_fit_on_ray_trains_each_architecture_once(tmp_path) -> None:
    result = fit_coefficients(TINY, tmp_path / "ray", phi=1.0, base_phi=-2, step=0.1, target=1.2,
                              backend=RayBackend(num_cpus=2))
    rows = [r for r in read_rows(tmp_path / "ray") if r["study"].startswith("fit-")]
    assert len(rows) == 4 and {r["backend"] for r in rows} == {"ray"}
    assert result.table["top1"].notna().all()
