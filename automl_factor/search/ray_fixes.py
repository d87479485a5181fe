"""Work-arounds for defects of the pinned Ray Tune (``constraints.txt``), applied before a search.

Each is small, names what Ray does wrong, and has a test that fails without it
(``tests/search/test_ray_fixes.py``); drop one when that test passes on a Ray without it.
"""
from __future__ import annotations

import functools

from ray.tune.execution.tune_controller import TuneController

__all__ = ["save_trials_stopped_without_actor"]


def save_trials_stopped_without_actor() -> None:
    """Make Ray save a trial it stops whose actor is already gone.

    Ray marks a stopped trial for its next experiment-state save, except when the trial's actor has
    already died (a worker that died on its last allowed try). The saved state then keeps the trial
    ``RUNNING`` with a failure too few, so ``ExperimentAnalysis`` says so and ``--resume`` trains the
    trial once more. Idempotent.
    """
    stop = TuneController._schedule_trial_stop
    if getattr(stop, "saves_the_trial", False):
        return

    @functools.wraps(stop)
    def stop_and_save(self, trial, exception=None):
        stop(self, trial, exception=exception)
        self._mark_trial_to_checkpoint(trial)  # what Ray skips when the actor is gone

    stop_and_save.saves_the_trial = True
    TuneController._schedule_trial_stop = stop_and_save
