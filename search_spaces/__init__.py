"""Search spaces as YAML data files plus the code that loads and validates them.

The shipped spaces (``cmt_compound.yaml``, ``cmt_free.yaml``, ``deit.yaml``, ``efficientnet.yaml``) live
beside this file; `load_space` takes one of their names or any YAML path. One `SearchSpace` becomes
Optuna distributions (`SearchSpace.to_optuna`) or a Ray Tune ``param_space`` (`SearchSpace.to_ray`).
"""

from ._points import COMPOUND_POINT_KEYS, format_point, parse_point
from ._recipes import load_recipes
from ._space import SAMPLERS, Budget, Param, SearchSpace, builtin_space_path, load_space, space_from_dict

__all__ = ["COMPOUND_POINT_KEYS", "SAMPLERS", "Budget", "Param", "SearchSpace", "builtin_space_path",
           "format_point", "load_recipes", "load_space", "parse_point", "space_from_dict"]
