"""The reference study's config starts from the study's model: its shared head is the
classifier AutoModelForSequenceClassification(num_labels=2) creates under the same seed
(normal(0, 0.02) weights, zero bias), on the same pretrained pooler. Issue 11: forgetlab's
head used nn.Linear's own init (kaiming-uniform weights, non-zero bias) instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import needs_data

from forgetlab.errors import ConfigError
from forgetlab.models.task_model import SHARED, new_head
from forgetlab.resolve import load_config

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = [
    "model.name=packaged:minilm",
    "data.max_train_examples=8",
    "data.max_eval_examples=8",
    "seeds=[45]",
]


def test_head_init_is_validated():
    with pytest.raises(ConfigError, match="model.head_init"):
        load_config(ROOT / "configs" / "bert_sequential.yaml", ["model.head_init=xavier"])


def test_hf_head_is_a_normal_draw_with_zero_bias():
    torch.manual_seed(0)
    head = new_head(384, 2, "hf", 0.02)
    torch.manual_seed(0)
    assert torch.equal(head.weight, torch.empty(2, 384).normal_(0.0, 0.02))
    assert torch.equal(head.bias, torch.zeros(2))
    torch_head = new_head(384, 2, "torch")  # the default keeps nn.Linear's init
    assert torch_head.bias.abs().max() > 0


@needs_data
def test_bert_sequential_starts_from_hf_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from forgetlab.models.loading import resolve_model_path
    from forgetlab.recipe.build import build_run_model
    from forgetlab.recipe.prepare import prepare_run

    config = load_config(
        ROOT / "configs" / "bert_sequential.yaml", [*OVERRIDES, f"output.dir={tmp_path}"]
    )
    assert config.model.head_init == "hf" and config.heads == "shared"
    path = resolve_model_path(config.model.name)
    run_tasks = prepare_run(config, AutoTokenizer.from_pretrained(path))
    ours = build_run_model(config, run_tasks, 45, pad_id=0, device="cpu")
    torch.manual_seed(45)
    theirs = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    head = ours.heads[SHARED]
    assert list(ours.heads) == [SHARED]  # every task reads the same two logits
    assert torch.equal(head.weight, theirs.classifier.weight)
    assert torch.equal(head.bias, torch.zeros(2))
    # the pooler both read from is the checkpoint's, not a fresh one
    assert torch.equal(ours.backbone.pooler.dense.weight, theirs.bert.pooler.dense.weight)
    assert ours.dropout.p == theirs.dropout.p
