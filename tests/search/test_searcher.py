"""The searcher never trains one plan twice: proposals that round to a plan already started are
answered on the driver (known values, or PRUNED with ``duplicate_of``) and Optuna is asked again."""
from __future__ import annotations

import sys

import optuna
import pytest
import ray
from ray import tune
from ray.tune.search import Searcher

from automl_factor import models
from automl_factor.search.searcher import FullBudgetOptunaSearch
from automl_factor.search.space import PlanKeys, SearchSpace, SpaceSampler

EPOCHS = 2
# Small budgets and a narrow rank range: most proposals round to the same few integer-rank plans.
CROWDED = SearchSpace.model_validate({
    "model": "resnet20", "max_epochs": EPOCHS, "budget_use": [0.1, 0.4],
    "groups": [{"name": "all", "layers": ["*"], "kinds": ["lowrank"], "rank_fraction": [0.05, 0.2]}],
})


def _searcher(plan_key, **kwargs) -> FullBudgetOptunaSearch:
    return FullBudgetOptunaSearch(space=SpaceSampler(CROWDED), metric=["accuracy", "params_ratio", "latency_ratio"],
                                  mode=["max", "min", "min"], sampler=optuna.samplers.RandomSampler(seed=0),
                                  max_epochs=EPOCHS, plan_key=plan_key, **kwargs)


@pytest.fixture(scope="module")
def plan_keys():
    return PlanKeys(CROWDED, models.create("resnet20", num_classes=10, in_channels=1), budget=0.2)


def test_the_crowded_space_has_many_duplicate_proposals(plan_keys):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    keys = []
    for _ in range(30):
        trial = study.ask()
        fixed = SpaceSampler(CROWDED)(trial)
        keys.append(plan_keys({**trial.params, **fixed}))
    assert len(set(keys)) <= 10  # the premise of the tests below: 30 proposals, at most 10 models


def test_no_plan_is_started_twice_and_optuna_hears_about_every_proposal(plan_keys):
    searcher = _searcher(plan_keys)
    started, done = {}, 0
    for index in range(12):
        trial_id = f"t{index}"
        config = searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            break
        key = plan_keys(config)
        assert key not in started, f"plan {key} started twice"
        started[key] = trial_id
        # Odd trials are stopped early, even ones train fully.
        epoch = EPOCHS if index % 2 == 0 else 1
        searcher.on_trial_complete(trial_id, {"epoch": epoch, "accuracy": 0.5 + index / 100, "params_ratio": 0.05,
                                              "latency_ratio": 1.0})
        done += 1
    trials = searcher.study.trials
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert duplicates and searcher.duplicates == len(duplicates)
    assert len(trials) == done + len(duplicates)
    by_trial = {tid: key for key, tid in started.items()}
    complete_ids = {f"t{i}" for i in range(0, 12, 2)}
    for trial in duplicates:  # a copy of a fully trained plan gets its values; of a stopped one, PRUNED
        original = trial.user_attrs["duplicate_of"]
        assert original in by_trial
        expected = optuna.trial.TrialState.COMPLETE if original in complete_ids else optuna.trial.TrialState.PRUNED
        assert trial.state == expected


def test_exhausted_space_finishes_cleanly():
    searcher = _searcher(lambda config: "always the same plan", max_retries=5)
    assert searcher.suggest("first") not in (None, Searcher.FINISHED)
    assert searcher.suggest("second") == Searcher.FINISHED
    assert searcher.duplicates == 5


class RunIds:
    """Stands in for tracking.ChildRuns (which asks MLflow): picklable, answers by Ray trial id."""

    def __call__(self, trial_id: str) -> str:
        return f"run-of-{trial_id}"


def test_optuna_dashboard_sees_names_runs_plans_and_epochs(plan_keys, tmp_path):
    searcher = _searcher(plan_keys, mlflow_run_id=RunIds())
    assert searcher.study.metric_names == ["accuracy", "params_ratio", "latency_ratio"]
    plan = '{"layer1.0.conv1": {"kind": "lowrank", "init": "spectral", "regularizer": "fd"}}'
    for trial_id, last_epoch in (("full", EPOCHS), ("stopped", 1)):
        searcher.suggest(trial_id)
        for epoch in range(1, last_epoch):
            searcher.on_trial_result(trial_id, {"epoch": epoch, "accuracy": 0.1 * epoch, "plan": plan})
        # Ray hands a trial's last result to on_trial_complete only.
        searcher.on_trial_complete(trial_id, {"epoch": last_epoch, "accuracy": 0.1 * last_epoch, "plan": plan,
                                              "params_ratio": 0.05, "latency_ratio": 1.0})
    trials = {trial.user_attrs["ray_trial_id"]: trial for trial in searcher.study.trials}
    assert trials["full"].state == optuna.trial.TrialState.COMPLETE
    assert trials["stopped"].state == optuna.trial.TrialState.PRUNED
    for trial_id, epochs in (("full", EPOCHS), ("stopped", 1)):
        attrs = trials[trial_id].user_attrs
        assert attrs["mlflow_run_id"] == f"run-of-{trial_id}"
        assert attrs["plan"] == "lowrank×1 · spectral · fd"
        assert attrs["accuracy_by_epoch"] == pytest.approx([0.1 * epoch for epoch in range(1, epochs + 1)])
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray saves the searcher with the experiment


def constant_trial(config):
    for epoch in range(1, EPOCHS + 1):
        tune.report({"epoch": epoch, "accuracy": 0.5, "params_ratio": 0.05, "latency_ratio": 1.0,
                     "budget_use": config["budget_use"]})


@pytest.mark.integration
def test_in_ray_tune_each_plan_is_trained_once(plan_keys, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        results = tune.Tuner(constant_trial, tune_config=tune.TuneConfig(
            search_alg=_searcher(plan_keys), num_samples=10, max_concurrent_trials=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    keys = [plan_keys(result.config) for result in results]
    assert 2 <= len(keys) == len(set(keys))  # the crowded space runs out of new plans before 10: it stops
    assert all(result.metrics["epoch"] == EPOCHS for result in results)


def test_the_search_starts_from_the_paper_recipe_and_the_smallest_plan():
    """Warm start: the uniform recipe filling the budget, then the same recipe at the smallest size
    the sampler proposes; Optuna takes both as given (not resampled), and the second trains the
    smallest plan any proposal can become."""
    from automl_factor.factorization import count_params, factorize
    from automl_factor.search.run import _first_points
    from automl_factor.search.space import plan_for, smallest_plan_params

    space = SearchSpace.model_validate({
        "model": "resnet20", "budget_use": [0.1, 1.0],
        "groups": [{"name": "a", "layers": ["layer1.*"], "kinds": ["lowrank", "deep"]},
                   {"name": "b", "layers": ["*"], "kinds": ["lowrank"], "layouts": ["channel", "spatial"]}],
    })
    model, budget = models.create("resnet20", num_classes=10, in_channels=1), 0.1
    sampler = SpaceSampler(space, smallest_share=smallest_plan_params(space, model) / (budget * count_params(model)))
    low, high = sampler.budget_use_range()
    assert 0.1 < low < high == 1.0  # rank 1 everywhere is above a tenth of the budget here
    points = _first_points(space, None, low)
    assert [point["budget_use"] for point in points] == [1.0, low]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    configs = []
    for point in points:
        study.enqueue_trial(point)
        trial = study.ask()
        fixed = sampler(trial)
        assert trial.params == {key: value for key, value in point.items() if key not in fixed}
        configs.append({**trial.params, **fixed})
    smallest = factorize(model, plan_for(space, model, configs[1], budget))
    assert count_params(smallest) == smallest_plan_params(space, model)
    assert count_params(factorize(model, plan_for(space, model, configs[0], budget))) > 3 * count_params(smallest)
