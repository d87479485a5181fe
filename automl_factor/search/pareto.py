"""Pareto fronts of (accuracy ↑, params_ratio ↓, latency ↓): non-dominance, ranks, hypervolume.

Thin wrappers over moocore so every caller uses the same objective order and directions.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import moocore
import numpy as np

__all__ = ["OBJECTIVES", "HV_OBJECTIVES", "HV_REFERENCE", "objective_matrix", "nondominated", "promotion_order",
           "hypervolume"]

# What the searcher optimizes and what each trial reports.
OBJECTIVES = ("accuracy", "params_ratio", "latency_ms")
MAXIMISE = (True, False, False)
# The hypervolume uses latency relative to the dense model on the same device, so that fronts
# measured on different machines compare; the reference point bounds each objective's worst value.
HV_OBJECTIVES = ("accuracy", "params_ratio", "latency_ratio")
HV_REFERENCE = (0.0, 1.0, 2.0)


def objective_matrix(rows: Sequence[Mapping], names: Sequence[str] = OBJECTIVES) -> np.ndarray:
    """(n, len(names)) float array of the named metrics of each row."""
    return np.array([[float(row[name]) for name in names] for row in rows], dtype=float).reshape(-1, len(names))


def nondominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (ties with a front member stay on it)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(points, maximise=list(MAXIMISE), keep_weakly=True)


def promotion_order(points: np.ndarray) -> np.ndarray:
    """Row indices best first: by Pareto rank (non-dominated sorting), then by accuracy."""
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    ranks = moocore.pareto_rank(points, maximise=list(MAXIMISE))
    return np.lexsort((-points[:, 0], ranks))


def hypervolume(points: np.ndarray, reference: Sequence[float] = HV_REFERENCE) -> float:
    """Volume dominated by ``points`` (columns as ``HV_OBJECTIVES``) up to ``reference``."""
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=list(reference), maximise=list(MAXIMISE)))
