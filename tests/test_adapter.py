"""Bottleneck adapters (methods/adapter.py) on the packaged MiniLM and a tiny random Llama:
step 0 is the base model bit for bit, the adapters sit where each style puts them and compute
h + up(act(down(h))), only they and the heads train, and a checkpoint reloads exactly.

The train/save/resume row of each style is in tests/test_methods.py (encoder) and
tests/test_causal_methods.py (decoder)."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import tiny_llama
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.errors import ForgetlabError
from forgetlab.methods import get_method, method_config
from forgetlab.methods.adapter import CONFIG_FILE, WEIGHTS_FILE, adapters, load_adapters
from forgetlab.methods.base import count_parameters
from forgetlab.models import CausalTaskModel, TaskModel, load_backbone
from tests.conftest import one_torch_thread

HIDDEN, LAYERS = 384, 6  # MiniLM-L6
ADAPTED = ".bottleneck_adapter."  # in the name of every adapter parameter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _encoder(seed: int = 0) -> TaskModel:
    backbone, hidden = load_backbone(ModelConfig(max_length=32))
    torch.manual_seed(seed)
    return TaskModel(backbone, hidden, {"a": 2, "b": 3}).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama-adapter"))


def _decoder(folder) -> CausalTaskModel:
    from transformers import AutoModelForCausalLM

    backbone = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return CausalTaskModel(backbone, backbone.config.hidden_size).eval()


def _token_ids(*ids: int) -> dict[str, torch.Tensor]:
    """One unpadded sequence as decoder inputs."""
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids)).long()}


INPUTS = {
    "input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102], [101, 6659, 1010, 102, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
}


def _prepare(model, **extra) -> None:
    get_method("adapter").prepare(model, method_config({"name": "adapter", **extra}))


def _perturb(model: nn.Module, seed: int = 3) -> None:
    """Non-zero adapter weights everywhere (as after training), so that they matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters(model.backbone).values():
            for p in adapter.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
def test_step_zero_is_the_base_encoder_exactly(style):
    model = _encoder()
    with torch.no_grad():
        before = [model(t, **INPUTS) for t in ("a", "b")]
    _prepare(model, style=style)
    with torch.no_grad():
        after = [model(t, **INPUTS) for t in ("a", "b")]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    _perturb(model)  # and the adapters are really on the forward path
    with torch.no_grad():
        assert not torch.equal(model("a", **INPUTS), before[0])


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
def test_step_zero_is_the_base_decoder_exactly(llama_dir, style):
    model = _decoder(llama_dir)
    ids = _token_ids(1, 40, 41, 42, 43)
    with torch.no_grad():
        before = model(**ids)
    _prepare(model, style=style, reduction_factor=8)
    with torch.no_grad():
        assert torch.equal(model(**ids), before)
    found = adapters(model.backbone)
    suffixes = {"houlsby": {"self_attn.o_proj", "mlp.down_proj"}, "pfeiffer": {"mlp.down_proj"}}
    expected = {f"model.layers.{i}.{s}" for i in range(2) for s in suffixes[style]}
    assert set(found) == expected
    assert all(a.down.out_features == 32 // 8 for a in found.values())  # hidden 32


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({}, ["attention.output.dense", "output.dense"]),
        ({"style": "pfeiffer"}, ["output.dense"]),
        ({"layers": [1, 4]}, ["attention.output.dense", "output.dense"]),
        ({"style": "pfeiffer", "reduction_factor": 64, "activation": "tanh"}, ["output.dense"]),
    ],
)
def test_only_adapters_and_heads_train_and_the_count_follows_the_formula(extra, names):
    model = _encoder()
    _, total_before = count_parameters(model)
    _prepare(model, **extra)
    layers = extra.get("layers", range(LAYERS))
    expected = {f"encoder.layer.{i}.{n}" for i in layers for n in names}
    found = adapters(model.backbone)
    assert set(found) == expected
    b = HIDDEN // extra.get("reduction_factor", 16)
    per_adapter = 2 * HIDDEN * b + b + HIDDEN  # down (h·b + b) and up (b·h + h)
    heads = sum(p.numel() for p in model.heads.parameters())
    trainable, total = count_parameters(model)
    assert trainable == len(expected) * per_adapter + heads
    assert total == total_before + len(expected) * per_adapter
    for name, p in model.named_parameters():
        trains = ADAPTED in name or name.startswith("heads.")
        assert p.requires_grad == trains, name
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[extra.get("activation", "relu")]
    assert all(isinstance(a.act, act) for a in found.values())


def test_the_adapter_adds_its_bottleneck_mlp_to_the_projection_output():
    model = _encoder()
    _prepare(model, activation="gelu")
    _perturb(model)
    projection = model.backbone.encoder.layer[2].output.dense
    adapter = projection.bottleneck_adapter
    x = torch.randn(3, projection.in_features)
    with torch.no_grad():
        h = nn.functional.linear(x, projection.weight, projection.bias)
        expected = h + adapter.up(nn.functional.gelu(adapter.down(h)))
        torch.testing.assert_close(projection(x), expected, rtol=0, atol=1e-6)
    # the init: up-projection zero, down-projection normal with init_std
    fresh = _encoder()
    _prepare(fresh, init_std=0.1)
    first = next(iter(adapters(fresh.backbone).values()))
    assert torch.all(first.up.weight == 0) and torch.all(first.up.bias == 0)
    assert first.down.weight.std().item() == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("style", ["houlsby", "pfeiffer"])
def test_a_checkpoint_reloads_on_a_fresh_base_model_with_identical_outputs(tmp_path, style):
    model = _encoder()
    _prepare(model, style=style, layers=[0, 3, 5])
    _perturb(model)
    get_method("adapter").save_backbone(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE}
    with torch.no_grad():
        trained = model.backbone(**INPUTS).last_hidden_state
    fresh, _ = load_backbone(ModelConfig(max_length=32))
    load_adapters(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(**INPUTS).last_hidden_state, trained)
    assert all(p.requires_grad == (ADAPTED in n) for n, p in fresh.named_parameters())
    # --resume: onto a freshly prepared model with the same settings
    again = _encoder()
    _prepare(again, style=style, layers=[0, 3, 5])
    get_method("adapter").load_backbone(again, tmp_path)
    with torch.no_grad():
        assert torch.equal(again.backbone(**INPUTS).last_hidden_state, trained)


@pytest.mark.parametrize(
    "other", [{"style": "pfeiffer"}, {"reduction_factor": 8}, {"activation": "gelu"}]
)
def test_a_checkpoint_of_other_settings_is_refused(tmp_path, other):
    model = _encoder()
    _prepare(model)
    get_method("adapter").save_backbone(model, tmp_path)
    mismatched = _encoder()
    _prepare(mismatched, **other)
    with pytest.raises(ForgetlabError, match="adapter checkpoint"):
        get_method("adapter").load_backbone(mismatched, tmp_path)


def test_a_folder_without_adapters_is_refused(tmp_path):
    with pytest.raises(ForgetlabError, match=WEIGHTS_FILE):
        load_adapters(_encoder().backbone, tmp_path)


def test_an_architecture_without_known_projections_fails_clearly():
    from transformers import GPT2Config, GPT2Model

    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    model = CausalTaskModel(gpt2, 16)
    with pytest.raises(ForgetlabError, match="found no attention and FFN output projections"):
        _prepare(model)
    assert all(p.requires_grad for p in gpt2.parameters())  # left as it was


def test_preparing_twice_is_refused():
    model = _encoder()
    _prepare(model)
    with pytest.raises(ForgetlabError, match="already has bottleneck adapters"):
        _prepare(model)


def test_a_decoder_checkpoint_reloads_with_identical_logits(llama_dir, tmp_path):
    model = _decoder(llama_dir)
    _prepare(model, reduction_factor=4)
    _perturb(model)
    get_method("adapter").save_backbone(model, tmp_path)
    ids = _token_ids(1, 50, 51, 52)
    fresh = _decoder(llama_dir)
    get_method("adapter").load_backbone(fresh, tmp_path)  # a plain model: attached from JSON
    with torch.no_grad():
        assert torch.equal(fresh(**ids), model(**ids))
