"""Analysis of results files: Pareto fronts, hypervolume, accuracy-at-equal-cost tables, plots, reports.

Reads the published CSV or a run's ``results.parquet``/``.csv`` and nothing else of the toolkit (no
model, no torch): a notebook or a user can use it on its own. Fronts go through each architecture's mean
over its seeds, on one training rung, and every hypervolume carries a seed-bootstrap interval.
"""

from ._compare import compare_families
from ._fronts import (
    default_reference_point,
    hypervolume,
    interpolate_cost,
    interpolate_metric,
    pareto_front,
    pareto_mask,
)
from ._load import PUBLISHED_CSV, PUBLISHED_RUNG, RUNGS, STANDARD_COLUMNS, load_published, load_results
from ._noise import Bootstrap, hypervolume_intervals, noise_statement, within_noise
from ._plots import FamilyCurve, FrontPlotInfo, front_plot_info, plot_fronts
from ._ranking import RankAgreement, bootstrap_interval, kendall_tau, rank_agreement, spearman_rho, top_k_overlap
from ._report import HeadlineRow, Report, budget_statement, headline_comparison, markdown_table, write_report
from ._seeds import aggregate_seeds
from ._study_plots import plot_coefficient_fit, plot_rank_agreement, plot_scaling_strategies

__all__ = [
    "Bootstrap", "FamilyCurve", "FrontPlotInfo", "HeadlineRow", "PUBLISHED_CSV", "PUBLISHED_RUNG", "RUNGS", "Report",
    "STANDARD_COLUMNS", "aggregate_seeds", "budget_statement", "compare_families", "default_reference_point",
    "front_plot_info", "headline_comparison", "hypervolume", "hypervolume_intervals", "interpolate_cost",
    "interpolate_metric", "load_published", "load_results", "noise_statement", "pareto_front", "pareto_mask",
    "plot_fronts", "within_noise", "write_report",
    "RankAgreement", "bootstrap_interval", "kendall_tau", "rank_agreement", "spearman_rho", "top_k_overlap",
    "markdown_table", "plot_coefficient_fit", "plot_rank_agreement", "plot_scaling_strategies",
]
