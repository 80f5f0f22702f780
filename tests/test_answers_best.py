"""Best setting per method: mean ± t-interval, gap to the reference, window, edge warning."""

from __future__ import annotations

import pytest

from forgetlab.answers import best_table, load_points
from tests.answers_fixtures import same_seeds, write_run

# t_{0.975, 2} from a t table: the 95% half-width of 3 seeds is 4.3027 · s / √3
T_975_2 = 4.302652729749464


def grid(tmp_path, method: str, learning: dict[float, float]) -> list:
    return [
        write_run(tmp_path, f"{method}-{lr:g}", method, same_seeds(value, 0.1), lr=lr)
        for lr, value in learning.items()
    ]


@pytest.fixture
def points(tmp_path):
    runs = grid(tmp_path, "lora", {1e-4: 0.60, 1e-3: 0.695, 3e-3: 0.65})
    # LoRA's best point has spread: seeds 0.69, 0.70, 0.71
    runs.insert(
        1,
        write_run(
            tmp_path, "lora-best", "lora", {1: (0.69, 0.1), 2: (0.70, 0.1), 3: (0.71, 0.1)}, lr=3e-4
        ),
    )
    # PiSSA's best is its highest rate: the grid was too narrow
    runs += grid(tmp_path, "pissa", {1e-4: 0.60, 3e-4: 0.65, 1e-3: 0.72})
    return load_points(runs)


def test_best_point_ci_gap_and_window(points):
    table = best_table(points)
    lora, pissa = table["rows"]
    assert lora["method"] == "lora" and lora["points"] == 4
    assert lora["settings"] == {"training.lr": 3e-4}
    assert lora["value"]["mean"] == pytest.approx(0.70)
    assert lora["value"]["ci95"] == pytest.approx(T_975_2 * 0.01 / 3**0.5)
    assert lora["value"]["n"] == 3
    # within 0.01 of LoRA's 0.70: 3e-4 (0.70) and 1e-3 (0.695), not 3e-3 (0.65)
    assert lora["window"] == {"key": "training.lr", "values": [3e-4, 1e-3], "lo": 3e-4, "hi": 1e-3}
    # the metric against the rate, for the report's curve with CI bands
    assert [c["value"] for c in lora["curve"]] == [1e-4, 3e-4, 1e-3, 3e-3]
    assert [c["mean"] for c in lora["curve"]] == pytest.approx([0.6, 0.7, 0.695, 0.65])
    assert [c["n"] for c in lora["curve"]] == [3, 3, 3, 3]
    assert lora["gap"] == pytest.approx(0.0)
    assert pissa["gap"] == pytest.approx(0.72 - 0.70)
    assert pissa["value"]["ci95"] == pytest.approx(0.0)  # three equal seeds
    assert table["reference"] == "lora"


def test_edge_warning_only_where_the_best_is_on_the_grid_edge(points):
    table = best_table(points)
    lora, pissa = table["rows"]
    assert lora["edge"] == []
    (warning,) = pissa["edge"]
    assert "best training.lr = 0.001 is the highest of the 3 values tried" in warning
    assert "widen" in warning
    assert warning in table["notes"]


def test_lowest_edge_and_best_by_forgetting(tmp_path):
    runs = [
        write_run(tmp_path, f"r{lr:g}", "lora", same_seeds(0.7, forget), lr=lr)
        for lr, forget in {1e-4: 0.01, 1e-3: 0.05, 1e-2: 0.2}.items()
    ]
    table = best_table(load_points(runs), metric="forgetting")
    (row,) = table["rows"]
    assert row["settings"] == {"training.lr": 1e-4}
    assert row["value"]["mean"] == pytest.approx(0.01)
    assert "is the lowest of the 3 values" in row["edge"][0]


def test_no_reference_method_no_gap(points):
    table = best_table(points, reference="full")
    assert table["reference"] is None
    assert all(r["gap"] is None for r in table["rows"])
    assert "no method is labelled 'full'" in table["notes"][-1]


def test_a_method_without_a_rate_sweep_has_no_window(tmp_path):
    runs = [
        write_run(tmp_path, "a", "lora", same_seeds(0.7, 0.1), method_config={"r": 8}),
        write_run(tmp_path, "b", "lora", same_seeds(0.6, 0.1), method_config={"r": 64}),
    ]
    (row,) = best_table(load_points(runs))["rows"]
    assert row["window"] is None and row["curve"] is None
    assert row["settings"] == {"method.r": 8}
    assert "best method.r = 8 is the lowest of the 2 values" in row["edge"][0]
