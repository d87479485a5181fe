"""MO-ASHA inside a real Ray Tune run, against Ray's own single-objective ASHA on the same trials;
its rungs saved with the experiment and read back on resume."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from automl_factor.search.schedulers import MultiObjectiveASHA

pytestmark = pytest.mark.integration

# Run in this order, one at a time. B is less accurate than A but smaller: on the Pareto front.
# C is dominated by A in every objective.
TRIALS = [
    {"name": "A", "accuracy": 0.9, "params_ratio": 0.10, "latency_ratio": 1.0},
    {"name": "B", "accuracy": 0.5, "params_ratio": 0.05, "latency_ratio": 1.0},
    {"name": "C", "accuracy": 0.4, "params_ratio": 0.20, "latency_ratio": 2.0},
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


def _result(epoch, accuracy, params_ratio, latency_ratio=1.0):
    return {"epoch": epoch, "accuracy": accuracy, "params_ratio": params_ratio, "latency_ratio": latency_ratio,
            "latency_ratio_spread": 0.01}


def test_rungs_survive_a_resume(tmp_path):
    """A new scheduler object (what ``Tuner.restore`` unpickles: the one built before the search
    started) reads the rungs back: stopped trials stay stopped, new trials meet the old rungs."""
    state = tmp_path / "run" / "moasha.json"
    before = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3, state_uri=str(state))
    pristine = ray.cloudpickle.dumps(before)  # as pickled into tuner.pkl, before any trial ran
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    assert before.on_trial_result(None, good, _result(1, 0.9, 0.05)) == TrialScheduler.CONTINUE
    assert before.on_trial_result(None, bad, _result(1, 0.5, 0.08)) == TrialScheduler.STOP  # dominated by good
    assert json.loads(state.read_text())["stopped"] == ["bad"]

    after = ray.cloudpickle.loads(pristine)
    # A stopped trial that Ray restarts from a checkpoint (its stop was not yet in Ray's state) stays stopped.
    assert after.on_trial_result(None, bad, _result(2, 0.95, 0.01)) == TrialScheduler.STOP
    # A new, dominated trial competes with the old rung (on an empty rung it would be promoted).
    assert after.on_trial_result(None, SimpleNamespace(trial_id="new"), _result(1, 0.4, 0.09)) == TrialScheduler.STOP
    assert set(after.state()["rungs"]["1"]) == {"good", "bad", "new"}


def test_a_rung_never_cuts_the_ends_of_its_front():
    """Early in a search a rung holds few trials: a top-1/3 cut alone stopped the smallest model
    because the first (larger) one was more accurate. The front's ends continue; the rest is cut."""
    scheduler = MultiObjectiveASHA(max_t=9, grace_period=1, reduction_factor=3)
    trial = SimpleNamespace
    assert scheduler.on_trial_result(None, trial(trial_id="large"), _result(1, 0.9, 0.10)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, trial(trial_id="small"), _result(1, 0.5, 0.02)) == TrialScheduler.CONTINUE
    # On the front but neither end, third of three: cut by the 1/3 rule.
    assert scheduler.on_trial_result(None, trial(trial_id="middle"), _result(1, 0.7, 0.05)) == TrialScheduler.STOP
    # The new most accurate model is an end, whatever its rank in the 1/3 order.
    assert scheduler.on_trial_result(None, trial(trial_id="best"), _result(1, 0.95, 0.11)) == TrialScheduler.CONTINUE
    # Dominated: stopped.
    assert scheduler.on_trial_result(None, trial(trial_id="worse"), _result(1, 0.45, 0.03)) == TrialScheduler.STOP


def test_without_state_uri_nothing_is_written(tmp_path):
    scheduler = MultiObjectiveASHA(max_t=4, grace_period=1, reduction_factor=3)
    scheduler.on_trial_result(None, SimpleNamespace(trial_id="a"), _result(1, 0.9, 0.05))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("schedule,max_epochs,want", [
    ("multistep", 12, 7),  # the default space: the first rung after the first drop, not at epoch 4
    ("multistep", 20, 11),
    ("cosine", 12, 4),  # no drop: a third of the epochs
    ("multistep", 3, 1),  # the first epoch after the drop is the last one: a third again
])
def test_default_grace_period_waits_for_the_first_learning_rate_drop(schedule, max_epochs, want):
    from automl_factor.search.schedulers import default_grace_period

    assert default_grace_period(schedule, max_epochs) == want
    assert MultiObjectiveASHA(max_t=max_epochs, grace_period=want).milestones[0] == want
