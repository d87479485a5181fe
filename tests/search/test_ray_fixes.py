"""Work-arounds for Ray Tune defects (automl_factor.search.ray_fixes), each against real Ray: the
scenario that shows the defect, run through Tune, and what Ray saved read back."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune import ExperimentAnalysis

from automl_factor.search.ray_fixes import save_trials_stopped_without_actor

pytestmark = pytest.mark.integration


def test_a_trial_whose_worker_died_on_its_last_try_is_saved_failed(tmp_path: Path, monkeypatch):
    """Ray's saved state keeps such a trial RUNNING with 1 failure (its state was saved while the
    retry ran, and Ray does not save it again when it stops it, its actor being gone)."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # Ray saves its state at every step, so also during the retry
    save_trials_stopped_without_actor()
    save_trials_stopped_without_actor()  # applying it twice wraps Ray once

    class DiesInItsFirstStep(tune.Trainable):
        def step(self):
            time.sleep(2)
            os._exit(3)

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(DiesInItsFirstStep, tune_config=tune.TuneConfig(num_samples=1),
                   run_config=tune.RunConfig(storage_path=str(tmp_path), name="e", verbose=0,
                                             failure_config=tune.FailureConfig(max_failures=1))).fit()
    finally:
        ray.shutdown()
    [trial] = ExperimentAnalysis(str(tmp_path / "e")).trials
    assert (trial.status, trial.run_metadata.num_failures) == ("ERROR", 2)
