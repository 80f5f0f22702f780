"""Paired t-test and Wilcoxon signed-rank between runs, against answers worked by hand."""

from __future__ import annotations

import math

import pytest

from forgetlab.answers import load_points, paired_at_best, paired_test
from forgetlab.answers.paired import find_point
from forgetlab.errors import ForgetlabError
from tests.answers_fixtures import same_seeds, write_run


def two_runs(tmp_path, differences: list[float], forgetting: float = 0.1):
    """Run a learns 0.6 + d_s in seed s, run b 0.6; both forget `forgetting`."""
    a = {s: (0.6 + d, forgetting) for s, d in enumerate(differences, start=1)}
    b = {s: (0.6, forgetting) for s in a}
    runs = [
        write_run(tmp_path, "a", "lora", a, lr=1e-3),
        write_run(tmp_path, "b", "lora", b, lr=3e-3),
    ]
    return load_points(runs)


def test_three_seeds_by_hand(tmp_path):
    a, b = two_runs(tmp_path, [0.02, 0.04, 0.06])
    row = paired_test(a, b, "learning")
    assert row["seeds"] == [1, 2, 3]
    assert row["mean_difference"] == pytest.approx(0.04)
    # t = mean / (s / √n) = 0.04 / (0.02 / √3) = 2√3; with 2 degrees of freedom the
    # two-sided p is 1 − t / √(t² + 2) = 1 − √(12/14)
    assert row["t"] == pytest.approx(2 * math.sqrt(3), rel=1e-6)
    assert row["t_p"] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)
    # all three differences positive: W = 0, exact two-sided p = 2 · (1/2³) = 0.25
    assert row["wilcoxon"] == 0
    assert row["wilcoxon_p"] == pytest.approx(0.25)
    (note,) = row["notes"]
    assert "only 3 common seeds (< 5): the tests are weak" in note and "is 0.25" in note


def test_five_seeds_by_hand(tmp_path):
    a, b = two_runs(tmp_path, [0.01, -0.02, 0.03, 0.04, 0.05])
    row = paired_test(a, b, "learning")
    # ranks of |d|: 1..5; the negative difference has rank 2, so W = min(W+, W−) = 2;
    # P(W ≤ 2) = #{subsets of 1..5 summing to ≤ 2: {}, {1}, {2}} / 2⁵ = 3/32, two-sided 6/32
    assert row["wilcoxon"] == 2
    assert row["wilcoxon_p"] == pytest.approx(6 / 32)
    # mean 0.022, s = √(Σ(d − 0.022)² / 4), t = mean / (s / √5), 4 degrees of freedom:
    # two-sided p = 1 − (3/2)·u·(1 − u²/3) with u = t / √(t² + 4)
    d = [0.01, -0.02, 0.03, 0.04, 0.05]
    s = math.sqrt(sum((x - 0.022) ** 2 for x in d) / 4)
    t = 0.022 / (s / math.sqrt(5))
    u = t / math.sqrt(t * t + 4)
    assert row["t"] == pytest.approx(t, rel=1e-6)
    assert row["t_p"] == pytest.approx(1 - 1.5 * u * (1 - u * u / 3), rel=1e-6)
    assert row["notes"] == []


def test_no_test_without_two_seeds_or_without_differences(tmp_path):
    a, b = two_runs(tmp_path, [0.0, 0.0, 0.0])
    row = paired_test(a, b, "forgetting")
    assert row["t"] is None and row["wilcoxon"] is None
    assert "every seed's difference is 0" in row["notes"][-1]
    one_a = write_run(tmp_path, "c", "lora", {1: (0.7, 0.1)}, lr=1e-2)
    one_b = write_run(tmp_path, "d", "lora", {2: (0.7, 0.1)}, lr=3e-2)
    c, d = load_points([one_a, one_b])
    row = paired_test(c, d, "learning")
    assert row["seeds"] == [] and row["mean_difference"] is None
    assert row["notes"] == ["0 common seed(s): no test"]


def test_equal_differences_have_no_t_but_a_wilcoxon(tmp_path):
    # 0.81 − 0.71 and 0.82 − 0.72 differ from 0.1 in the last bits only
    a = write_run(tmp_path, "a", "lora", {1: (0.8, 0.1), 2: (0.81, 0.1), 3: (0.82, 0.1)})
    b = write_run(tmp_path, "b", "lora", {1: (0.7, 0.1), 2: (0.71, 0.1), 3: (0.72, 0.1)}, lr=0.1)
    row = paired_test(*load_points([a, b]), "learning")
    assert row["t"] is None and row["t_p"] is None
    assert "the same for every seed: t is undefined" in row["notes"][-1]
    assert row["wilcoxon_p"] == pytest.approx(0.25)


def test_paired_at_each_methods_best_point_against_the_reference(tmp_path):
    runs = [
        write_run(tmp_path, "lora-lo", "lora", same_seeds(0.6, 0.1, 5), lr=1e-4),
        write_run(
            tmp_path, "lora-hi", "lora", {s: (0.7 + s / 100, 0.1) for s in range(1, 6)}, lr=1e-3
        ),
        write_run(
            tmp_path, "dora", "dora", {s: (0.7, 0.1 + s / 100) for s in range(1, 6)}, lr=1e-3
        ),
        write_run(tmp_path, "pissa", "pissa", same_seeds(0.65, 0.1, 5), lr=1e-3),
    ]
    rows = paired_at_best(load_points(runs))
    assert [(r["a"], r["b"], r["metric"]) for r in rows] == [
        ("dora lr=0.001", "lora lr=0.001", "learning"),
        ("dora lr=0.001", "lora lr=0.001", "forgetting"),
        ("pissa lr=0.001", "lora lr=0.001", "learning"),
        ("pissa lr=0.001", "lora lr=0.001", "forgetting"),
    ]
    # dora − lora learning: −0.01 … −0.05, every difference negative: W = 0, p = 2/32
    assert rows[0]["mean_difference"] == pytest.approx(-0.03)
    assert rows[0]["wilcoxon_p"] == pytest.approx(2 / 32)
    # without the reference: every two methods
    rows = paired_at_best(load_points(runs), reference=None)
    assert len(rows) == 6


def test_find_point_by_directory_name_or_label(tmp_path):
    a, b = two_runs(tmp_path, [0.01, 0.02])
    points = [a, b]
    assert find_point(points, "a") is a
    assert find_point(points, b.run) is b
    assert find_point(points, "lora lr=0.003") is b
    with pytest.raises(ForgetlabError, match="no run named 'zzz'"):
        find_point(points, "zzz")
