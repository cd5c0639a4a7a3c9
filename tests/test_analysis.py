"""Analysis: fronts and hypervolume against hand values and Optuna's implementation; rungs, seed means and
their bootstrap intervals against hand-computed values; tables; plots; the papers' budgets; errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import (
    PUBLISHED_CSV,
    Bootstrap,
    aggregate_seeds,
    budget_statement,
    compare_families,
    default_reference_point,
    front_plot_info,
    headline_comparison,
    hypervolume,
    hypervolume_intervals,
    interpolate_cost,
    interpolate_metric,
    load_published,
    load_results,
    noise_statement,
    pareto_front,
    plot_fronts,
    within_noise,
    write_report,
)


def _frame(points, family="a", state="complete"):
    return pd.DataFrame({"family": family, "name": [f"{family}{i}" for i in range(len(points))],
                         "macs": [p[0] for p in points], "params": 1.0, "top1": [p[1] for p in points],
                         "state": state, "source": "test"})


def test_pareto_front_hand_case_with_ties() -> None:
    df = _frame([(1, 50), (2, 60), (2, 55), (3, 60), (4, 70), (4, 70), (5, 65)])
    front = pareto_front(df)
    # (2,55) dominated by (2,60); (3,60) by (2,60); (5,65) by (4,70); the two (4,70) tie and both stay.
    assert front[["macs", "top1"]].values.tolist() == [[1, 50], [2, 60], [4, 70], [4, 70]]


def test_pareto_front_per_family_and_only_complete_rows() -> None:
    df = pd.concat([_frame([(1, 50), (2, 40)], "a"), _frame([(1, 30), (3, 90)], "b"),
                    _frame([(0.5, 99)], "b", state="failed")])
    front = pareto_front(df)
    assert front.groupby("family").size().to_dict() == {"a": 1, "b": 2}


def test_hypervolume_hand_case() -> None:
    # reference (10, 0), metric_max 100: points (2, 50) and (5, 80) in a box of area 1 x 100.
    # strips: x in [0.2, 0.5) at 50 -> 15; x in [0.5, 1.0) at 80 -> 40; total 55 -> 0.55
    assert hypervolume([(2, 50), (5, 80)], (10, 0)) == pytest.approx(0.55)
    assert hypervolume([(2, 50), (5, 80), (6, 60)], (10, 0)) == pytest.approx(0.55)  # dominated point adds nothing
    assert hypervolume([(20, 50)], (10, 0)) == 0.0


def test_hypervolume_matches_optuna_on_random_fronts() -> None:
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = np.column_stack([rng.uniform(1e6, 1e9, 12), rng.uniform(40, 95, 12)])
        ref = (1.1e9, 35.0)
        loss = np.column_stack([pts[:, 0] / ref[0], -pts[:, 1]])
        expected = compute_hypervolume(loss, np.array([1.0, -ref[1]])) / (100 - ref[1])
        assert hypervolume([tuple(p) for p in pts], ref) == pytest.approx(expected, rel=1e-9)


def test_interpolation_along_a_constructed_front() -> None:
    front = _frame([(1e8, 70), (1e9, 80), (1e10, 90)])
    assert interpolate_metric(front, 1e8) == 70
    assert interpolate_metric(front, math.sqrt(1e8 * 1e9)) == pytest.approx(75)  # halfway in log(MACs)
    assert math.isnan(interpolate_metric(front, 5e7)) and math.isnan(interpolate_metric(front, 2e10))
    assert interpolate_cost(front, 85) == pytest.approx(math.sqrt(1e9 * 1e10))
    assert math.isnan(interpolate_cost(front, 95))  # never reached
    assert interpolate_cost(front, 60) == 1e8  # already reached by the cheapest point


def test_compare_families_ratio_against_a_reference() -> None:
    df = pd.concat([_frame([(1e8, 70), (1e9, 80)], "cmt"), _frame([(2e8, 70), (2e9, 80)], "deit")])
    table = compare_families(df, budgets=[1e9], levels=[75], reference_family="cmt")
    assert table.loc["cmt", "front_size"] == 2
    assert table.loc["deit", "x_cmt_for_75"] == pytest.approx(2.0)  # DeiT needs 2x CMT's MACs for 75%
    assert table.loc["cmt", "top1@1G"] == 80
    assert table.loc["deit", "top1@1G"] == pytest.approx(70 + 10 * math.log(5) / math.log(10))  # log-linear
    ref = default_reference_point(df)
    assert ref == (pytest.approx(2.2e9), 69.0)
    assert table.loc["cmt", "hypervolume"] > table.loc["deit", "hypervolume"]
    with pytest.raises(ValueError, match="reference_family='vit' is not allowed"):
        compare_families(df, reference_family="vit")


def test_published_numbers_and_the_headline() -> None:
    df = load_published()
    assert set(df["family"]) == {"cmt", "deit", "efficientnet"} and df["source"].str.len().min() > 10
    rows = {r.rival: r for r in headline_comparison(df)}
    assert rows["DeiT-B↑384"].macs_ratio == pytest.approx(55.4 / 4.0)  # the abstract's "14x"
    assert rows["EfficientNet-B5"].macs_ratio == pytest.approx(9.9 / 4.0)  # its "2x" (2.5x)
    assert rows["EfficientNet-B4"].macs_ratio == pytest.approx(1.05)


def test_plots_are_written_and_carry_the_fronts(tmp_path) -> None:
    df = load_published()
    info = front_plot_info(df)
    cmt = next(c for c in info.curves if c.family == "cmt")
    assert cmt.front_labels == ["CMT-Ti", "CMT-XS", "CMT-S", "CMT-B"]
    assert "multiply-adds" in info.cost_label
    plot_fronts(df, path=tmp_path / "fronts")
    for suffix in ("png", "svg"):
        assert (tmp_path / f"fronts.{suffix}").stat().st_size > 10_000
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "fronts.png").convert("RGB"))
    assert (np.abs(pixels.astype(int) - [214, 39, 40]).sum(-1) < 60).sum() > 200  # CMT's red is drawn


def test_report_writes_tables_and_figures(tmp_path) -> None:
    report = write_report(None, tmp_path, published=True, levels=[80], reference_family="cmt")
    for name in ("comparison.csv", "comparison.md", "fronts.csv", "fronts.png", "fronts.svg"):
        assert (tmp_path / name).is_file()
    assert report.table.loc["deit", "x_cmt_for_80"] > 4
    assert report.rung == "published"


def test_a_wrong_file_is_one_clear_line(tmp_path) -> None:
    bad = tmp_path / "results.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"results.csv: missing column\(s\) \['trial_id'"):
        load_results(bad)
    with pytest.raises(ValueError, match="holds no results.parquet"):
        load_results(tmp_path / "..")
    garbage = tmp_path / "x.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="x.parquet: not a results table"):
        load_results(garbage)


def _run_table(folder, dataset: str, protocol_hash: str) -> None:
    folder.mkdir()
    pd.DataFrame({"trial_id": [0, 1], "family": "cmt_compound", "name": ["a", "b"], "config": "{}",
                  "macs": [1e8, 2e8], "params": [1e6, 2e6], "top1_final": [50.0, 60.0], "top1_best": [50.0, 60.0],
                  "state": "complete", "protocol_hash": protocol_hash, "dataset": dataset}).to_csv(
        folder / "results.csv", index=False)


def test_runs_of_different_protocols_are_refused_before_anything_is_written(tmp_path) -> None:
    """Fronts compare only under one protocol: a report across data sets or protocols is one clear error."""
    _run_table(tmp_path / "fm", "fashion-mnist", "aaaa1111bbbb")
    _run_table(tmp_path / "fm_again", "fashion-mnist", "aaaa1111bbbb")
    _run_table(tmp_path / "digits", "digits", "cccc2222dddd")
    _run_table(tmp_path / "fm_other", "fashion-mnist", "eeee3333ffff")
    assert len(load_results([tmp_path / "fm", tmp_path / "fm_again"])) == 4  # one protocol: fine
    for other, named in (("digits", r"digits \(protocol cccc2222\)"), ("fm_other", r"protocol eeee3333")):
        with pytest.raises(ValueError, match=rf"different protocols .*fashion-mnist \(protocol aaaa1111\).*{named}"):
            load_results([tmp_path / "fm", tmp_path / other])
    with pytest.raises(ValueError, match=r"different protocols .*ImageNet \(protocol published\)"):
        load_results(tmp_path / "fm", include_published=True)
    with pytest.raises(ValueError, match="different protocols"):
        write_report([tmp_path / "fm", tmp_path / "digits"], tmp_path / "report")
    assert not (tmp_path / "report").exists()


# --- rungs: a report shows one training budget ------------------------------------------------------------


def _trials(folder, rows, dataset: str = "digits", with_rung: bool = True) -> None:
    """A run's table from ``(name, rung, seed, top1, macs)`` rows; the protocol hash differs per rung."""
    folder.mkdir()
    table = pd.DataFrame([{"trial_id": i, "family": "cmt_compound", "name": name, "config": f'{{"arch": "{name}"}}',
                           "macs": macs, "params": macs / 10, "top1_final": top1, "top1_best": top1,
                           "state": "complete", "protocol_hash": f"{rung}0000hash", "dataset": dataset,
                           "seed": seed, "rung": rung, "recipe": f'{{"epochs": {3 if rung == "cheap" else 30}}}'}
                          for i, (name, rung, seed, top1, macs) in enumerate(rows)])
    if not with_rung:
        table = table.drop(columns=["rung", "recipe"])
    table.to_csv(folder / "results.csv", index=False)


_SEARCH = [("a", "cheap", 0, 50.0, 1e8), ("b", "cheap", 0, 55.0, 2e8), ("c", "cheap", 0, 52.0, 3e8),
           ("a", "reference", 0, 70.0, 1e8), ("a", "reference", 1, 72.0, 1e8), ("b", "reference", 0, 80.0, 2e8),
           ("b", "reference", 1, 76.0, 2e8)]


def test_the_longest_rung_is_reported_and_rungs_are_never_mixed(tmp_path) -> None:
    _trials(tmp_path / "search", _SEARCH)
    ref = load_results(tmp_path / "search")  # two protocol hashes in the file, one per rung: fine
    assert set(ref["rung"]) == {"reference"} and len(ref) == 4
    assert sorted(ref["seed"]) == [0, 0, 1, 1] and ref["recipe"].str.contains('"epochs": 30').all()
    cheap = load_results(tmp_path / "search", rung="cheap")
    assert set(cheap["rung"]) == {"cheap"} and sorted(cheap["top1"]) == [50.0, 52.0, 55.0]
    with pytest.raises(ValueError, match=r"^rung='full' is not allowed; allowed: cheap, reference"):
        load_results(tmp_path / "search", rung="full")

    _trials(tmp_path / "old", [("d", "cheap", 0, 60.0, 4e8)], with_rung=False)  # written before rungs: cheap
    assert set(load_results(tmp_path / "old")["rung"]) == {"cheap"}
    with pytest.raises(ValueError, match=r"run .*old has no rows of rung 'reference' \(it has: cheap\); "
                                         r"allowed: a rung every run has \(cheap\)"):
        load_results([tmp_path / "search", tmp_path / "old"])
    both = load_results([tmp_path / "search", tmp_path / "old"], rung="cheap")
    assert set(both["rung"]) == {"cheap"} and len(both) == 4
    with pytest.raises(ValueError, match="has no rows of rung 'reference'"):
        write_report([tmp_path / "search", tmp_path / "old"], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_one_protocol_is_checked_within_the_selected_rung(tmp_path) -> None:
    _trials(tmp_path / "digits", _SEARCH)
    _trials(tmp_path / "fmnist", _SEARCH, dataset="fashion-mnist")
    with pytest.raises(ValueError, match=r"different protocols .*digits \(protocol referenc\).*fashion-mnist"):
        load_results([tmp_path / "digits", tmp_path / "fmnist"])
    bad = tmp_path / "bad"
    _trials(bad, [("a", "cheap", 0, 50.0, 1e8)])
    pd.read_csv(bad / "results.csv").assign(rung="medium").to_csv(bad / "results.csv", index=False)
    with pytest.raises(ValueError, match=r"rung 'medium' is not allowed; allowed: cheap, reference"):
        load_results(bad)


# --- seeds: a point is an architecture's mean ---------------------------------------------------------------


def test_seed_replicates_collapse_to_hand_computed_means_and_stds() -> None:
    rows = pd.DataFrame({
        "family": "cmt", "name": ["a", "a", "a", "b", "a", "c", "c"], "config": ["A", "A", "A", "B", "A2", "C", "C"],
        "macs": [1e8, 1e8, 1e8, 2e8, 1e8, 3e8, 3e8], "params": 1.0,
        "top1": [70.0, 72.0, 77.0, 80.0, 60.0, 65.0, np.nan],
        "state": ["complete"] * 6 + ["failed"], "seed": [0, 1, 2, 0, 0, 0, 1], "source": "run", "rung": "reference"})
    points = aggregate_seeds(rows).set_index("config")
    # A: 70, 72, 77 -> mean 73, deviations -3, -1, 4 -> sample variance 26 / 2 = 13
    assert points.loc["A", "top1"] == pytest.approx(73.0)
    assert points.loc["A", "top1_std"] == pytest.approx(math.sqrt(13.0))
    assert (points.loc["A", "top1_min"], points.loc["A", "top1_max"], points.loc["A", "n_seeds"]) == (70.0, 77.0, 3)
    # B: one seed -> no spread; A2 (same name, other architecture) is its own point; C's failed seed is not a draw
    assert math.isnan(points.loc["B", "top1_std"]) and points.loc["B", "n_seeds"] == 1
    assert points.loc["A2", "top1"] == 60.0 and len(points) == 4
    assert points.loc["C", "top1"] == 65.0 and points.loc["C", "n_seeds"] == 1
    assert "seed" not in points.columns
    # fronts go through the means: A's mean (73) at 1e8, B (80) at 2e8, C dominated
    assert pareto_front(rows)[["macs", "top1"]].values.tolist() == [[1e8, 73.0], [2e8, 80.0]]
    assert aggregate_seeds(aggregate_seeds(rows)).equals(aggregate_seeds(rows))  # idempotent


def test_a_report_tables_seed_means_and_stds(tmp_path) -> None:
    _trials(tmp_path / "search", _SEARCH)
    report = write_report([tmp_path / "search"], tmp_path / "report")
    fronts = pd.read_csv(tmp_path / "report" / "fronts.csv").set_index("name")
    assert fronts.loc["a", "top1"] == 71.0 and fronts.loc["b", "top1"] == 78.0  # (70+72)/2, (80+76)/2
    assert fronts.loc["b", "top1_std"] == pytest.approx(np.std([80.0, 76.0], ddof=1))
    assert fronts["n_seeds"].tolist() == [2, 2] and set(fronts["rung"]) == {"reference"}
    markdown = (tmp_path / "report" / "comparison.md").read_text()
    assert "Rung: reference" in markdown and "top1_std" in markdown and report.rung == "reference"
    assert any("seed-bootstrap intervals" in note for note in report.notes)


def test_test_top1_is_averaged_over_the_same_seeds_and_reported_for_the_validation_best(tmp_path) -> None:
    """The test split is read for the member validation chose (b), never used to choose (a tests higher)."""
    _trials(tmp_path / "search", _SEARCH)
    table = pd.read_csv(tmp_path / "search" / "results.csv")
    test = {("a", 0): 90.0, ("a", 1): 91.0, ("b", 0): 84.0, ("b", 1): 87.0}
    table["test_top1"] = [test.get((n, s)) if r == "reference" else None
                          for n, s, r in zip(table["name"], table["seed"], table["rung"])]
    table.to_csv(tmp_path / "search" / "results.csv", index=False)
    report = write_report([tmp_path / "search"], tmp_path / "report")
    fronts = pd.read_csv(tmp_path / "report" / "fronts.csv").set_index("name")
    assert fronts.loc["a", "test_top1"] == 90.5 and fronts.loc["b", "test_top1"] == 85.5
    assert fronts.loc["b", "test_top1_std"] == pytest.approx(np.std([84.0, 87.0], ddof=1))
    line = next(note for note in report.notes if note.startswith("Test top-1"))
    assert "cmt_compound b 85.50 ± 2.12" in line and " a " not in line
    assert "test_top1_mean" in (tmp_path / "report" / "comparison.md").read_text()
    plain = write_report([tmp_path / "search"], tmp_path / "plain", rung="cheap")  # a rung never scored on test
    assert not any(note.startswith("Test top-1") for note in plain.notes)


# --- hypervolume intervals over seeds -------------------------------------------------------------------------


def _seeded(family: str, points: dict[str, tuple[float, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"family": family, "name": name, "config": f"{family}/{name}", "macs": macs, "params": 1.0,
                          "top1": top1, "state": "complete", "seed": i, "source": "run", "rung": "reference"}
                         for name, (macs, values) in points.items() for i, top1 in enumerate(values)])


def _hv1(macs: float, top1: float, ref: tuple[float, float]) -> float:
    """Hypervolume of one point in the normalised box, by hand: (1 - cost/cost_ref) * (top1 - ref) / (100 - ref)."""
    return (1 - macs / ref[0]) * (top1 - ref[1]) / (100 - ref[1])


def test_bootstrap_interval_of_one_architecture_is_its_seed_range() -> None:
    # one architecture, seeds 70 and 80: a resampled mean is 70, 75 or 80 with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles over 1000 resamples are the hypervolumes at 70 and at 80
    df = _seeded("cmt", {"a": (1e8, [70.0, 80.0])})
    ref = (2e8, 60.0)
    row = hypervolume_intervals(df, ref).loc["cmt"]
    assert row["hypervolume"] == pytest.approx(_hv1(1e8, 75.0, ref))
    assert row["hv_low"] == pytest.approx(_hv1(1e8, 70.0, ref))
    assert row["hv_high"] == pytest.approx(_hv1(1e8, 80.0, ref))


def test_bootstrap_interval_contains_the_estimate_collapses_without_seeds_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    noisy = _seeded("cmt", {n: (macs, list(base + rng.normal(0, 1.5, 3))) for n, macs, base in
                            (("s", 1e8, 70.0), ("m", 3e8, 76.0), ("l", 9e8, 80.0), ("x", 5e8, 74.0))})
    ref = default_reference_point(noisy)
    row = hypervolume_intervals(noisy, ref).loc["cmt"]
    assert row["hv_low"] < row["hypervolume"] < row["hv_high"]
    # resampled means stay inside each architecture's seed range and hypervolume grows with top-1, so the
    # interval lies between the fronts of every architecture's worst and best seed
    worst = [(g["macs"].iloc[0], g["top1"].min()) for _, g in noisy.groupby("name")]
    best = [(g["macs"].iloc[0], g["top1"].max()) for _, g in noisy.groupby("name")]
    assert hypervolume(worst, ref) <= row["hv_low"] and row["hv_high"] <= hypervolume(best, ref)
    again = hypervolume_intervals(noisy, ref).loc["cmt"]
    assert (again["hv_low"], again["hv_high"]) == (row["hv_low"], row["hv_high"])
    other = hypervolume_intervals(noisy, ref, Bootstrap(seed=7)).loc["cmt"]
    assert (other["hv_low"], other["hv_high"]) != (row["hv_low"], row["hv_high"])

    single = _seeded("cmt", {"s": (1e8, [70.0]), "l": (9e8, [80.0])})
    row = hypervolume_intervals(single, (1e9, 60.0)).loc["cmt"]
    hand = ((0.9 - 0.1) * 10 + (1.0 - 0.9) * 20) / 40  # strips at 70 then 80 above 60, box 40 high
    assert row["hv_low"] == row["hypervolume"] == row["hv_high"] == pytest.approx(hand)
    with pytest.raises(ValueError, match=r"resamples=0 is not allowed"):
        Bootstrap(resamples=0)


def test_within_noise_names_overlapping_fronts_and_separates_the_rest() -> None:
    table = pd.DataFrame({"hypervolume": [0.45, 0.50, 0.75], "hv_low": [0.40, 0.45, 0.70],
                          "hv_high": [0.50, 0.60, 0.80]}, index=pd.Index(["a", "b", "c"], name="family"))
    assert within_noise(table) == [("a", "b")]
    line = noise_statement(table)
    assert "a ~ b" in line and "c > a" in line and "c > b" in line and "\n" not in line

    # the same through compare_families: two families whose seeds overlap, one clearly better
    close = pd.concat([_seeded("cmt", {"s": (1e8, [70.0, 74.0, 72.0]), "l": (8e8, [80.0, 84.0, 82.0])}),
                       _seeded("deit", {"s": (1e8, [71.0, 75.0, 73.0]), "l": (8e8, [79.0, 83.0, 81.0])}),
                       _seeded("effnet", {"s": (1e8, [90.0, 90.5, 90.2]), "l": (8e8, [95.0, 95.5, 95.2])})])
    table = compare_families(close)
    assert within_noise(table) == [("cmt", "deit")]
    assert (table["hv_low"] <= table["hypervolume"]).all() and (table["hypervolume"] <= table["hv_high"]).all()
    assert table["min_seeds"].tolist() == [3, 3, 3]
    line = noise_statement(table)
    assert "cmt ~ deit" in line and "effnet > cmt" in line and "effnet > deit" in line
    no_seeds = compare_families(load_published())
    assert (no_seeds["hv_low"] == no_seeds["hv_high"]).all()
    assert "cannot show noise" in noise_statement(no_seeds)
    # a family with one seed per point (a search's cheap rung) has no spread: its gaps are not judged
    mixed = pd.concat([_seeded("cmt", {"s": (1e8, [70.0]), "l": (8e8, [95.0])}),
                       _seeded("deit", {"s": (1e8, [71.0, 75.0, 73.0]), "l": (8e8, [79.0, 83.0, 81.0])}),
                       _seeded("effnet", {"s": (1e8, [72.0, 76.0, 74.0]), "l": (8e8, [80.0, 84.0, 82.0])})])
    line = noise_statement(compare_families(mixed))
    assert "deit ~ effnet" in line and "Not judged: cmt" in line and "> cmt" not in line and "cmt >" not in line


# --- plots carry the spread -----------------------------------------------------------------------------------


def test_plot_info_carries_each_points_seed_range_and_the_rung(tmp_path) -> None:
    df = pd.concat([_seeded("cmt", {"s": (1e8, [70.0, 74.0, 72.0]), "l": (8e8, [80.0, 84.0]),
                                    "bad": (9e8, [60.0, 61.0])}),
                    _seeded("deit", {"s": (2e8, [65.0])})])
    info = front_plot_info(df)
    cmt = next(c for c in info.curves if c.family == "cmt")
    assert cmt.front_metrics == [72.0, 82.0] and cmt.front_low == [70.0, 80.0] and cmt.front_high == [74.0, 84.0]
    assert cmt.front_seeds == [3, 2]
    assert cmt.other_metrics == [60.5] and (cmt.other_low, cmt.other_high) == ([60.0], [61.0])
    deit = next(c for c in info.curves if c.family == "deit")
    assert deit.front_low == deit.front_high == deit.front_metrics == [65.0]  # one seed: a bar of no length
    assert info.rungs == ["reference"] and "rung: reference" in info.legend_title
    assert "min..max over seeds" in info.legend_title
    plot_fronts(info, path=tmp_path / "f", formats=("png",))
    assert (tmp_path / "f.png").stat().st_size > 10_000


# --- the papers' numbers come with their training budgets ----------------------------------------------------


def test_every_published_row_carries_its_epochs_and_the_report_says_budgets_differ(tmp_path) -> None:
    df = load_published()
    assert df["epochs"].notna().all() and (df["epochs"] > 0).all()
    epochs = df.set_index("name")["epochs"]
    # CMT: the official code's training commands; DeiT: its paper; EfficientNet: the official TPU code's default
    assert (epochs["CMT-Ti"], epochs["CMT-S"], epochs["CMT-B"]) == (800, 300, 300)
    assert set(df.loc[df["family"] == "deit", "epochs"]) == {300}
    assert set(df.loc[df["family"] == "efficientnet", "epochs"]) == {350}
    line = budget_statement(df)
    assert "mixes training budgets" in line and "CMT-Ti 800" in line and "efficientnet 350" in line
    report = write_report(None, tmp_path, published=True)
    assert line in report.notes and line in (tmp_path / "comparison.md").read_text()
    same = df.assign(epochs=300)
    assert budget_statement(same).startswith("Every published model was trained 300 epochs")
    missing = tmp_path / "published.csv"
    pd.read_csv(PUBLISHED_CSV).drop(columns=["epochs"]).to_csv(missing, index=False)
    with pytest.raises(ValueError, match=r"published.csv: missing column\(s\) \['epochs'\]"):
        load_published(missing)


def test_report_command_prints_the_rung_noise_and_budget_lines(tmp_path, capsys) -> None:
    from cmt_scale.cli import main

    assert main(["report", "--published", "--out", str(tmp_path / "pub")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "mixes training budgets" in out and "cannot show noise" in out
    _trials(tmp_path / "search", _SEARCH)
    assert main(["report", str(tmp_path / "search"), "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rung reference" in out and "seed-bootstrap intervals" in out
    assert main(["report", str(tmp_path / "search"), "--rung", "cheap", "--out", str(tmp_path / "c")]) == 0
    assert "rung cheap" in " ".join(capsys.readouterr().out.split())
