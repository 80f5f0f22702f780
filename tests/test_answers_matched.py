"""Forgetting at matched learning: the isotonic fit, the bootstrap over seeds, levels not
reached, and the case the issue names — the method that forgets less at its default learns
less, and forgets more at matched learning."""

from __future__ import annotations

import numpy as np
import pytest

from forgetlab.answers import answers, load_points, matched_learning, spans_enough
from forgetlab.answers.matched import bootstrap_predictions, isotonic_fit
from tests.answers_fixtures import same_seeds, write_run


def test_isotonic_fit_by_hand():
    # 0.3 then 0.2 violate monotonicity: pooled to their mean 0.25
    fit = isotonic_fit([0.5, 0.6, 0.7], [0.1, 0.3, 0.2])
    got = fit([0.5, 0.55, 0.6, 0.65, 0.7])
    assert got == pytest.approx([0.1, 0.175, 0.25, 0.25, 0.25])
    # outside [0.5, 0.7]: not reached, never extrapolated
    assert np.isnan(fit([0.45, 0.75])).all()
    # one learning level: its mean there and nowhere else
    single = isotonic_fit([0.5, 0.5], [0.1, 0.3])
    assert single([0.5])[0] == pytest.approx(0.2)
    assert np.isnan(single([0.51])[0])


def seeds(values: list[tuple[float, float]]) -> dict[int, tuple[float, float]]:
    return {s: v for s, v in enumerate(values, start=1)}


def test_bootstrap_distribution_by_hand(tmp_path):
    # point 1: learning 0.5 in both seeds, forgetting 0.0 or 0.2; point 2: (0.7, 0.4) always.
    # A replicate's forgetting at 0.5 is 0.0, 0.1 or 0.2 with probability 1/4, 1/2, 1/4, so
    # at learning 0.6 (half-way) it predicts 0.2, 0.25 or 0.3 with those probabilities.
    runs = [
        write_run(tmp_path, "a", "lora", seeds([(0.5, 0.0), (0.5, 0.2)]), lr=1e-4),
        write_run(tmp_path, "b", "lora", seeds([(0.7, 0.4), (0.7, 0.4)]), lr=1e-3),
    ]
    points = load_points(runs)
    reps = bootstrap_predictions(points, [0.6], resamples=4000, seed=0)[:, 0]
    values, counts = np.unique(np.round(reps, 9), return_counts=True)
    assert values == pytest.approx([0.2, 0.25, 0.3])
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    # fixed RNG seed: the same replicates again; another seed: other replicates
    again = bootstrap_predictions(points, [0.6], resamples=4000, seed=0)[:, 0]
    assert np.array_equal(reps, again)
    assert not np.array_equal(reps, bootstrap_predictions(points, [0.6], 4000, seed=1)[:, 0])

    got = matched_learning(points, levels=[0.6, 0.8], resamples=4000, seed=0)
    at_06, at_08 = got["rows"]
    assert at_06["forgetting"] == pytest.approx(0.25)
    assert at_06["ci95"] == pytest.approx([0.2, 0.3])  # the 2.5 and 97.5 percentiles
    assert at_06["replicates_reaching"] == 4000
    assert at_08 == {
        "level": 0.8,
        "method": "lora",
        "reached": False,
        "forgetting": None,
        "ci95": None,
        "replicates_reaching": 0,
    }


def spread(learning: float, forgetting: float) -> dict[int, tuple[float, float]]:
    """Three seeds around (learning, forgetting), means exactly there."""
    return seeds(
        [
            (learning - 0.005, forgetting - 0.004),
            (learning, forgetting),
            (learning + 0.005, forgetting + 0.004),
        ]
    )


FULL = {1e-4: (0.80, 0.20), 3e-5: (0.70, 0.05), 1e-5: (0.60, 0.02)}
LORA = {1e-3: (0.55, 0.03), 3e-3: (0.65, 0.08), 1e-2: (0.70, 0.12)}


@pytest.fixture
def full_vs_lora(tmp_path):
    runs = [
        write_run(tmp_path, f"full-{lr:g}", "full", spread(*v), lr=lr) for lr, v in FULL.items()
    ]
    runs += [
        write_run(tmp_path, f"lora-{lr:g}", "lora", spread(*v), lr=lr) for lr, v in LORA.items()
    ]
    return runs


def test_forgets_less_at_default_but_more_at_matched_learning(full_vs_lora):
    # each method at its default rate (full 1e-4, LoRA 1e-3): LoRA forgets far less
    # (0.03 vs 0.20) — and learns far less (0.55 vs 0.80)
    result = answers(
        full_vs_lora,
        levels=[0.65, 0.70, 0.75],
        resamples=500,
        pairs=[("lora-0.001", "full-0.0001")],
    )
    learn, forget = result["pairs"]
    assert learn["mean_difference"] == pytest.approx(0.55 - 0.80)
    assert forget["mean_difference"] == pytest.approx(0.03 - 0.20)

    matched = result["matched"]
    rows = {(r["level"], r["method"]): r for r in matched["rows"]}
    # by hand: full is linear between (0.60, 0.02) and (0.70, 0.05), then (0.80, 0.20)
    assert rows[0.65, "full"]["forgetting"] == pytest.approx(0.035)
    assert rows[0.70, "full"]["forgetting"] == pytest.approx(0.05)
    assert rows[0.75, "full"]["forgetting"] == pytest.approx(0.125)
    assert rows[0.65, "lora"]["forgetting"] == pytest.approx(0.08)
    assert rows[0.70, "lora"]["forgetting"] == pytest.approx(0.12)
    # LoRA never learns 0.75: said so, not extrapolated
    assert rows[0.75, "lora"]["reached"] is False and rows[0.75, "lora"]["forgetting"] is None
    # at matched learning LoRA forgets MORE, and the bootstrap CI of the difference excludes 0
    diffs = {d["level"]: d for d in matched["differences"]}
    assert set(diffs) == {0.65, 0.70}  # only the levels both reach
    for level, want in ((0.65, 0.035 - 0.08), (0.70, 0.05 - 0.12)):
        d = diffs[level]
        assert (d["a"], d["b"]) == ("full", "lora")
        assert d["difference"] == pytest.approx(want)
        assert d["ci95"][1] < 0
    for level in (0.65, 0.70):
        lo, hi = rows[level, "lora"]["ci95"]
        assert lo <= rows[level, "lora"]["forgetting"] <= hi
        assert hi - lo > 0


def test_a_rate_past_its_peak_is_left_out_of_the_fit(full_vs_lora, tmp_path):
    """LoRA at 3e-2 broke: it learns less (0.40) and forgets more (0.30) than its best rate
    (1e-2: 0.70, 0.12). Pooled by the isotonic fit it would read as LoRA forgetting 0.1325 at
    every level; it is left out and named. A higher rate that learns less but also forgets
    less (full at 3e-4 against its best, 1e-4) stays: it is a trade, not a break."""
    broken = write_run(tmp_path, "lora-0.03", "lora", spread(0.40, 0.30), lr=3e-2)
    trade = write_run(tmp_path, "full-0.0003", "full", spread(0.75, 0.10), lr=3e-4)
    points = load_points([*full_vs_lora, broken, trade])
    got = matched_learning(points, levels=[0.65, 0.70], resamples=50)
    rows = {(r["level"], r["method"]): r for r in got["rows"]}
    assert rows[0.65, "lora"]["forgetting"] == pytest.approx(0.08)  # as without the break
    assert rows[0.70, "lora"]["forgetting"] == pytest.approx(0.12)
    assert got["methods"]["lora"]["past_peak"] == ["lora lr=0.03"]
    assert got["methods"]["lora"]["range"] == pytest.approx([0.55, 0.70])
    assert got["methods"]["full"]["past_peak"] == []
    # full: (0.60, 0.02) (0.70, 0.05) (0.75, 0.10) (0.80, 0.20), isotonic as it stands
    assert rows[0.70, "full"]["forgetting"] == pytest.approx(0.05)
    assert any("lora: left out of the fit, past its rate's peak" in n for n in got["notes"])
    # points of one rate: no series to read a peak along, nothing is left out (all pooled)
    plain = [write_run(tmp_path, f"x{i}", "lora", spread(*v)) for i, v in
             enumerate([(0.55, 0.03), (0.70, 0.12), (0.40, 0.30)])]  # fmt: skip
    pooled = matched_learning(load_points(plain), levels=[0.55], resamples=20)
    assert pooled["methods"]["lora"]["past_peak"] == []
    assert pooled["rows"][0]["forgetting"] == pytest.approx((0.30 + 0.03 + 0.12) / 3)


def test_spans_enough_and_default_levels(full_vs_lora, tmp_path):
    points = load_points(full_vs_lora)
    enough, why = spans_enough(points)
    assert enough and "full and lora both reach learning 0.6 … 0.7" in why
    # default levels: evenly over the range both reach
    got = matched_learning(points, resamples=20)
    assert got["levels"] == pytest.approx([0.6, 0.625, 0.65, 0.675, 0.7])
    assert got["spans_enough"] is True
    assert got["methods"]["lora"]["range"] == pytest.approx([0.55, 0.70])
    # one point per method: nothing to fit across
    single = [
        write_run(tmp_path, "x", "full", same_seeds(0.8, 0.2)),
        write_run(tmp_path, "y", "lora", same_seeds(0.6, 0.1)),
    ]
    enough, why = spans_enough(load_points(single))
    assert not enough and "fewer than two methods" in why
    # two methods whose ranges barely touch
    apart = [
        write_run(tmp_path, "f1", "full", same_seeds(0.80, 0.2), lr=1e-4),
        write_run(tmp_path, "f2", "full", same_seeds(0.71, 0.1), lr=1e-5),
        write_run(tmp_path, "l1", "lora", same_seeds(0.60, 0.1), lr=1e-3),
        write_run(tmp_path, "l2", "lora", same_seeds(0.72, 0.2), lr=1e-2),
    ]
    enough, why = spans_enough(load_points(apart))
    assert not enough and "overlap by 0.02 or more" in why
