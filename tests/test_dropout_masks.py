"""`training.dropout_masks: bits`: CPU dropout masks from 16-bit slices of torch's 64-bit draws
(forgetlab.recipe.dropout_masks) — the keep rate and scaling of torch's dropout, torch's seed
governing them, swapped in around each training forward only, lone and stacked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_data, one_torch_thread, tiny_raw
from torch import nn

from forgetlab.recipe import dropout_masks as masks
from forgetlab.recipe.dropout_masks import TORCH_DROPOUT, bits_dropout, dropout_masks


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_every_slice_of_a_draw_keeps_one_minus_p_and_the_kept_are_scaled(p):
    torch.manual_seed(0)
    n = 1 << 22  # 4M elements: 1M draws
    y = bits_dropout(torch.ones(n), p)
    kept = (y != 0).float()
    # each of a draw's four 16-bit slices (a slice always >= 0 would keep every element at p
    # < 0.5: randint over the whole int64 range, not random_(), which leaves the top bit 0)
    tol = 6 * (p * (1 - p) / (n / 4)) ** 0.5
    for rate in kept.view(-1, 4).mean(0).tolist():
        assert rate == pytest.approx(1 - p, abs=tol)
    dropped = round(p * 65536)
    scale = 65536 / (65536 - dropped)
    assert torch.equal(y[y != 0], torch.full((int(kept.sum()),), scale))
    assert y.mean().item() == pytest.approx(1.0, abs=6 * tol)  # the input's expectation


def test_torch_seed_governs_the_masks_and_the_gradient_is_the_scaled_mask():
    x = torch.randn(8, 16, 32, requires_grad=True)
    torch.manual_seed(3)
    a = bits_dropout(x, 0.5)
    torch.manual_seed(3)
    b = bits_dropout(x, 0.5)
    c = bits_dropout(x, 0.5)  # the generator moved on: another mask
    assert torch.equal(a, b) and not torch.equal(b, c)
    a.sum().backward()
    assert torch.equal(x.grad, (a != 0).float() * 2.0)
    assert torch.equal(a[a != 0], x.detach()[a != 0] * 2.0)


def test_what_is_not_a_cpu_training_mask_is_torchs_own():
    x = torch.randn(64, 64)
    assert torch.equal(bits_dropout(x, 0.3, training=False), x)
    assert torch.equal(bits_dropout(x, 0.0), x)
    assert torch.equal(bits_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):  # torch's own check
        bits_dropout(x, 1.5)
    half = x.to(torch.bfloat16)
    assert bits_dropout(half, 0.1).dtype == torch.bfloat16
    inplace = x.clone()
    out = bits_dropout(inplace, 0.5, inplace=True)
    assert out.data_ptr() == inplace.data_ptr() and (inplace == 0).any()


def test_the_swap_covers_nn_dropout_within_the_block_and_is_undone_after_an_error():
    layer = nn.Dropout(0.25).train()
    x = torch.randn(32, 48)
    with dropout_masks("torch"):
        assert F.dropout is TORCH_DROPOUT
    with pytest.raises(RuntimeError, match="inside"), dropout_masks("bits"):
        assert F.dropout is bits_dropout
        torch.manual_seed(5)
        ours = layer(x)
        raise RuntimeError("inside")
    assert F.dropout is TORCH_DROPOUT
    torch.manual_seed(5)
    assert torch.equal(ours, bits_dropout(x, 0.25))
    torch.manual_seed(5)
    assert not torch.equal(ours, layer(x))  # torch's masks again
    with pytest.raises(ValueError, match="torch or bits"), dropout_masks("philox"):
        pass


def _curve(config) -> list:
    state = Path(config.output.dir, f"seed-{config.seeds[0]}", "state.json").read_text()
    return [p for s in json.loads(state)["stages"] for p in s["loss_curve"]]


@needs_data
def test_lone_and_stacked_runs_train_with_bits_masks_that_repeat_themselves(tmp_path, monkeypatch):
    from forgetlab import load_config, run
    from forgetlab.api import run_stacked

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return bits_dropout(*args, **kwargs)

    monkeypatch.setattr(masks, "bits_dropout", counted)

    def config(name: str, kind: str, lr: float = 2e-3):
        raw = tiny_raw(tmp_path / name, "lora", tasks=("rte",), dropout_masks=kind, epochs=1)
        raw["training"].update(lr=lr, batch_size=8, max_steps=3)
        raw["data"] = {"max_train_examples": 24, "max_eval_examples": 16}
        raw["output"]["checkpoints"] = "none"
        return load_config(raw=raw)

    first, again, plain = config("a", "bits"), config("b", "bits"), config("c", "torch")
    run(first)
    lone_calls = len(calls)
    assert lone_calls > 0 and F.dropout is TORCH_DROPOUT
    run(again)
    run(plain)
    assert len(calls) == 2 * lone_calls  # torch's run drew none of them
    assert _curve(first) == _curve(again)  # the same losses, step by step
    assert _curve(first) != _curve(plain)  # other masks: another trajectory
    stack = [config("s1", "bits"), config("s2", "bits", lr=1e-3)]
    assert all(o.error is None for o in run_stacked(stack))
    assert len(calls) > 2 * lone_calls and F.dropout is TORCH_DROPOUT
