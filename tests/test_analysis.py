"""Analysis: fronts and hypervolume against hand values and Optuna's implementation; tables; plots; errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import (
    compare_families,
    default_reference_point,
    front_plot_info,
    headline_comparison,
    hypervolume,
    interpolate_cost,
    interpolate_metric,
    load_published,
    load_results,
    pareto_front,
    plot_fronts,
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
    table = write_report(None, tmp_path, published=True, levels=[80], reference_family="cmt")
    for name in ("comparison.csv", "comparison.md", "fronts.csv", "fronts.png", "fronts.svg"):
        assert (tmp_path / name).is_file()
    assert table.loc["deit", "x_cmt_for_80"] > 4


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
