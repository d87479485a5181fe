"""Pareto helpers against brute force."""
from __future__ import annotations


import numpy as np

from automl_factor.search.pareto import hypervolume, nondominated, promotion_order


def _dominated(points, i):
    a = points[i]
    for j, b in enumerate(points):
        if j != i and b[0] >= a[0] and b[1] <= a[1] and b[2] <= a[2] and (b != a).any():
            return True
    return False


def test_nondominated_matches_brute_force():
    rng = np.random.default_rng(0)
    points = np.round(rng.random((60, 3)), 1)  # rounding creates ties and duplicates
    expected = [not _dominated(points, i) for i in range(len(points))]
    assert nondominated(points).tolist() == expected


def test_promotion_order_puts_fronts_first_then_accuracy():
    points = np.array([[0.5, 0.1, 1.0], [0.9, 0.5, 1.0], [0.4, 0.6, 2.0], [0.6, 0.05, 1.0]])
    order = promotion_order(points).tolist()
    # Front: rows 1 (most accurate) and 3; then 0 (dominated by 3); then 2 (dominated by 0).
    assert order == [1, 3, 0, 2]


def test_hypervolume_of_boxes():
    reference = (0.0, 1.0, 2.0)
    one = np.array([[0.5, 0.5, 1.0]])
    assert np.isclose(hypervolume(one, reference), 0.5 * 0.5 * 1.0)
    two = np.array([[0.5, 0.5, 1.0], [0.8, 0.9, 1.0]])
    # union of boxes [0,.5]x[.5,1]x[1,2] and [0,.8]x[.9,1]x[1,2], overlap [0,.5]x[.9,1]x[1,2]
    assert np.isclose(hypervolume(two, reference), 0.25 + 0.08 - 0.05)
    assert hypervolume(np.zeros((0, 3)), reference) == 0.0
