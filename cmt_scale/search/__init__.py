"""The search driver: Optuna (embedded, SQLite) or Ray Tune (distributed) over a declarative space.

A package of its own because it is the only place that knows Optuna and Ray Tune: it proposes candidates
from a `search_spaces` file, rejects those over budget with the analytic cost model, has `cmt_scale.proxy`
train the rest, and writes one results table whichever backend ran.

    >>> from cmt_scale.search import OptunaBackend, RayBackend, run_search
    >>> run_search("cmt_compound", protocol, "runs/cmt", backend=RayBackend(cpus_per_trial=2))  # doctest: +SKIP
"""

from ._backends import Backend, OptunaBackend, RayBackend, RungJob, SearchMode, backend_names
from ._baselines import run_baselines
from ._driver import (
    DEFAULT_TRIALS,
    RungStart,
    RunHooks,
    SearchSummary,
    check_protocol_fits,
    planned_trials,
    run_search,
    with_all_images_as_all,
    with_family_recipes,
)
from ._promotion import (
    DEFAULT_PROMOTION,
    DEFAULT_SEARCH_PROTOCOL,
    Promotion,
    non_dominated_layers,
    promoted_rows,
    reference_space,
)
from ._results import (
    RESULT_COLUMNS,
    STATES,
    ResultRow,
    TrialState,
    make_row,
    measured_rows,
    read_rows,
    reusable_rows,
    seed_means,
    write_results,
)
from ._trial import check_resolution, compound_member, trial_protocol, trial_recipe

__all__ = ["DEFAULT_PROMOTION", "DEFAULT_SEARCH_PROTOCOL", "DEFAULT_TRIALS", "RESULT_COLUMNS", "STATES", "Backend",
           "OptunaBackend", "Promotion",
           "RayBackend", "ResultRow", "RunHooks", "RungJob", "RungStart", "SearchMode", "SearchSummary", "TrialState",
           "backend_names", "check_protocol_fits", "check_resolution", "compound_member", "make_row", "measured_rows",
           "non_dominated_layers", "planned_trials", "promoted_rows", "read_rows", "reference_space", "reusable_rows",
           "run_baselines", "run_search", "seed_means", "trial_protocol", "trial_recipe",
           "with_all_images_as_all", "with_family_recipes",
           "write_results"]
