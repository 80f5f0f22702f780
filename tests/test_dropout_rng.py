"""`training.dropout_rng: pcg64`: dropout masks from numpy's PCG64 — the same distribution as
torch's dropout, governed by torch's seed, swapped in for every nn.Dropout of a built model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from forgetlab.config import TrainingConfig
from forgetlab.errors import ConfigError
from forgetlab.models.dropout_rng import PCG64Dropout, use_dropout_rng
from tests.conftest import needs_data, tiny_raw


def test_the_mask_keeps_one_minus_p_and_scales_the_kept():
    drop = PCG64Dropout(0.1).train()
    torch.manual_seed(0)
    y = drop(torch.ones(400_000))
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.003)  # ~6 sigma
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert torch.equal(drop.eval()(y), y)  # eval: the identity
    assert torch.equal(PCG64Dropout(0.0).train()(y), y)


def test_torch_seed_governs_the_masks_and_the_gradient_is_the_mask():
    drop = PCG64Dropout(0.5).train()
    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    c = drop(x)  # the generator moved on: another mask
    assert torch.equal(a, b) and not torch.equal(b, c)
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() * 2.0)


def test_every_plain_dropout_is_swapped_and_torch_leaves_the_model_alone():
    def model() -> nn.Module:
        return nn.Sequential(
            nn.Dropout(0.1), nn.ModuleDict({"a": nn.Dropout(0.2)}), nn.Linear(2, 2)
        )

    untouched = model()
    assert use_dropout_rng(untouched, "torch") == 0
    assert type(untouched[0]) is nn.Dropout
    swapped = model()
    assert use_dropout_rng(swapped, "pcg64") == 2
    assert isinstance(swapped[0], PCG64Dropout) and swapped[1]["a"].p == 0.2


def test_an_unknown_rng_is_refused():
    with pytest.raises(ConfigError, match="dropout_rng"):
        TrainingConfig(dropout_rng="philox")


@needs_data
def test_a_lora_run_trains_with_pcg64_masks_and_repeats_itself(tmp_path):
    from forgetlab import load_config, run
    from forgetlab.api import run_stacked

    def once(name: str, rng: str):
        raw = tiny_raw(tmp_path / name, "lora", tasks=("rte",), dropout_rng=rng, epochs=1)
        result = run(load_config(raw=raw))
        curve = [s["loss_curve"] for s in result.seed_metrics[1]["stages"]]
        return result.metrics["accuracy_matrix"], curve

    first, again, plain = once("a", "pcg64"), once("b", "pcg64"), once("c", "torch")
    assert first == again  # the same matrix and losses, step by step
    assert first[1] != plain[1]  # other masks: another trajectory
    raw = tiny_raw(tmp_path / "s", "lora", tasks=("rte",), dropout_rng="pcg64")
    with pytest.raises(ConfigError, match="dropout_rng=pcg64 does not stack"):
        run_stacked([load_config(raw=raw)])
