"""Multi-objective asynchronous successive halving (MO-ASHA), as a Ray Tune scheduler.

Plain ASHA ranks trials at each rung by accuracy alone, which cuts the small, cheap models a Pareto
front needs. Here, as in Syne Tune's MOASHA (Schmucker et al., 2021), a trial reaching a rung is
ranked among all trials recorded at that rung by non-dominated sorting over (accuracy ↑,
params_ratio ↓, latency ↓), ties broken by accuracy, and continues only if it is in the top
1/reduction_factor. Rungs sit at ``grace_period · reduction_factor^k`` epochs below ``max_t``.
"""
from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .pareto import OBJECTIVES, promotion_order

__all__ = ["MultiObjectiveASHA"]


class _Rung:
    """The objective vectors recorded at one milestone, by trial id."""

    def __init__(self, milestone: int):
        self.milestone = milestone
        self.recorded: dict[str, list[float]] = {}

    def promotes(self, trial_id: str, vector: list[float], reduction_factor: float) -> bool:
        """Record ``vector`` and say whether it ranks in the top 1/reduction_factor of the rung."""
        self.recorded[trial_id] = vector
        ids = list(self.recorded)
        order = promotion_order(np.array([self.recorded[i] for i in ids]))
        position = int(np.flatnonzero(order == ids.index(trial_id))[0])
        return position < max(1, math.ceil(len(ids) / reduction_factor))


class MultiObjectiveASHA(FIFOScheduler):
    """Asynchronous successive halving that promotes by Pareto rank at each rung."""

    def __init__(self, *, max_t: int, time_attr: str = "epoch", objectives: tuple[str, ...] = OBJECTIVES,
                 grace_period: int = 1, reduction_factor: float = 3):
        super().__init__()
        if grace_period < 1 or grace_period > max_t:
            raise ValueError(f"grace_period must be in [1, max_t={max_t}], got {grace_period}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._time_attr, self._objectives = time_attr, objectives
        self._max_t, self._reduction_factor = max_t, reduction_factor
        milestones, k = [], 0
        while grace_period * reduction_factor**k < max_t:
            milestones.append(int(grace_period * reduction_factor**k))
            k += 1
        self._rungs = [_Rung(m) for m in sorted(set(milestones), reverse=True)]
        self.stopped: set[str] = set()

    @property
    def milestones(self) -> list[int]:
        return sorted(rung.milestone for rung in self._rungs)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # objectives are fixed at construction; TuneConfig's single metric is unused

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or any(name not in result for name in self._objectives):
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            return TrialScheduler.STOP
        # Minimization-free vector in OBJECTIVES order; promotion_order knows the directions.
        vector = [float(result[name]) for name in self._objectives]
        for rung in self._rungs:  # highest milestone first, as Ray's ASHA
            if result[self._time_attr] < rung.milestone or trial.trial_id in rung.recorded:
                continue
            if not rung.promotes(trial.trial_id, vector, self._reduction_factor):
                self.stopped.add(trial.trial_id)
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {rung.milestone}: {len(rung.recorded)}" for rung in reversed(self._rungs))
        return f"MO-ASHA rungs ({sizes}), {len(self.stopped)} stopped"
