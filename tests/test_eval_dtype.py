"""`eval.dtype`: the precision scoring runs in (auto: the training's; fp32; bf16), and the
run summary's line of training and evaluation time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from forgetlab import load_config
from forgetlab.config import EvalConfig
from forgetlab.errors import ConfigError
from forgetlab.kinds import KINDS, EvalContext
from forgetlab.methods import get_method, method_config
from forgetlab.models import load_tokenizer
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import prepare_tasks
from forgetlab.report.text import format_time
from tests.conftest import needs_data, one_torch_thread, tiny_raw


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _accelerator(bf16: bool) -> SimpleNamespace:
    """What scoring uses of an Accelerator: its device and its training autocast."""
    return SimpleNamespace(
        device=torch.device("cpu"),
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
    )


def _ctx(dtype: str, training_bf16: bool, batch_size: int = 16) -> EvalContext:
    return EvalContext(batch_size, _accelerator(training_bf16), 0, eval_cfg=EvalConfig(dtype=dtype))


@pytest.mark.parametrize(
    ("dtype", "training_bf16", "bf16"),
    [
        ("auto", False, False),
        ("auto", True, True),
        ("fp32", True, False),  # turns the training's autocast off
        ("bf16", False, True),
        ("bf16", True, True),
    ],
)
def test_the_precision_scoring_runs_in(dtype, training_bf16, bf16):
    with _ctx(dtype, training_bf16).autocast():
        assert torch.is_autocast_enabled("cpu") is bf16
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == (
            torch.bfloat16 if bf16 else torch.float32
        )


def test_a_bad_dtype_names_the_key():
    with pytest.raises(ConfigError, match=r"eval\.dtype='fp16' is not one of auto, fp32, bf16"):
        load_config(raw={"tasks": ["rte"], "eval": {"dtype": "fp16"}})


@needs_data
def test_bf16_scores_within_tolerance_and_fp32_equals_auto():
    raw = tiny_raw(Path("/nonexistent/run"), "full", tasks=("sst2",))
    raw["data"] = {"max_train_examples": 8, "max_eval_examples": 48}
    cfg = load_config(raw=raw)
    tokenizer = load_tokenizer(cfg.model)
    tasks = prepare_tasks(cfg, tokenizer)
    mcfg = method_config({"name": "full"})
    model = build_model(cfg, tasks, get_method("full"), mcfg, seed=1, pad_id=0)
    dtypes = []
    model.heads["sst2"].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    pad_id = tokenizer.pad_token_id

    def score(dtype: str) -> dict:
        dtypes.clear()
        ctx = EvalContext(16, _accelerator(False), pad_id, eval_cfg=EvalConfig(dtype=dtype))
        return KINDS["classification"].evaluate(model, "sst2", tasks[0].eval, ctx)

    auto, fp32, bf16 = score("auto"), score("fp32"), score("bf16")
    assert auto == fp32
    assert set(dtypes) == {torch.bfloat16}  # the last call (bf16) ran in bf16
    # the tolerance benchmarks/eval_share.py measured on whole runs, on 48 examples: 2 flips
    assert abs(bf16["score"] - fp32["score"]) <= 2 / 48


def test_the_time_line_sums_the_seeds():
    summary = {
        "per_seed": {
            "1": {"timing": {"train_s": 10.0, "eval_s": 1.0}},
            "2": {"timing": {"train_s": 30.0, "eval_s": 5.0}},
        }
    }
    assert format_time(summary) == (
        "Time:       training 40.0 s, evaluation 6.0 s = 15% of training time"
    )
    assert format_time({"per_seed": {"1": {}}}) is None  # a run recorded before timing was
