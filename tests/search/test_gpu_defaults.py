"""What a search asks of GPUs by default: decided from the cluster's resources (a GPU is advertised
to Ray here; none exists on this machine, so no trial runs on it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import ray

from automl_factor.factorization import count_params, planned_params
from automl_factor.search import SearchOptions
from automl_factor.search.run import DEFAULT_GPU_SHARE, trial_gpus
from automl_factor.search.space import PlanKeys, load_space, plan_for
from automl_factor.train.build import build_model_for


@pytest.fixture
def ray_with(request):
    ray.init(num_cpus=2, num_gpus=request.param, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("ray_with,expected", [(1, DEFAULT_GPU_SHARE), (0, 0.0)], indirect=["ray_with"])
def test_trials_share_a_gpu_by_default_only_when_the_cluster_has_one(ray_with, expected) -> None:
    assert DEFAULT_GPU_SHARE == 0.25
    assert trial_gpus(SearchOptions()) == expected
    assert trial_gpus(SearchOptions(gpus_per_trial=0.5)) == 0.5  # the user's choice wins
    assert trial_gpus(SearchOptions(gpus_per_trial=0)) == 0.0


def test_gpu_plans_round_ranks_to_multiples_of_8_and_the_searcher_keys_them_alike() -> None:
    space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "resnet20_cifar10.yaml")
    dense = build_model_for(space.model, 10, (3, 32, 32), **space.model_kwargs)
    config = {f"{g.name}.{key}": value for g in space.groups
              for key, value in (("kind", "lowrank"), ("rank_fraction", 0.77), ("layout", g.layouts[0]),
                                 ("init", "spectral"), ("regularizer", "fd"))}
    config["budget_use"] = 1.0
    cpu_plan, gpu_plan = plan_for(space, dense, config, 0.3), plan_for(space, dense, config, 0.3, rank_multiple=8)
    assert any(layer.rank % 8 for layer in cpu_plan.values())
    assert all(layer.rank % 8 == 0 or layer.rank < 8 for layer in gpu_plan.values())
    assert planned_params(dense, gpu_plan) <= 0.3 * count_params(dense)
    assert PlanKeys(space, dense, 0.3, 8)(config) != PlanKeys(space, dense, 0.3)(config)
