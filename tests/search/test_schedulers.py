"""MO-ASHA inside a real Ray Tune run, against Ray's own single-objective ASHA on the same trials."""
from __future__ import annotations

import sys

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from automl_factor.search.schedulers import MultiObjectiveASHA

pytestmark = pytest.mark.integration

# Run in this order, one at a time. B is less accurate than A but smaller: on the Pareto front.
# C is dominated by A in every objective.
TRIALS = [
    {"name": "A", "accuracy": 0.9, "params_ratio": 0.10, "latency_ms": 1.0},
    {"name": "B", "accuracy": 0.5, "params_ratio": 0.05, "latency_ms": 1.0},
    {"name": "C", "accuracy": 0.4, "params_ratio": 0.20, "latency_ms": 2.0},
]
MAX_EPOCHS = 4


def constant_objectives(config):
    for epoch in range(1, MAX_EPOCHS + 1):
        tune.report({"epoch": epoch, **{k: v for k, v in config["trial"].items() if k != "name"}})


@pytest.fixture(scope="module")
def ray_runtime():
    # Workers cannot import this test file: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _epochs_by_name(scheduler, tmp_path) -> dict[str, int]:
    tuner = tune.Tuner(
        constant_objectives,
        param_space={"trial": tune.grid_search(TRIALS)},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    return {result.config["trial"]["name"]: result.metrics["epoch"] for result in results}


def test_milestones():
    assert MultiObjectiveASHA(max_t=30, grace_period=1, reduction_factor=3).milestones == [1, 3, 9, 27]
    assert MultiObjectiveASHA(max_t=4, grace_period=1, reduction_factor=1.5).milestones == [1, 2, 3]


def test_moasha_keeps_small_models_that_asha_cuts(ray_runtime, tmp_path):
    moasha = _epochs_by_name(MultiObjectiveASHA(max_t=MAX_EPOCHS, reduction_factor=1.5), tmp_path / "mo")
    assert moasha == {"A": MAX_EPOCHS, "B": MAX_EPOCHS, "C": 1}
    asha = _epochs_by_name(ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=MAX_EPOCHS,
                                         reduction_factor=1.5), tmp_path / "asha")
    assert asha["A"] == MAX_EPOCHS and asha["B"] == 1 and asha["C"] == 1


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"max_t": 4, "grace_period": 0}, "grace_period"),
    ({"max_t": 4, "grace_period": 5}, "grace_period"),
    ({"max_t": 4, "reduction_factor": 1}, "reduction_factor"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MultiObjectiveASHA(**kwargs)
