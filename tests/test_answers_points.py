"""Loading finished run directories as points: labels, settings, per-seed metrics."""

from __future__ import annotations

import shutil

import pytest

from forgetlab.answers import NotComparable, load_points
from forgetlab.errors import ForgetlabError
from tests.answers_fixtures import write_run


def test_points_labels_settings_and_per_seed_values(tmp_path):
    lap = {"name": "laplace", "lambda": 100.0, "curvature": "kfac"}
    runs = [
        write_run(tmp_path, "full", "full", {1: (0.8, 0.2), 2: (0.7, 0.1)}, lr=1e-4),
        write_run(tmp_path, "lora-r8", "lora", {1: (0.6, 0.05)}, method_config={"r": 8}),
        write_run(tmp_path, "lora-r64", "lora", {1: (0.65, 0.06)}, method_config={"r": 64}),
        write_run(tmp_path, "lap", "lora", {1: (0.6, 0.0)}, regularizer=lap),
    ]
    full, r8, r64, reg = load_points(runs)
    assert [p.method for p in (full, r8, r64, reg)] == [
        "full",
        "lora",
        "lora",
        "lora+laplace(λ=100)",
    ]
    # the rate differs between all runs; r only within LoRA; curvature only the regulariser has
    assert full.settings == {"training.lr": 1e-4}
    assert r8.settings == {"method.r": 8, "training.lr": 1e-3}
    assert r64.label == "lora r=64 lr=0.001"
    assert reg.settings == {"training.lr": 1e-3}
    assert full.seeds == [1, 2]
    assert full.learning == pytest.approx([0.8, 0.7])
    assert full.forgetting == pytest.approx([0.2, 0.1])
    assert full.mean("learning") == pytest.approx(0.75)


def test_swept_lambda_is_a_setting_not_a_method(tmp_path):
    runs = [
        write_run(
            tmp_path,
            f"ewc-{lam}",
            "lora",
            {1: (0.6, 0.1)},
            regularizer={"name": "ewc", "lambda": lam},
        )
        for lam in (1.0, 10.0)
    ]
    points = load_points(runs)
    assert {p.method for p in points} == {"lora+ewc"}
    assert [p.settings for p in points] == [
        {"regularizer.lambda": 1.0},
        {"regularizer.lambda": 10.0},
    ]


def test_target_gain_and_source_loss(tmp_path):
    run = write_run(
        tmp_path, "a", "lora", {1: (0.8, 0.2), 2: (0.6, 0.0)}, source_loss={1: 0.03, 2: 0.01}
    )
    (p,) = load_points([run], learning="target_gain", forgetting="source_loss")
    # R[1][1] = R[2][2] = L, majority baselines 0.52 and 0.51: gain = L − 0.515
    assert p.learning == pytest.approx([0.285, 0.085])
    assert p.forgetting == pytest.approx([0.03, 0.01])


def test_without_config_yaml_the_summary_gives_the_settings(tmp_path):
    runs = [
        write_run(tmp_path, "a", "lora", {1: (0.6, 0.1)}, lr=1e-3, config=False),
        write_run(tmp_path, "b", "lora", {1: (0.7, 0.2)}, lr=3e-3, config=False),
    ]
    assert [p.settings for p in load_points(runs)] == [{"training.lr": 1e-3}, {"training.lr": 3e-3}]


def test_per_seed_missing_falls_back_to_the_aggregate_values(tmp_path):
    from forgetlab.atomic import atomic_write_json, read_json

    run = write_run(tmp_path, "a", "lora", {1: (0.8, 0.2), 2: (0.6, 0.0)})
    summary = read_json(run / "metrics.json")
    del summary["per_seed"]
    atomic_write_json(run / "metrics.json", summary)
    (p,) = load_points([run])
    assert p.learning == pytest.approx([0.8, 0.6])
    assert p.forgetting == pytest.approx([0.2, 0.0])


def test_runs_of_different_tasks_cannot_be_compared(tmp_path):
    a = write_run(tmp_path, "a", "lora", {1: (0.6, 0.1)})
    b = write_run(tmp_path, "b", "lora", {1: (0.6, 0.1)}, tasks=["mrpc", "sst2"])
    with pytest.raises(NotComparable, match="tasks differ.*rte, sst2.*mrpc, sst2"):
        load_points([a, b])


def test_bad_names_and_non_runs_are_errors(tmp_path):
    run = write_run(tmp_path, "a", "lora", {1: (0.6, 0.1)})
    with pytest.raises(ForgetlabError, match="learning must be one of"):
        load_points([run], learning="bwt")
    with pytest.raises(ForgetlabError, match="forgetting must be one of"):
        load_points([run], forgetting="acc")
    shutil.copytree(run, tmp_path / "broken")
    (tmp_path / "broken" / "metrics.json").unlink()
    with pytest.raises(ForgetlabError, match="metrics.json is missing"):
        load_points([run, tmp_path / "broken"])


def test_compare_offers_exactly_the_metrics_the_answers_read():
    """cli.py lists them literally (importing forgetlab.answers would load scikit-learn at
    every command's start): the lists must not drift apart."""
    from forgetlab.answers.points import FORGETTING, LEARNING
    from forgetlab.cli import _parser

    compare = next(
        a.choices["compare"] for a in _parser()._actions if getattr(a, "choices", None)
        and "compare" in a.choices
    )  # fmt: skip
    choices = {a.dest: a.choices for a in compare._actions if a.choices}
    assert tuple(choices["learning"]) == LEARNING
    assert tuple(choices["forgetting"]) == FORGETTING
