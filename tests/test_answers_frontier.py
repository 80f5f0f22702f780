"""The learning–forgetting frontier and hypervolume, against hand-computed answers."""

from __future__ import annotations

import pytest

from forgetlab.answers import frontier, hypervolume, load_points, non_dominated
from tests.answers_fixtures import same_seeds, write_run


def test_non_dominated_by_hand():
    pairs = [(0.8, 0.3), (0.6, 0.1), (0.5, 0.2), (0.6, 0.1), (0.8, 0.35)]
    # (0.5, 0.2) is dominated by (0.6, 0.1); (0.8, 0.35) by (0.8, 0.3); equal pairs both stay
    assert non_dominated(pairs) == [True, True, False, True, False]


def test_hypervolume_by_hand():
    pairs = [(0.8, 0.3), (0.6, 0.1), (0.5, 0.2)]
    # rectangles to the reference (0.4, 0.4): A [0.4,0.8]×[0.3,0.4] = 0.04,
    # B [0.4,0.6]×[0.1,0.4] = 0.06, their overlap [0.4,0.6]×[0.3,0.4] = 0.02; C inside B
    assert hypervolume(pairs, (0.4, 0.4)) == pytest.approx(0.04 + 0.06 - 0.02)
    assert hypervolume([(0.6, 0.1)], (0.4, 0.4)) == pytest.approx(0.06)
    # beyond the reference in either direction: nothing
    assert hypervolume([(0.3, 0.1), (0.9, 0.5)], (0.4, 0.4)) == 0.0
    assert hypervolume([], (0.4, 0.4)) == 0.0


def test_frontier_of_runs_overall_and_per_method(tmp_path):
    runs = [
        write_run(tmp_path, "full-a", "full", same_seeds(0.8, 0.3), lr=1e-4),
        write_run(tmp_path, "full-b", "full", same_seeds(0.5, 0.2), lr=1e-5),
        write_run(tmp_path, "lora-a", "lora", same_seeds(0.6, 0.1), lr=1e-3),
        write_run(tmp_path, "lora-b", "lora", same_seeds(0.4, 0.4), lr=1e-2),
    ]
    got = frontier(load_points(runs))
    ref = got["reference_point"]
    # default: the worst learning (0.4) and the worst forgetting (0.4) over all points
    assert (ref["learning"], ref["forgetting"]) == pytest.approx((0.4, 0.4))
    assert "worst learning" in ref["chosen"]
    flags = {p["label"]: (p["frontier"], p["method_frontier"]) for p in got["points"]}
    assert flags == {
        "full lr=0.0001": (True, True),
        # beaten by lora lr=0.001 (0.6, 0.1) overall, but forgets less than full's other point
        "full lr=1e-05": (False, True),
        "lora lr=0.001": (True, True),
        "lora lr=0.01": (False, False),
    }
    # full: A (0.8, 0.3) and (0.5, 0.2): 0.04 + [0.4,0.5]×[0.2,0.4] = 0.02 → 0.06 minus the
    # overlap [0.4,0.5]×[0.3,0.4] = 0.01 → 0.05; lora: (0.6, 0.1) → 0.06, (0.4, 0.4) → 0
    assert got["hypervolume"]["full"] == pytest.approx(0.05)
    assert got["hypervolume"]["lora"] == pytest.approx(0.06)


def test_a_given_reference_point_is_stated(tmp_path):
    runs = [write_run(tmp_path, "a", "lora", same_seeds(0.6, 0.1))]
    got = frontier(load_points(runs), reference_point=(0.5, 0.2))
    assert got["reference_point"] == {"learning": 0.5, "forgetting": 0.2, "chosen": "given"}
    assert got["hypervolume"]["lora"] == pytest.approx(0.1 * 0.1)
