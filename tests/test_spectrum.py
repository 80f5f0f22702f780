"""Spectrum of weight updates: rank measures on hand-computed spectra, synthetic low-rank and
dense updates, and real PEFT adapters (LoRA, DoRA, VeRA) on a tiny BERT."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, VeraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import BertConfig, BertModel

from forgetlab.analyses.maths.spectrum import (
    matrix_spectrum,
    numerical_rank,
    random_reference,
    rank_for_energy,
    singular_values,
    stable_rank,
)
from forgetlab.analyses.weights import effective_linear_weights, update_spectra, weight_deltas
from forgetlab.models.task_model import TaskModel

# Emitted by transformers when PEFT wraps the model; nothing to do with what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")

QV = {f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
ADAPTERS = {
    "lora": lambda: LoraConfig(r=2, target_modules=["query", "value"]),
    "dora": lambda: LoraConfig(r=2, target_modules=["query", "value"], use_dora=True),
    "vera": lambda: VeraConfig(r=4, target_modules=["query", "value"]),
}


def _bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return BertModel(config).eval()


def _linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _adapted(config, train: tuple[str, ...] = ("lora_B",)) -> tuple[BertModel, nn.Module]:
    """(untouched copy of the base model, PEFT model whose `train` parameters are random).

    PEFT initialises LoRA's B (VeRA's lambda_b) to zero, i.e. no update: randomising it plays
    the part of training."""
    model = _bert()
    base = copy.deepcopy(model)  # get_peft_model modifies `model` in place
    peft_model = get_peft_model(model, config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if any(t in name for t in train):
                p.copy_(torch.randn(p.shape, generator=gen))
    return base, peft_model


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# --- rank measures on hand-computed spectra --------------------------------------------------


@pytest.mark.parametrize(
    ("s", "energy", "expected"),
    [
        ([3, 1, 1], 0.9, 2),  # energies 9, 1, 1 of 11: 9/11 = 0.82 < 0.9 <= 10/11 = 0.91
        ([3, 1, 1], 0.8, 1),  # 0.82 >= 0.8
        ([3, 1, 1], 0.95, 3),  # 0.91 < 0.95
        ([1, 3, 1], 0.9, 2),  # order of the input does not matter
        ([1, 1, 1, 1], 0.5, 2),  # exactly at the threshold counts (>=)
        ([2, 1, 0, 0], 1.0, 2),  # energy 1: the number of non-zero values
        ([0, 0, 0], 0.9, 0),
    ],
)
def test_rank_for_energy_by_hand(s, energy, expected):
    assert rank_for_energy(np.array(s, dtype=float), energy) == expected


def test_rank_measures_by_hand():
    assert stable_rank([3, 1, 1]) == pytest.approx(11 / 9)
    assert stable_rank([0, 0]) == 0.0
    # default tolerance 64 * eps32 = 7.6e-6 relative to s_max: 1e-3 counts, 1e-9 does not
    assert numerical_rank([1.0, 1e-3, 1e-9], shape=(64, 48)) == 2
    assert numerical_rank([1.0, 1e-3, 1e-9], shape=(64, 48), rtol=1e-2) == 1
    assert numerical_rank([0.0, 0.0], shape=(2, 2)) == 0
    with pytest.raises(ValueError, match="energy"):
        rank_for_energy([1.0], energy=0.0)


# --- synthetic updates -----------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 5])
def test_low_rank_product(r):
    gen = torch.Generator().manual_seed(r)
    b, a = torch.randn(64, r, generator=gen), torch.randn(r, 48, generator=gen)
    # float32, as fine-tuned weights are: the default tolerance must see through its rounding
    assert numerical_rank(singular_values(b @ a), (64, 48)) == r
    s = singular_values(b.double() @ a.double())
    assert s.dtype == np.float64 and s.shape == (48,)
    assert np.all(np.diff(s) <= 0)
    assert np.all(s[:r] > 1e-3 * s[0]) and np.all(s[r:] < 1e-12 * s[0])
    summary = matrix_spectrum("w", b @ a)
    assert summary["numerical_rank"] == r and summary["rank90"] <= r
    assert summary["max_rank"] == 48 and summary["random_rank90"] >= 25


def test_dense_update_is_high_rank_like_its_random_reference():
    # Full fine-tuning's update spread over all directions: a dense Gaussian perturbation.
    delta = 1e-3 * torch.randn(64, 48, generator=torch.Generator().manual_seed(3))
    summary = matrix_spectrum("w", delta)
    assert summary["rank90"] >= 25  # far above LoRA's r = 2
    assert abs(summary["rank90"] - summary["random_rank90"]) <= 3
    assert summary["numerical_rank"] == 48


def test_random_reference():
    s = random_reference((64, 48), frobenius=2.5, seed=0)
    assert s.shape == (48,) and np.all(np.diff(s) <= 0)
    assert np.sqrt(np.sum(s**2)) == pytest.approx(2.5, rel=1e-12)
    s[:] = 0.0  # the cached spectrum behind it must not change
    again = random_reference((64, 48), frobenius=1.0, seed=0)
    assert np.sqrt(np.sum(again**2)) == pytest.approx(1.0, rel=1e-12)
    assert not np.allclose(again, random_reference((64, 48), frobenius=1.0, seed=1))
    assert np.all(random_reference((5, 3), frobenius=0.0) == 0)


def test_matrix_spectrum_fields():
    delta = np.diag([3.0, 1.0, 1.0, 0.0])[:, :3]  # 4 × 3, singular values 3, 1, 1
    summary = matrix_spectrum("layer", delta, energy=0.95)
    json.dumps(summary)  # plain Python values only
    assert summary["name"] == "layer" and summary["shape"] == [4, 3]
    assert summary["rank90"] == 3 and summary["energy"] == 0.95  # rank for 0.95, not 0.9
    assert summary["frobenius"] == pytest.approx(np.sqrt(11))
    assert summary["spectral_norm"] == pytest.approx(3.0)
    assert summary["stable_rank"] == pytest.approx(11 / 9)
    assert summary["singular_values"] == pytest.approx([3.0, 1.0, 1.0])
    assert matrix_spectrum("layer", delta)["rank90"] == 2


def test_weight_deltas_skips_what_cannot_be_compared():
    base = {
        "a": torch.ones(3, 2),
        "b": torch.ones(3, 2),
        "bias": torch.ones(3),
        "old": torch.ones(2, 2),
    }
    tuned = {
        "a": torch.full((3, 2), 1.5),
        "b": torch.ones(4, 2),
        "bias": torch.ones(3),
        "new": torch.ones(2, 2),
    }
    deltas = weight_deltas(base, tuned)
    assert list(deltas) == ["a"]
    assert deltas["a"].dtype == torch.float64 and torch.all(deltas["a"] == 0.5)


# --- real models -----------------------------------------------------------------------------


def test_unchanged_model_has_no_spectra():
    model = _bert()
    tuned = copy.deepcopy(model)
    result = update_spectra(model, tuned)
    assert result.spectra == [] and result.n_unchanged == len(_linear_names(model))
    with torch.no_grad():
        tuned.encoder.layer[1].output.dense.weight[0, 0] += 1.0
    result = update_spectra(model, tuned)
    assert [s["name"] for s in result.spectra] == ["encoder.layer.1.output.dense"]
    assert result.spectra[0]["numerical_rank"] == 1
    assert result.n_unchanged == len(_linear_names(model)) - 1 and result.unmatched == []


def test_lora_update_is_rank_r_on_exactly_the_adapted_layers():
    base, lora = _adapted(ADAPTERS["lora"]())
    assert set(effective_linear_weights(lora)) == _linear_names(base)
    result = update_spectra(base, lora)
    assert {s["name"] for s in result.spectra} == QV
    for s in result.spectra:
        assert s["numerical_rank"] == 2 and s["shape"] == [32, 32]
        assert s["random_rank90"] > 2 * s["rank90"]
    assert result.n_unchanged == len(_linear_names(base)) - len(QV) and result.unmatched == []


def test_effective_weights_leave_the_peft_model_unchanged():
    _, lora = _adapted(ADAPTERS["lora"]())
    inputs = _inputs()
    with torch.no_grad():
        before = lora(**inputs).last_hidden_state
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    weights = effective_linear_weights(lora)
    with torch.no_grad():
        weights["encoder.layer.0.attention.self.query"].add_(1.0)  # a copy, not the model's
        after = lora(**inputs).last_hidden_state
    assert torch.equal(before, after)
    assert state.keys() == lora.state_dict().keys()
    assert all(torch.equal(v, lora.state_dict()[k]) for k, v in state.items())
    query = lora.base_model.model.encoder.layer[0].attention.self.query
    assert isinstance(query, BaseTunerLayer) and not query.merged


@pytest.mark.parametrize("method", ["lora", "dora", "vera"])
def test_effective_weights_reproduce_the_forward_pass(method):
    train = ("lora_B", "lora_magnitude", "vera_lambda")
    base, peft_model = _adapted(ADAPTERS[method](), train=train)
    weights = effective_linear_weights(peft_model)
    assert all(w.dtype == torch.float32 and w.device.type == "cpu" for w in weights.values())
    # One layer: x W^T + b is what the adapted layer computes.
    layer = peft_model.base_model.model.encoder.layer[0].attention.self.query
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(4))
    w, bias = weights["encoder.layer.0.attention.self.query"], layer.get_base_layer().bias
    with torch.no_grad():
        torch.testing.assert_close(x @ w.T + bias, layer(x), rtol=1e-5, atol=1e-5)
        # The whole model: the plain base model with these weights gives the same output.
        plain = copy.deepcopy(base)
        for name, module in plain.named_modules():
            if name in weights:
                module.weight.copy_(weights[name])
        torch.testing.assert_close(
            plain(**_inputs()).last_hidden_state,
            peft_model(**_inputs()).last_hidden_state,
            rtol=1e-4,
            atol=1e-4,
        )


def test_dora_update_is_not_low_rank():
    # DoRA rescales each output row of W + BA to a learned magnitude, so ΔW = (D - I) W + D B A
    # is full rank as soon as the norms move, even with only B trained.
    base, dora = _adapted(ADAPTERS["dora"]())
    for s in update_spectra(base, dora).spectra:
        assert s["numerical_rank"] > 2


def test_disabled_adapters_are_not_applied():
    base, lora = _adapted(ADAPTERS["lora"]())
    with lora.disable_adapter():
        result = update_spectra(base, lora)
    assert result.spectra == [] and result.n_unchanged == len(_linear_names(base))


def test_modules_to_save_and_nested_peft_model():
    config = LoraConfig(r=2, target_modules=["query"], modules_to_save=["pooler.dense"])
    base, lora = _adapted(config)
    with torch.no_grad():
        lora.base_model.model.pooler.dense.modules_to_save["default"].weight.add_(1.0)
    # Inside a task model, as forgetlab trains it: names gain the `backbone.` prefix only.
    task = TaskModel(lora, hidden_size=32, num_labels={"rte": 2})
    plain_task = TaskModel(base, hidden_size=32, num_labels={"rte": 2})
    plain_task.heads.load_state_dict(task.heads.state_dict())
    assert set(effective_linear_weights(task)) == _linear_names(plain_task)
    result = update_spectra(plain_task, task)
    changed = {s["name"]: s["numerical_rank"] for s in result.spectra}
    expected = {f"backbone.encoder.layer.{i}.attention.self.query": 2 for i in (0, 1)}
    assert changed == {**expected, "backbone.pooler.dense": 1}
