"""Ray Tune's OptunaSearch, told the truth about early-stopped trials.

When a scheduler stops a trial, Ray hands its last, partly trained result to the searcher and
``OptunaSearch`` records it as COMPLETE, so half-trained accuracies would steer the sampler. Here a
trial that did not reach ``max_epochs`` is told to Optuna as PRUNED.
"""
from __future__ import annotations

import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

__all__ = ["FullBudgetOptunaSearch", "make_sampler", "SAMPLERS"]

SAMPLERS = ("tpe", "nsga2", "gp", "random")


class FullBudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that only completes trials which trained ``max_epochs`` epochs."""

    def __init__(self, *args, max_epochs: int, time_attr: str = "epoch", **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._time_attr = time_attr

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get(self._time_attr, 0) >= self._max_epochs:
            return super().on_trial_complete(trial_id, result, error)
        if trial_id in self._completed_trials:
            return None
        self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)
        return None

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


def make_sampler(name: str, seed: int, startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by name, seeded. All handle several objectives. ``startup_trials``
    random trials come first (for TPE and GP), so small searches still get model-based proposals."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True,
                                          group=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, startup_trials))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
