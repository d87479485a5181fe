"""The objectives of the search, in one table, and the Pareto machinery that reads it.

Everything that ranks models (the Optuna searcher's directions, MO-ASHA, the ``pareto`` tag, the
hypervolume, the tracker's metrics, the plots and the printed table) reads ``OBJECTIVES``, so
they cannot disagree, and a new objective is one entry. Raw ``latency_ms`` is reported and logged
but never decides anything: it depends on the machine and its load, the ratio to dense does less.

Latency is noisy even as a ratio, so dominance is ε-dominance on latency: a model does not beat
another on latency unless the gap exceeds both measurements' noise (``noise`` column, a relative
half-spread, floored at ``LATENCY_NOISE_FLOOR``). Accuracy and parameters compare exactly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import moocore
import numpy as np

__all__ = ["Objective", "OBJECTIVES", "NAMES", "MODES", "LATENCY_NOISE_FLOOR", "objective_matrix",
           "tolerance_matrix", "nondominated", "pareto_ranks", "crowding_distance", "promotion_order", "front_extremes",
           "hypervolume_matrix", "hypervolume", "hv_reference"]


@dataclass(frozen=True)
class Objective:
    """One objective: what it is, which way is better, and where the hypervolume box ends.

    ``per_budget``: the hypervolume reads this objective divided by the search's parameter budget,
    so its scale does not shrink with the budget. ``noise``: the result key holding its relative
    measurement noise (ε-dominance), or None when it is exact.
    """

    name: str
    direction: Literal["max", "min"]
    unit: str
    measured: str
    hv_reference: float
    per_budget: bool = False
    noise: str | None = None

    @property
    def sign(self) -> float:
        """+1 for objectives to minimize, -1 to maximize: ``sign * value`` is always minimized."""
        return 1.0 if self.direction == "min" else -1.0


OBJECTIVES: tuple[Objective, ...] = (
    Objective("accuracy", "max", "fraction correct",
              "validation split at the last epoch (the test split is only read for the final report)", 0.0),
    Objective("params_ratio", "min", "fraction of dense parameters",
              "inference parameters of the collapsed model / the dense model's", 1.1, per_budget=True),
    Objective("latency_ratio", "min", "x dense latency",
              "candidate / dense latency on the space's latency target: median over interleaved rounds of "
              "torch.utils.benchmark", 2.0, noise="latency_ratio_spread"),
)
NAMES = tuple(objective.name for objective in OBJECTIVES)
MODES = [objective.direction for objective in OBJECTIVES]
# Two timings within 2% are never told apart, however tight their rounds happened to be.
LATENCY_NOISE_FLOOR = 0.02


def objective_matrix(rows: Sequence[Mapping], names: Sequence[str] = NAMES) -> np.ndarray:
    """(n, len(names)) float array of the named metrics of each row."""
    return np.array([[float(row[name]) for name in names] for row in rows], dtype=float).reshape(-1, len(names))


def tolerance_matrix(rows: Sequence[Mapping]) -> np.ndarray:
    """(n, objectives) absolute noise of each row's objectives (0 where exact)."""
    tolerance = np.zeros((len(rows), len(OBJECTIVES)))
    for j, objective in enumerate(OBJECTIVES):
        if objective.noise is None:
            continue
        for i, row in enumerate(rows):
            relative = row.get(objective.noise)
            relative = LATENCY_NOISE_FLOOR if relative is None or not np.isfinite(relative) else relative
            tolerance[i, j] = max(float(relative), LATENCY_NOISE_FLOOR) * abs(float(row[objective.name]))
    return tolerance


def _dominance(points: np.ndarray, tolerance: np.ndarray | None) -> np.ndarray:
    """``d[a, b]``: row a ε-dominates row b (no worse beyond the pair's noise anywhere, better
    beyond it somewhere). Without noise this is ordinary Pareto dominance."""
    values = points * np.array([objective.sign for objective in OBJECTIVES])  # minimize every column
    tolerance = np.zeros_like(values) if tolerance is None else tolerance
    gap = values[None, :, :] - values[:, None, :]  # gap[a, b] = b - a: positive where a is better
    noise = np.maximum(tolerance[:, None, :], tolerance[None, :, :])
    no_worse = (gap >= -noise).all(axis=2)
    better = (gap > noise).any(axis=2)
    return no_worse & better


def nondominated(points: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the rows no other row (ε-)dominates (exact ties stay on the front)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return ~_dominance(points, tolerance).any(axis=0)


def pareto_ranks(points: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, and so on."""
    ranks = np.full(len(points), -1)
    dominance = _dominance(points, tolerance) if len(points) else np.zeros((0, 0), dtype=bool)
    rank = 0
    while (ranks < 0).any():
        left = ranks < 0
        front = left & ~dominance[left].any(axis=0)  # not dominated by any row still unranked
        if not front.any():  # cannot happen (ε-dominance has no cycles); guards an endless loop
            front = left
        ranks[front] = rank
        rank += 1
    return ranks


def crowding_distance(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NSGA-II crowding: (how many objectives a point is extreme in, the sum over the other
    objectives of its neighbours' normalized gap). Extremes first, then the least crowded."""
    n = len(points)
    extremes, distance = np.zeros(n, dtype=int), np.zeros(n)
    if n <= 2:
        return np.full(n, points.shape[1] if n else 0), distance
    for column in points.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        if span == 0:
            continue
        extremes[order[[0, -1]]] += 1
        distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return extremes, distance


def promotion_order(points: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Row indices best first: by Pareto rank, then within a rank by crowding (as Syne Tune's
    MOASHA offers), so a rung keeps the front's extremes (smallest, fastest, most accurate) and
    spread-out models rather than a cluster of similar accurate ones; then by accuracy."""
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    ranks = pareto_ranks(points, tolerance)
    extremes, crowding = np.zeros(len(points), dtype=int), np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        extremes[members], crowding[members] = crowding_distance(points[members])
    return np.lexsort((-points[:, 0], -crowding, -extremes, ranks))


def front_extremes(points: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the (ε-)front's members that are best in an exactly measured objective (the
    smallest, the most accurate): the ends of the front, which MO-ASHA never cuts. Noisy objectives
    (latency) name no extreme: their best is often the luckiest measurement."""
    extremes = np.zeros(len(points), dtype=bool)
    if len(points) == 0:
        return extremes
    front = pareto_ranks(points, tolerance) == 0
    for j, objective in enumerate(OBJECTIVES):
        if objective.noise is not None:
            continue
        values = objective.sign * points[:, j]
        best = values[front].min()
        if values[front].max() > best:  # the front varies in this objective: its best end is an extreme
            extremes |= front & (values == best)
    return extremes


def hv_reference() -> tuple[float, ...]:
    return tuple(objective.hv_reference for objective in OBJECTIVES)


def hypervolume_matrix(rows: Sequence[Mapping], budget: float) -> np.ndarray:
    """Objective matrix in the hypervolume's coordinates (params as a fraction of the budget)."""
    points = objective_matrix(rows)
    for j, objective in enumerate(OBJECTIVES):
        if objective.per_budget:
            points[:, j] = points[:, j] / budget
    return points


def hypervolume(points: np.ndarray, reference: Sequence[float] | None = None) -> float:
    """Volume dominated by ``points`` (columns as ``OBJECTIVES``, in ``hypervolume_matrix``
    coordinates) up to ``reference`` (default: each objective's ``hv_reference``)."""
    if len(points) == 0:
        return 0.0
    reference = hv_reference() if reference is None else reference
    return float(moocore.hypervolume(points, ref=list(reference),
                                     maximise=[objective.direction == "max" for objective in OBJECTIVES]))
