"""Ray Tune's OptunaSearch, told the truth about early-stopped trials and about duplicate models.

When a scheduler stops a trial, Ray hands its last, partly trained result to the searcher and
``OptunaSearch`` records it as COMPLETE, so half-trained accuracies would steer the sampler. Here a
trial that did not reach ``max_epochs`` is told to Optuna as PRUNED.

Different proposals often round to the same plan once the ranks are fitted to the budget (integer
ranks, a floor of rank 1). Training one plan twice wastes a trial and shows one model twice, so
each proposal's plan key is computed here, on the driver, before a trial starts: a plan already
trained is told to Optuna with its known values, a plan still training (or stopped early) as
PRUNED with the user attribute ``duplicate_of``, and Optuna is asked again.

For optuna-dashboard the study carries the objectives' names (``set_metric_names``) and each
Optuna trial the user attributes ``ray_trial_id``, ``plan`` (the plan in a few words),
``mlflow_run_id`` (when known) and ``accuracy_by_epoch``. Optuna refuses ``Trial.report`` in
multi-objective studies (``NotImplementedError``), so the per-epoch accuracy is kept as that user
attribute, the list of a trial's epochs written when it ends, instead of as intermediate values.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .options import SAMPLERS
from .pareto import NAMES
from .pick import plan_summary
from .trainable import FAILED_REASON

__all__ = ["FullBudgetOptunaSearch", "make_sampler", "SAMPLERS"]

logger = logging.getLogger(__name__)


class FullBudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that only completes trials which trained ``max_epochs`` epochs and never
    starts a plan it has already started.

    ``plan_key(config) -> str`` names the model a configuration trains; without it there is no
    deduplication. After ``max_retries`` duplicate proposals in a row the space is taken as
    exhausted and the searcher says FINISHED. ``mlflow_run_id(ray_trial_id) -> str | None``
    (picklable: the searcher is saved with the experiment) links each Optuna trial to its run.
    """

    def __init__(self, *args, max_epochs: int, time_attr: str = "epoch",
                 plan_key: Callable[[dict], str] | None = None, max_retries: int = 50,
                 mlflow_run_id: Callable[[str], str | None] | None = None, **kwargs):
        self._mlflow_run_id = mlflow_run_id
        self._epoch_accuracies: dict[str, list[float]] = {}  # Ray trial id -> validation accuracy per epoch
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._time_attr = time_attr
        self._plan_key = plan_key
        self._max_retries = max_retries
        self._plans: dict[str, dict] = {}  # plan key -> {"trial_id", "status", "values"}
        self._trial_plans: dict[str, str] = {}  # trial id -> plan key
        self.duplicates = 0

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if isinstance(self._metric, list):  # optuna-dashboard shows these instead of "Objective 0, 1, 2"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self._metric))

    def suggest(self, trial_id: str) -> dict | None:
        config = self._suggest_new_plan(trial_id)
        if isinstance(config, dict) and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record_epoch(trial_id, result)

    def _record_epoch(self, trial_id: str, result: dict | None) -> None:
        """Per epoch: the accuracy so far; on the first result also the plan and the MLflow run.
        (Ray hands a trial's last result to ``on_trial_complete`` only, so that calls this too.)"""
        ot_trial = self._ot_trials.get(trial_id)
        if (ot_trial is None or trial_id in self._completed_trials or not result or "accuracy" not in result
                or FAILED_REASON in result):
            return
        # (setdefault on __dict__: a searcher pickled by an older version has no such attribute)
        accuracies = self.__dict__.setdefault("_epoch_accuracies", {}).setdefault(trial_id, [])
        epoch = int(result.get(self._time_attr, len(accuracies) + 1))
        if epoch <= len(accuracies):  # already recorded
            return
        accuracies.append(float(result["accuracy"]))
        if len(accuracies) == 1:
            if result.get("plan"):
                ot_trial.set_user_attr("plan", plan_summary(result["plan"]))
            lookup = getattr(self, "_mlflow_run_id", None)
            run_id = lookup(trial_id) if lookup else None
            if run_id:
                ot_trial.set_user_attr("mlflow_run_id", run_id)

    def _write_epochs(self, trial_id: str) -> None:
        """``accuracy_by_epoch``, once, as the trial ends (one storage write per epoch held up each
        trial's next epoch: Ray's trials wait for the driver to take each result)."""
        accuracies = self.__dict__.get("_epoch_accuracies", {}).get(trial_id)
        if not accuracies or trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return
        try:
            self._ot_trials[trial_id].set_user_attr("accuracy_by_epoch", [round(value, 6) for value in accuracies])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a resumed searcher older than the study: the trial was told before the driver stopped

    def _suggest_new_plan(self, trial_id: str) -> dict | None:
        if self._plan_key is None:
            return super().suggest(trial_id)
        for _ in range(self._max_retries):
            config = super().suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            key = self._plan_key(config)
            known = self._plans.get(key)
            if known is None:
                self._plans[key] = {"trial_id": trial_id, "status": "training", "values": None}
                self._trial_plans[trial_id] = key
                return config
            self._tell_duplicate(self._ot_trials.pop(trial_id), known)
        logger.warning("%d proposals in a row gave plans already trained: the space looks exhausted; "
                       "no new trials", self._max_retries)
        return Searcher.FINISHED

    def _tell_duplicate(self, ot_trial: optuna.Trial, known: dict) -> None:
        self.duplicates += 1
        ot_trial.set_user_attr("duplicate_of", known["trial_id"])
        if known["status"] == "complete":
            self._ot_study.tell(ot_trial, known["values"])
        else:
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and FAILED_REASON in result:  # the trial ended itself, failed (it diverged)
            self._ot_trials[trial_id].set_user_attr("reason", result[FAILED_REASON])
            result, error = None, True  # (OptunaSearch records a trial with a result as COMPLETE)
        if not error:
            self._record_epoch(trial_id, result)
        self._write_epochs(trial_id)
        full = not error and result and result.get(self._time_attr, 0) >= self._max_epochs
        plan = self._plans.get(self._trial_plans.get(trial_id, ""))
        if plan is not None and plan["trial_id"] == trial_id:
            values = [result.get(name) for name in NAMES] if full else None
            complete = full and all(value is not None for value in values)
            plan.update(status="complete" if complete else ("failed" if error else "pruned"), values=values)
        if error or not result or full:
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
