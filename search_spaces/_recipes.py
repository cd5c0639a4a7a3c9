"""The per-family training recipes file (``recipes.yaml`` beside the spaces, or one `cmt-scale sweep-recipes`
wrote), loaded and validated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._space import _fail, builtin_space_path

__all__ = ["load_recipes"]


def load_recipes(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The per-family training recipes of a YAML file (default: the shipped ``search_spaces/recipes.yaml``,
    chosen by `cmt-scale sweep-recipes`), as ``{family: {lr: ..., ...}}``; validated by `proxy.Recipe`."""
    import yaml

    from cmt_scale.proxy import Recipe, family_names

    path = Path(path) if path is not None else builtin_space_path("recipes")
    if not path.is_file():
        raise ValueError(f"recipes file {str(path)!r} does not exist; allowed: a YAML file of family: recipe")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a recipes file is a mapping of family -> recipe, got {type(data).__name__}")
    out = {}
    for family, spec in data.items():
        if family not in family_names():
            raise _fail(str(path), str(family), spec, f"a family: {', '.join(family_names())}")
        out[str(family)] = Recipe.from_dict(spec, f"{path}: {family}").to_dict()
    return out
