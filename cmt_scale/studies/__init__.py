"""Studies beyond the paper: re-fit the compound coefficients, ablate the scaling axes, test the proxy's ranking.

A package of its own because it designs experiments, a responsibility neither the search (which
proposes candidates adaptively) nor the analysis (which reads finished results) has: each study fixes its
candidates in advance, runs them as a grid through the search driver (same trainable, schema, resume and
backends), and turns the rows into its own table, JSON summary and figure.
"""

from ._ablation import STRATEGIES, AblationResult, ablate_scaling, match_budget
from ._fidelity import DEFAULT_PHIS, DEFAULT_REFERENCE, FidelityResult, proxy_fidelity
from ._fit import TARGET, TOLERANCE, FitResult, coefficient_grid, fit_coefficients
from ._recipes import DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, RecipeSweepResult, pick_recipes, sweep_recipes

__all__ = ["DEFAULT_PHIS", "DEFAULT_REFERENCE", "STRATEGIES", "TARGET", "TOLERANCE", "AblationResult",
           "FidelityResult", "FitResult", "ablate_scaling", "coefficient_grid", "fit_coefficients",
           "match_budget", "proxy_fidelity", "DEFAULT_LRS", "DEFAULT_WEIGHT_DECAYS", "RecipeSweepResult",
           "pick_recipes", "sweep_recipes"]
