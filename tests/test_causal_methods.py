"""Every method (and a regulariser) on a decoder: the methods issue's table, on a tiny random
Llama. Each trains one short stage of continued pretraining and must move the held-out NLL."""

from __future__ import annotations

import pytest
from conftest import needs_data
from tiny_llama import tiny_llama

import forgetlab
from forgetlab.methods import METHODS

pytestmark = needs_data

# Learning rates that move a 2-layer random Llama within 4 steps (not tuned for anything else).
LR = {"full": 3e-3, "freeze": 3e-3, "vera": 5e-2, "adalora": 2e-2}
# Methods without a rank `r` (the others get r=4).
NO_RANK = ("full", "freeze", "adalora", "adapter", "prefix", "prompt", "ia3")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama-methods"), tokenizer="tiny")


def _raw(llama, out, method: str, **extra) -> dict:
    return {
        "name": f"m-{method}",
        "model": {"name": str(llama), "max_length": 32},
        "tasks": ["tinyshakespeare"],
        "data": {"max_train_examples": 32, "max_eval_examples": 8},
        "method": {
            "name": method,
            **({"r": 4} if method not in NO_RANK else {}),
        },  # fmt: skip
        "training": {
            "lr": LR.get(method, 1e-2),
            "epochs": 1,
            "batch_size": 8,
            "mixed_precision": "no",
            "progress_bar": False,
        },
        "output": {"dir": str(out), "store": str(out.parent / "s.sqlite"), "checkpoints": "last"},
        **extra,
    }


# Every method with its defaults, plus the variants that adapt other modules.
CASES = [(m, {}) for m in sorted(METHODS)] + [("adapter", {"style": "pfeiffer"})]


@pytest.mark.parametrize(
    ("method", "extra"), CASES, ids=[m + "".join(f"-{v}" for v in e.values()) for m, e in CASES]
)
def test_every_method_trains_a_decoder(llama, tmp_path, method, extra):
    raw = _raw(llama, tmp_path / method, method)
    raw["method"].update(extra)
    if method == "freeze":
        raw["method"]["num_trainable_layers"] = 1
    if method == "adalora":
        raw["method"].update({"init_r": 4, "target_r": 2})
    m = forgetlab.run(forgetlab.load_config(raw=raw)).metrics
    R = m["accuracy_matrix"]
    assert R[1][0] != R[0][0]  # the held-out NLL moved: the method trained something
    assert m["per_seed"]["1"]["trainable_parameters"] > 0


def test_a_regulariser_on_a_decoder(llama, tmp_path):
    raw = _raw(llama, tmp_path / "ewc", "lora", regularizer={"name": "l2_init", "lambda": 10.0})
    raw["tasks"] = ["tinyshakespeare", "stdlib_code"]
    m = forgetlab.run(forgetlab.load_config(raw=raw)).metrics
    assert any(row[2] > 0 for row in m["per_seed"]["1"]["stages"][1]["loss_curve"])  # penalty
