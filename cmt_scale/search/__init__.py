"""The search driver: Optuna (embedded, SQLite) or Ray Tune (distributed) over a declarative space.

A top-level package of its own because it is the only place that knows Optuna and Ray Tune: it proposes
candidates from a `search_spaces` file, rejects those over budget with the analytic cost model, has
`proxy` train the rest, and writes one results table whichever backend ran.
"""

from ._baselines import run_baselines
from ._driver import BACKENDS, RungStart, SearchSummary, check_protocol_fits, run_search, with_family_recipes
from ._promotion import DEFAULT_PROMOTION, Promotion, non_dominated_layers, promoted_rows, reference_space
from ._results import RESULT_COLUMNS, STATES, measured_rows, pareto_mask, read_rows, write_results
from ._trial import check_resolution, compound_member, trial_protocol, trial_recipe

__all__ = ["BACKENDS", "DEFAULT_PROMOTION", "Promotion", "RungStart", "non_dominated_layers", "promoted_rows",
           "reference_space", "trial_protocol", "trial_recipe", "with_family_recipes", "RESULT_COLUMNS", "STATES", "SearchSummary", "check_protocol_fits", "check_resolution",
           "compound_member", "measured_rows", "pareto_mask", "read_rows", "run_baselines", "run_search",
           "write_results"]
