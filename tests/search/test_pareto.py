"""Pareto helpers: against brute force, ε-dominance on latency noise, crowding, normalized hypervolume."""
from __future__ import annotations

import numpy as np
import pytest

from automl_factor.search.pareto import (LATENCY_NOISE_FLOOR, MODES, NAMES, OBJECTIVES, hypervolume,
                                         front_extremes, hypervolume_matrix, nondominated, promotion_order,
                                         tolerance_matrix)
from automl_factor.search.tracking import front_mask, search_hypervolume, unique_complete


def _dominated(points, i):
    a = points[i]
    for j, b in enumerate(points):
        if j != i and b[0] >= a[0] and b[1] <= a[1] and b[2] <= a[2] and (b != a).any():
            return True
    return False


def _row(accuracy, params, latency, spread=0.05, **extra):
    return {"accuracy": accuracy, "params_ratio": params, "latency_ratio": latency, "latency_ratio_spread": spread,
            "status": "complete", **extra}


def test_one_objective_table_with_latency_as_a_ratio():
    assert NAMES == ("accuracy", "params_ratio", "latency_ratio") and MODES == ["max", "min", "min"]
    assert "latency_ms" not in NAMES  # raw milliseconds are logged, never ranked
    assert all(o.unit and o.measured for o in OBJECTIVES)


def test_nondominated_matches_brute_force():
    rng = np.random.default_rng(0)
    points = np.round(rng.random((60, 3)), 1)  # rounding creates ties and duplicates
    expected = [not _dominated(points, i) for i in range(len(points))]
    assert nondominated(points).tolist() == expected


def test_latency_gap_inside_the_noise_does_not_put_a_model_on_the_front():
    # b is 1% faster than a, inside both measurements' ±5% noise, and less accurate at equal size:
    # plain dominance keeps b on the front for its latency, ε-dominance does not.
    rows = [_row(0.95, 0.09, 1.00), _row(0.93, 0.09, 0.99)]
    assert nondominated(np.array([[r[n] for n in NAMES] for r in rows])).tolist() == [True, True]
    assert front_mask(rows).tolist() == [True, False]


def test_latency_gap_beyond_the_noise_keeps_the_faster_model():
    rows = [_row(0.95, 0.09, 1.00, spread=0.02), _row(0.93, 0.09, 0.80, spread=0.02)]
    assert front_mask(rows).tolist() == [True, True]


def test_noise_has_a_floor():
    rows = [_row(0.9, 0.1, 0.5, spread=0.0), _row(0.9, 0.1, 0.5, spread=None)]
    assert tolerance_matrix(rows)[:, 2] == pytest.approx([LATENCY_NOISE_FLOOR * 0.5] * 2)
    assert tolerance_matrix(rows)[:, :2].tolist() == [[0, 0], [0, 0]]


def test_promotion_order_puts_fronts_first():
    points = np.array([[0.5, 0.1, 1.0], [0.9, 0.5, 1.0], [0.4, 0.6, 2.0], [0.6, 0.05, 1.0]])
    order = promotion_order(points).tolist()
    # Front: rows 1 and 3 (two points: both boundary, then by accuracy); then 0; then 2.
    assert order == [1, 3, 0, 2]


def test_front_extremes_are_the_smallest_and_the_most_accurate_of_the_front():
    points = np.array([[0.90, 0.10, 1.0],   # most accurate
                       [0.70, 0.05, 1.0],   # on the front, in between
                       [0.50, 0.02, 1.0],   # smallest
                       [0.40, 0.02, 1.0],   # as small, less accurate: dominated
                       [0.80, 0.09, 0.5]])  # fastest by far: on the front, but latency names no extreme
    assert front_extremes(points).tolist() == [True, False, True, False, False]
    # Brute force: the extremes are front members with the front's best accuracy or params.
    front = np.array([not _dominated(points, i) for i in range(len(points))])
    want = front & ((points[:, 0] == points[front, 0].max()) | (points[:, 1] == points[front, 1].min()))
    assert front_extremes(points).tolist() == want.tolist()
    assert front_extremes(points[:1]).tolist() == [False]  # one model: no span, no ends


def test_crowding_keeps_the_small_model_among_accurate_large_ones():
    # One Pareto rank: four similar large accurate models and one small, less accurate one.
    # Ranked by accuracy the small one comes last and a 1/3 rung cuts it; crowding keeps extremes.
    points = np.array([[0.90, 0.100, 1.00], [0.89, 0.099, 1.01], [0.88, 0.098, 1.02], [0.87, 0.097, 1.03],
                       [0.60, 0.020, 0.50]])
    order = promotion_order(points).tolist()
    assert order.index(4) < 2 and order[0] in (0, 4)


def test_hypervolume_of_boxes():
    reference = (0.0, 1.0, 2.0)
    one = np.array([[0.5, 0.5, 1.0]])
    assert np.isclose(hypervolume(one, reference), 0.5 * 0.5 * 1.0)
    two = np.array([[0.5, 0.5, 1.0], [0.8, 0.9, 1.0]])
    # union of boxes [0,.5]x[.5,1]x[1,2] and [0,.8]x[.9,1]x[1,2], overlap [0,.5]x[.9,1]x[1,2]
    assert np.isclose(hypervolume(two, reference), 0.25 + 0.08 - 0.05)
    assert hypervolume(np.zeros((0, 3)), reference) == 0.0


def test_hypervolume_reads_params_as_a_fraction_of_the_budget():
    rows = [_row(0.8, 0.05, 1.0)]
    assert hypervolume_matrix(rows, budget=0.1)[0].tolist() == [0.8, 0.5, 1.0]
    reference = tuple(o.hv_reference for o in OBJECTIVES)
    assert search_hypervolume(rows, 0.1) == pytest.approx(0.8 * (reference[1] - 0.5) * (reference[2] - 1.0))
    # Halving a model's size (same budget) counts as much as it would at any other budget.
    half = search_hypervolume([_row(0.8, 0.025, 1.0)], 0.1) / search_hypervolume(rows, 0.1)
    assert half == pytest.approx(search_hypervolume([_row(0.8, 0.25, 1.0)], 1.0)
                                 / search_hypervolume([_row(0.8, 0.5, 1.0)], 1.0))


def test_hypervolume_counts_all_complete_trials_once_per_plan():
    rows = [_row(0.9, 0.09, 1.0, plan_key="a", finished_at=1), _row(0.7, 0.03, 0.6, plan_key="b", finished_at=2),
            _row(0.9, 0.09, 1.0, plan_key="a", finished_at=3), _row(0.95, 0.01, 0.1, plan_key="c", status="pruned")]
    assert [r["plan_key"] for r in unique_complete(rows)] == ["a", "b"]
    assert search_hypervolume(rows, 0.1) == pytest.approx(hypervolume(hypervolume_matrix(rows[:2], 0.1)))
