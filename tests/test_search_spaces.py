"""Search spaces: the shipped files load; bad files give one line naming key, value and rule; both worlds."""

from __future__ import annotations

import pytest

from cmt_scale.proxy import family_names
from search_spaces import builtin_space_path, format_point, load_space, parse_point, space_from_dict


@pytest.mark.parametrize("name", family_names())
def test_shipped_spaces_load_and_convert_to_both_backends(name: str) -> None:
    space = load_space(name)
    assert space.family == name and builtin_space_path(name).is_file()
    optuna_space = space.to_optuna()
    ray_space = space.to_ray()
    assert set(optuna_space) == {p.name for p in space.params}
    assert set(ray_space) == {p.name for p in space.params} | set(space.fixed)


def test_optuna_and_ray_agree_on_the_domains() -> None:
    """Ray's own converter maps our Ray space back to Optuna distributions equal to ours."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("cmt_free")
    converted = OptunaSearch.convert_search_space({p.name: p.to_ray() for p in space.params})
    ours = space.to_optuna()
    for name, dist in ours.items():
        theirs = converted[name]
        if hasattr(dist, "choices"):
            assert list(theirs.choices) == list(dist.choices), name
        else:
            assert (theirs.low, theirs.high) == (dist.low, dist.high), name
            assert getattr(theirs, "step", None) == dist.step or dist.step in (None, 1), name


def _space(**changes):
    data = {"family": "cmt_compound", "base": "cmt_ti", "params": {"phi": {"type": "float", "low": -1, "high": 1}}}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (_space(family="resnet"),
         "family='resnet' is not allowed; allowed: cmt_compound, cmt_free, deit, efficientnet"),
        (_space(base="cmt_l"), "base='cmt_l': unknown preset"),
        (_space(params={"phi": {"type": "float", "low": 1, "high": -1}}), "params.phi.high=-1 is not allowed"),
        (_space(params={"phi": {"type": "normal"}}), "params.phi.type='normal' is not allowed; allowed: float, int"),
        (_space(params={"phi": {"type": "float", "low": "a", "high": 1}}), "params.phi.low='a'"),
        (_space(params={"phi": {"type": "categorical", "choices": []}}), "params.phi.choices=[]"),
        (_space(params={"depth": {"type": "int", "low": 1, "high": 3}}), "depth='depth' is not allowed; allowed: for "
                                                                          "family cmt_compound"),
        (_space(budget={"max_macs": "lots"}), "budget.max_macs='lots' is not a count"),
        (_space(budget={"max_flops": "1G"}), "budget.max_flops='1G' is not allowed"),
        (_space(colour="red"), "colour='red' is not allowed; allowed: top-level keys"),
        (_space(params={"phi": {"type": "float", "low": 0, "high": 1, "log": True}}), "params.phi.log=True"),
    ],
)
def test_bad_spaces_give_one_line(data, message) -> None:
    with pytest.raises(ValueError) as err:
        space_from_dict(data, "space.yaml")
    text = str(err.value)
    assert text.startswith("space.yaml: ") and message in text and "\n" not in text


def test_yaml_is_parsed_safely(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("family: !!python/object/apply:os.system ['touch pwned']\nparams: {}\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_space(path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="search space 'nope' not found"):
        load_space("nope")


def test_budget_violations_are_named() -> None:
    space = load_space("cmt_compound")
    assert space.budget.violations(1e6, 1e6) == []
    assert space.budget.violations(5e8, 1e6) == ["MACs 500.0M > max_macs 200.0M"]


def test_a_grid_space_lists_every_combination_once_for_both_backends() -> None:
    from ray import tune

    space = space_from_dict({"family": "cmt_compound", "base": "cmt_ti", "sampler": "grid",
                             "params": {"point": {"type": "categorical", "choices": ["phi=0", "phi=1 alpha=1.5"]},
                                        "seed": {"type": "categorical", "choices": [0, 1, 2]}}})
    assert len(space.grid) == 6 and {"point": "phi=1 alpha=1.5", "seed": 2} in space.grid
    ray_space = space.to_ray()
    assert ray_space["seed"] == tune.grid_search([0, 1, 2])


@pytest.mark.parametrize("data, message", [
    ({"family": "deit", "sampler": "grid", "params": {"model": {"type": "float", "low": 0, "high": 1}}},
     "params.model.type='float' is not allowed; allowed: categorical"),
    ({"family": "deit", "sampler": "random", "params": {"model": {"type": "categorical", "choices": ["deit_tiny"]}}},
     "sampler='random' is not allowed; allowed: tpe, grid"),
    ({"family": "cmt_compound", "base": "cmt_ti",
      "params": {"point": {"type": "categorical", "choices": ["phi=1 x=2"]}}},
     "point='phi=1 x=2' is not allowed"),
    ({"family": "cmt_compound", "base": "cmt_ti",
      "params": {"point": {"type": "categorical", "choices": ["alpha=1.3"]}}},
     "params.point='alpha=1.3' is not allowed; allowed: a point with phi="),
])
def test_bad_grid_spaces_give_one_line(data, message) -> None:
    with pytest.raises(ValueError, match=None) as err:
        space_from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_points_round_trip_including_a_named_config() -> None:
    values = {"phi": 1.25, "alpha": 1.2, "stage_ratio": "2:2:6:2", "config": {"depths": [1, 2], "img_size": 64}}
    text = format_point(**values)
    assert " " not in text.split("config=")[1] and parse_point(text) == values
    with pytest.raises(ValueError, match="config='\\[1\\]' is not allowed; allowed: a JSON object"):
        parse_point("config=[1]")
