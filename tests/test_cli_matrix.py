"""Every registered method, regulariser and strategy runs from the CLI on two stages of the
quickstart sequence (its first and last task, a tiny subsample): it trains (loss goes down),
evaluates every task after every stage, and saves a checkpoint. One row each; a new method,
regulariser or strategy adds one row. Two stages are what a stage-to-stage hook needs (a
regulariser's or a strategy's earlier task, O-LoRA's second adapter); all four stages cost
twice the time for no more coverage."""

from __future__ import annotations

import json

import pytest
import yaml

from forgetlab.cli import main
from forgetlab.methods import METHODS
from forgetlab.regularizers import REGULARIZERS
from forgetlab.strategies import STRATEGIES
from tests.conftest import needs_data

pytestmark = needs_data

TASKS = ["rte", "sst2"]
# Learning rates at which a few steps visibly lower the loss on 32 examples.
METHOD_ROWS = {
    "full": [],
    "freeze": [],
    "lora": [],
    "rslora": [],
    "dora": [],
    "loraplus": [],
    "gaussian": [],
    "init_ab": [],
    "pissa": [],
    "olora": [],
    "milora": [],
    "lora_ga": ["method.calibration_batches=2"],
    "corda": ["method.calibration_batches=2"],
    "eva": ["method.calibration_batches=1", "method.calibration_batch_size=8"],
    "vera": ["training.lr=2e-2"],
    "adalora": ["method.total_step=8", "method.tinit=1", "method.tfinal=2"],
    "o_lora": [],
    "adapter": [],
    "prefix": ["training.lr=1e-2", "method.num_virtual_tokens=4"],
    "prompt": ["training.lr=1e-2", "method.num_virtual_tokens=4"],
    "ia3": ["training.lr=1e-2"],
}
REGULARIZER_ROWS = {
    "l2_init": ["regularizer.lambda=1"],
    "ewc": ["regularizer.lambda=100", "regularizer.fisher_samples=8"],
    "laplace": ["method.name=lora", "regularizer.lambda=100", "regularizer.source_examples=16"],
}
STRATEGY_ROWS = {
    "replay": ["strategy.examples_per_task=8", "strategy.ratio=0.5"],
    "lwf": [],
}


def test_every_registered_strategy_has_a_row():
    assert set(STRATEGY_ROWS) == set(STRATEGIES)


def test_every_registered_method_and_regulariser_has_a_row():
    assert set(METHOD_ROWS) == set(METHODS)
    assert set(REGULARIZER_ROWS) == set(REGULARIZERS)


def _run(tmp_path, overrides: list[str]) -> dict:
    raw = {
        "name": "matrix",
        "tasks": TASKS,
        "model": {"max_length": 32},
        "data": {"max_train_examples": 32, "max_eval_examples": 16},
        "method": {"name": "full"},
        "training": {
            "lr": 1e-3,
            "epochs": 2,  # 4 steps an epoch: the last epoch's loss against the first's
            "batch_size": 8,
            "log_every": 1,
            "progress_bar": False,
        },
        "output": {"dir": str(tmp_path / "run"), "store": str(tmp_path / "store.sqlite")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet", *overrides]) == 0
    return json.loads((tmp_path / "run" / "seed-1" / "metrics.json").read_text())


def _check(metrics: dict, run_dir) -> None:
    assert len(metrics["accuracy_matrix"]) == len(TASKS) + 1
    # Trained: over all stages, the mean loss of the last epoch is below that of the first
    # (4 steps per epoch; single batches are too noisy to compare).
    first = [p[1] for s in metrics["stages"] for p in s["loss_curve"][:4]]
    last = [p[1] for s in metrics["stages"] for p in s["loss_curve"][-4:]]
    assert sum(last) < sum(first), (first, last)
    ckpt = run_dir / "seed-1" / "checkpoints" / "stage-2-sst2"
    assert (ckpt / "heads.safetensors").is_file() and any((ckpt / "backbone").iterdir())


@pytest.mark.parametrize("name", sorted(METHOD_ROWS))
def test_method_runs_from_the_cli(tmp_path, name):
    lr = "training.lr=1e-4" if name in ("full", "freeze") else "training.lr=1e-3"
    metrics = _run(tmp_path, [f"method.name={name}", lr, *METHOD_ROWS[name]])
    assert metrics["method"] == name
    _check(metrics, tmp_path / "run")


@pytest.mark.parametrize("name", sorted(REGULARIZER_ROWS))
def test_regulariser_runs_from_the_cli(tmp_path, name):
    overrides = [f"regularizer.name={name}", *REGULARIZER_ROWS[name]]
    if not any(o.startswith("method.name") for o in overrides):
        overrides.append("training.lr=1e-4")
    metrics = _run(tmp_path, overrides)
    _check(metrics, tmp_path / "run")
    penalties = [p[2] for s in metrics["stages"] for p in s["loss_curve"]]
    assert any(p > 0 for p in penalties)  # the penalty acted and was logged beside the loss


@pytest.mark.parametrize("name", sorted(STRATEGY_ROWS))
def test_strategy_runs_from_the_cli(tmp_path, name):
    overrides = [f"strategy.name={name}", *STRATEGY_ROWS[name], "training.lr=1e-4"]
    metrics = _run(tmp_path, overrides)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["strategy"]["name"] == name
    _check(metrics, tmp_path / "run")
    added = [[p[2] for p in s["loss_curve"]] for s in metrics["stages"]]
    assert all(x == 0 for x in added[0]) and all(x > 0 for s in added[1:] for x in s)
