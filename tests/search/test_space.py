"""Search spaces: validation, Optuna sampling, and plans that meet the budget by construction."""
from __future__ import annotations

import optuna
import pytest

from automl_factor import models
from automl_factor.factorization import count_params, factorize, planned_params, uniform_plan
from automl_factor.search.space import (SearchSpace, SpaceSampler, group_layers, load_space, minimum_params,
                                        paper_recipe_point,
                                        plan_for)

SPACE = SearchSpace.model_validate({
    "model": "resnet20",
    "groups": [
        {"name": "s1", "layers": ["layer1.*"], "kinds": ["lowrank", "deep", "dense", "overcomplete"],
         "inits": ["spectral", "default"], "regularizers": ["fd", "wd"]},
        {"name": "rest", "layers": ["*"], "kinds": ["lowrank", "deep"], "layouts": ["spatial", "channel"]},
    ],
})


@pytest.fixture(scope="module")
def resnet():
    return models.create("resnet20", num_classes=10, in_channels=3)


def test_groups_first_match_wins(resnet):
    groups = group_layers(SPACE, resnet)
    assert all(name.startswith("layer1.") for name in groups["s1"])
    assert groups["rest"] and not any(name.startswith("layer1.") for name in groups["rest"])
    assert len(groups["s1"]) + len(groups["rest"]) == 18  # 9 blocks x 2 convs, option-A shortcuts


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.3])
def test_every_sampled_plan_meets_the_budget(resnet, budget):
    dense = count_params(resnet)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    sampler = SpaceSampler(SPACE)
    kinds_seen = set()
    for _ in range(40):
        trial = study.ask()
        fixed = sampler(trial)  # samples into trial.params, returns the one-option choices
        config = {**trial.params, **fixed}
        plan = plan_for(SPACE, resnet, config, budget)
        params = planned_params(resnet, plan)
        assert params <= budget * dense
        assert params <= max(config["budget_use"] * budget * dense, minimum_params(SPACE, resnet, config))
        kinds_seen |= {layer.kind for layer in plan.values()}
        study.tell(trial, [0.5, params / dense, 1.0])
    assert {"lowrank", "deep"} <= kinds_seen


def test_paper_recipe_point_is_the_uniform_plan(resnet):
    point = paper_recipe_point(SPACE)
    assert point["budget_use"] == 1.0 and point["s1.kind"] == "lowrank" and point["s1.init"] == "spectral"
    config = {**point, "s1.layout": "spatial", "s1.regularizer": "fd", "rest.init": "spectral",
              "rest.regularizer": "fd"}
    plan = plan_for(SPACE, resnet, config, 0.1)
    assert plan == uniform_plan(resnet, params_ratio=0.1)


def test_overcomplete_group_deploys_dense_size(resnet):
    config = {"s1.kind": "overcomplete", "s1.scale": 3.0, "s1.layout": "spatial", "s1.init": "spectral",
              "s1.regularizer": "fd", "rest.kind": "lowrank", "rest.rank_fraction": 0.1, "rest.layout": "spatial",
              "rest.init": "spectral", "rest.regularizer": "fd", "budget_use": 1.0}
    plan = plan_for(SPACE, resnet, config, 0.5)
    layer1 = [plan[name] for name in group_layers(SPACE, resnet)["s1"]]
    assert all(layer.rank == 3 * 16 * 3 for layer in layer1)  # 3 x full rank of a (16*3) x (16*3) matrix
    collapsed_size = count_params(factorize(resnet, plan))
    assert collapsed_size == planned_params(resnet, plan) <= 0.5 * count_params(resnet)


def test_load_space_errors_name_the_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("groups:\n  - name: g\n    rank_fraction: [0.5, 2]\n")
    with pytest.raises(ValueError, match=r"key groups\.0.*rank_fraction"):
        load_space(path)
    path.write_text("recipe: {optimizer: adam}\n")
    with pytest.raises(ValueError, match=r"recipe\.optimizer.*'sgd' or 'adamw'"):
        load_space(path)


@pytest.mark.parametrize("name", ["default", "resnet20_cifar10", "resnet32lt_cifar10", "vit_cifar10"])
def test_shipped_spaces_validate(name):
    from pathlib import Path
    space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / f"{name}.yaml")
    model = models.create(space.model, num_classes=10, in_channels=3, **space.model_kwargs)
    assert all(group_layers(space, model).values())


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_drives_the_space(resnet, name):
    """Each offered sampler proposes valid, budget-feasible plans for a conditional space, reproducibly."""
    from automl_factor.search.searcher import make_sampler

    def proposals(seed: int) -> list[dict]:
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                    sampler=make_sampler(name, seed, startup_trials=4))
        sampler, configs = SpaceSampler(SPACE), []
        for _ in range(8):
            trial = study.ask()
            config = {**sampler(trial), **trial.params}
            plan = plan_for(SPACE, resnet, config, 0.1)
            ratio = planned_params(resnet, plan) / count_params(resnet)
            assert ratio <= 0.1
            study.tell(trial, [config["budget_use"], ratio, 1.0])
            configs.append(config)
        return configs

    assert proposals(seed=5) == proposals(seed=5)


def test_unknown_sampler_is_rejected():
    from automl_factor.search.searcher import make_sampler

    with pytest.raises(ValueError, match="'bayes'.*tpe"):
        make_sampler("bayes", 0)


def test_validation_split_is_required(tmp_path):
    # val_fraction 0 used to make the search select on the test split.
    path = tmp_path / "s.yaml"
    path.write_text("data: {val_fraction: 0.0}\n")
    with pytest.raises(ValueError, match=r"key data.val_fraction: .*\(0, 1\).*test split.*\(got 0.0\)"):
        load_space(path)


def test_latency_target_defaults_and_budget_use_is_log_uniform():
    space = SearchSpace()
    assert space.latency.model_dump() == {"device": "cpu", "batch_size": 1, "threads": 1, "rounds": 5,
                                          "resource": None}
    assert space.budget_use == (0.1, 1.0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    SpaceSampler(space)(trial)
    assert trial.distributions["budget_use"].log


def test_plan_key_names_the_trained_model_not_the_proposal(resnet):
    from automl_factor.search.space import PlanKeys, plan_layers
    keys = PlanKeys(SPACE, resnet, budget=0.1)
    base = {"s1.kind": "lowrank", "s1.layout": "spatial", "s1.init": "spectral", "s1.regularizer": "fd",
            "rest.kind": "lowrank", "rest.layout": "spatial", "rest.init": "spectral", "rest.regularizer": "fd",
            "s1.rank_fraction": 0.3, "rest.rank_fraction": 0.3}
    # Two tiny budget shares both fall to the smallest plan (rank 1 everywhere): one model.
    assert keys({**base, "budget_use": 0.01}) == keys({**base, "budget_use": 0.02})
    assert keys({**base, "budget_use": 0.01}) != keys({**base, "budget_use": 1.0})
    assert keys({**base, "budget_use": 1.0}) != keys({**base, "budget_use": 1.0, "s1.init": "default"})
    plan = plan_for(SPACE, resnet, {**base, "budget_use": 1.0}, 0.1)
    rows = plan_layers(SPACE, resnet, plan)
    assert len(rows) == 18 and {row["group"] for row in rows} == {"s1", "rest"}
    assert all(row["rank"] == plan[row["layer"]].rank and row["rank"] <= row["full_rank"] for row in rows)
    assert sum(row["params"] for row in rows) - sum(row["dense_params"] for row in rows) == \
        planned_params(resnet, plan) - count_params(resnet)


def test_budget_use_starts_at_the_smallest_plan(resnet):
    # Shares below the smallest plan all become that one plan: the sampler does not spend trials there.
    from automl_factor.search.space import smallest_plan_params
    share = smallest_plan_params(SPACE, resnet) / (0.1 * count_params(resnet))
    assert 0.1 < share < 1
    assert smallest_plan_params(SPACE, resnet) <= minimum_params(SPACE, resnet)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampler = SpaceSampler(SearchSpace(), smallest_share=share)
    for _ in range(20):
        trial = study.ask()
        sampler(trial)
        assert share <= trial.params["budget_use"] <= 1.0
