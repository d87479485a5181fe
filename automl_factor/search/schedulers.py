"""Multi-objective asynchronous successive halving (MO-ASHA), as a Ray Tune scheduler.

Plain ASHA ranks trials at each rung by accuracy alone, which cuts the small, cheap models a Pareto
front needs. Here, as in Syne Tune's MOASHA (Schmucker et al., 2021), a trial reaching a rung is
ranked among all trials recorded at that rung by non-dominated sorting over ``pareto.OBJECTIVES``
(ε-dominance on latency), ties within a Pareto rank broken by crowding distance so the rung keeps
the front's spread (small models included), and continues if it is in the top 1/reduction_factor,
or if it is an end of the rung's front (the smallest or the most accurate so far,
``pareto.front_extremes``): early in a search a rung holds few trials, and a top-1/3 cut alone
would stop the smallest model because the first, larger one is more accurate. Rungs sit at
``grace_period · reduction_factor^k`` epochs below ``max_t``.

Ray checkpoints the searcher with the experiment, not the scheduler. With ``state_uri`` the rungs
and the stopped trials are written there (JSON, local path or pyarrow URI) whenever they change,
and read back when a resumed search first calls the scheduler, so old trials stay stopped and new
ones compete with the old rungs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..train import first_epoch_after_decay
from .pareto import NAMES, OBJECTIVES, front_extremes, promotion_order, tolerance_matrix
from .trainable import FAILED_REASON

__all__ = ["MultiObjectiveASHA", "STATE_FILE", "default_grace_period", "rung_epochs"]

STATE_FILE = "moasha.json"
_KEYS = (*NAMES, *(objective.noise for objective in OBJECTIVES if objective.noise))


def default_grace_period(schedule: str, max_epochs: int) -> int:
    """The first rung, in epochs: the first epoch after the multistep schedule's first drop (7 of
    12), where accuracy starts to rank models as their last epoch will; else a third of the epochs.

    Measured on the default space (digits, 10 random plans, 12 epochs, multistep): Spearman's rank
    correlation with the last epoch's validation accuracy is 0.30 at epoch 4 (the old first rung),
    0.39 at epoch 6, 0.82 at epoch 7 and 0.95 at epoch 8."""
    after = first_epoch_after_decay(schedule, max_epochs)
    return after if after is not None and after < max_epochs else max(1, max_epochs // 3)


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> tuple[int, ...]:
    """The epochs at which successive halving judges a trial: ``grace_period · reduction_factor^k``
    below ``max_t`` (MO-ASHA's rungs, and Ray's ASHA's but for the last epoch, where both stop)."""
    milestones, k = set(), 0
    while grace_period * reduction_factor**k < max_t:
        milestones.add(int(grace_period * reduction_factor**k))
        k += 1
    return tuple(sorted(milestones))


class _Rung:
    """The objectives (and their noise) recorded at one milestone, by trial id."""

    def __init__(self, milestone: int):
        self.milestone = milestone
        self.recorded: dict[str, dict[str, float]] = {}

    def promotes(self, trial_id: str, result: dict[str, float], reduction_factor: float) -> bool:
        """Record ``result`` and say whether it ranks in the top 1/reduction_factor of the rung."""
        self.recorded[trial_id] = result
        ids = list(self.recorded)
        rows = [self.recorded[i] for i in ids]
        points = np.array([[row[name] for name in NAMES] for row in rows], dtype=float)
        tolerance = tolerance_matrix(rows)
        index = ids.index(trial_id)
        position = int(np.flatnonzero(promotion_order(points, tolerance) == index)[0])
        return position < max(1, math.ceil(len(ids) / reduction_factor)) or bool(front_extremes(points, tolerance)[index])


class MultiObjectiveASHA(FIFOScheduler):
    """Asynchronous successive halving that promotes by Pareto rank, then crowding, at each rung."""

    def __init__(self, *, max_t: int, time_attr: str = "epoch", grace_period: int = 1,
                 reduction_factor: float = 3, state_uri: str | None = None):
        super().__init__()
        if grace_period < 1 or grace_period > max_t:
            raise ValueError(f"grace_period must be in [1, max_t={max_t}], got {grace_period}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._time_attr = time_attr
        self._max_t, self._reduction_factor = max_t, reduction_factor
        self._rungs = [_Rung(m) for m in reversed(rung_epochs(grace_period, reduction_factor, max_t))]
        self.stopped: set[str] = set()
        self._state_uri = state_uri
        self._loaded = state_uri is None

    @property
    def milestones(self) -> list[int]:
        return sorted(rung.milestone for rung in self._rungs)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # objectives come from pareto.OBJECTIVES; TuneConfig's single metric is unused

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        if trial.trial_id in self.stopped:  # stopped before an interruption: stays stopped
            return TrialScheduler.STOP
        if self._time_attr not in result or any(name not in result for name in NAMES) or FAILED_REASON in result:
            return TrialScheduler.CONTINUE  # (a trial that failed ends itself; its result ranks nothing)
        if result[self._time_attr] >= self._max_t:
            return TrialScheduler.STOP
        recorded = {key: float(result[key]) for key in _KEYS if result.get(key) is not None}
        decision = TrialScheduler.CONTINUE
        for rung in self._rungs:  # highest milestone first, as Ray's ASHA
            if result[self._time_attr] < rung.milestone or trial.trial_id in rung.recorded:
                continue
            if not rung.promotes(trial.trial_id, recorded, self._reduction_factor):
                self.stopped.add(trial.trial_id)
                decision = TrialScheduler.STOP
            self._save()
            break
        return decision

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {rung.milestone}: {len(rung.recorded)}" for rung in reversed(self._rungs))
        return f"MO-ASHA rungs ({sizes}), {len(self.stopped)} stopped"

    # Persistence -------------------------------------------------------------------------------

    def __getstate__(self) -> dict:  # a copy unpickled later (Tuner.restore) re-reads the newest saved state
        state = self.__dict__.copy()
        state["_loaded"] = self._state_uri is None
        return state

    def state(self) -> dict:
        return {"rungs": {str(rung.milestone): rung.recorded for rung in self._rungs},
                "stopped": sorted(self.stopped)}

    def _save(self) -> None:
        if self._state_uri is None:
            return
        filesystem, path = pafs.FileSystem.from_uri(_as_uri(self._state_uri))
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        with filesystem.open_output_stream(path + ".tmp") as stream:
            stream.write(json.dumps(self.state()).encode())
        filesystem.move(path + ".tmp", path)  # a crash mid-write leaves the previous state

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        filesystem, path = pafs.FileSystem.from_uri(_as_uri(self._state_uri))
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return
        with filesystem.open_input_stream(path) as stream:
            state = json.loads(stream.read())
        for rung in self._rungs:
            rung.recorded.update(state["rungs"].get(str(rung.milestone), {}))
        self.stopped.update(state["stopped"])


def _as_uri(location: str) -> str:
    return location if "://" in location else Path(location).resolve().as_uri()
