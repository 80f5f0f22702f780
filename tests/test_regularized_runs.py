"""Regularisers in real runs: λ = 0 changes nothing; a large λ forgets less (and learns less)."""

from __future__ import annotations

import pytest

from forgetlab import load_config, run
from tests.conftest import needs_data

pytestmark = needs_data


def _raw(out, **regularizer) -> dict:
    """Full fine-tuning SST-2 -> CoLA at a high learning rate: stage 2 visibly erodes SST-2."""
    raw = {
        "name": out.name,
        "tasks": ["sst2", "cola"],
        "model": {"max_length": 48},
        "data": {"max_train_examples": 160, "max_eval_examples": 200},
        "method": {"name": "full"},
        "training": {"lr": 1e-4, "epochs": 3, "batch_size": 16, "progress_bar": False},
        "output": {"dir": str(out), "store": str(out.parent / "store.sqlite")},
    }
    if regularizer:
        raw["regularizer"] = regularizer
    return raw


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "plain"
    return run(load_config(raw=_raw(out))).seed_metrics[1]


def test_lambda_zero_reproduces_the_unregularised_run_exactly(plain, tmp_path):
    zero = run(load_config(raw=_raw(tmp_path / "zero", name="l2_init", **{"lambda": 0.0})))
    zero = zero.seed_metrics[1]
    assert zero["accuracy_matrix"] == plain["accuracy_matrix"]
    assert [s["loss_curve"] for s in zero["stages"]] == [
        [[step, loss, 0.0] for step, loss, _ in s["loss_curve"]] for s in plain["stages"]
    ]


def test_large_lambda_lowers_forgetting(plain, tmp_path):
    strong = run(load_config(raw=_raw(tmp_path / "strong", name="l2_init", **{"lambda": 100.0})))
    strong = strong.seed_metrics[1]
    assert plain["avg_forgetting"] > 0  # the setting must forget for the test to mean anything
    assert strong["avg_forgetting"] < plain["avg_forgetting"]
    # the penalty was logged beside the loss
    assert any(point[2] > 0 for s in strong["stages"] for point in s["loss_curve"])


def test_laplace_on_a_source_task_outside_the_sequence(tmp_path):
    """AG News is never trained: it gets a linear-probe head on the pretrained features, and
    its data sets the curvature that the Laplace penalty weighs LoRA's update with."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    raw = {
        "name": "source",
        "tasks": ["rte", "sst2"],
        "source_tasks": [{"name": "agnews", "max_train_examples": 64}],
        "model": {"max_length": 48},
        "data": {"max_train_examples": 48, "max_eval_examples": 32},
        "method": {"name": "lora"},
        "regularizer": {
            "name": "laplace",
            "lambda": 1e4,
            "source": ["agnews"],
            "source_examples": 32,
        },
        "training": {"lr": 2e-3, "epochs": 2, "batch_size": 16, "progress_bar": False},
        "output": {"dir": str(out), "store": str(tmp_path / "store.sqlite")},
    }
    metrics = run(load_config(raw=raw)).seed_metrics[1]
    assert metrics["tasks"] == ["rte", "sst2"]  # the source task is not scored as a stage
    assert any(p[2] > 0 for s in metrics["stages"] for p in s["loss_curve"])
    heads = load_file(str(out / "seed-1" / "checkpoints" / "stage-2-sst2" / "heads.safetensors"))
    assert heads["agnews.weight"].shape[0] == 4  # the probe head, 4 AG News classes
    # The probe is frozen: trainable = LoRA r=8 on query/value of 6 layers (384 wide) plus
    # the two sequence heads (2 classes each), not the AG News probe.
    assert metrics["trainable_parameters"] == 6 * 2 * (2 * 8 * 384) + 2 * (2 * 384 + 2)
    stage1 = load_file(str(out / "seed-1" / "checkpoints" / "stage-1-rte" / "heads.safetensors"))
    assert (stage1["agnews.weight"] == heads["agnews.weight"]).all()


def test_source_tasks_are_validated():
    from forgetlab.errors import ConfigError

    base = {"tasks": ["rte"], "method": {"name": "lora"}}
    with pytest.raises(ConfigError, match="source_tasks repeat tasks of the sequence: rte"):
        load_config(raw={**base, "source_tasks": ["rte"]})
    with pytest.raises(ConfigError, match="neither a task of this run nor in source_tasks"):
        load_config(
            raw={
                **base,
                "source_tasks": ["trec"],
                "regularizer": {"name": "laplace", "source": ["agnews"]},
            }
        )
