"""Prefix tuning, prompt tuning and (IA)³: what trains, which output positions the heads and
losses read, step 0, save and reload on encoders and on a tiny Llama, and the one error for a
model type they cannot adapt. (Training runs: the tables of test_methods.py and
test_causal_methods.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import interrupt_at_stage, needs_data
from tiny_llama import tiny_llama

import forgetlab
from forgetlab.config import ModelConfig
from forgetlab.errors import ForgetlabError
from forgetlab.methods import get_method, method_config
from forgetlab.models import TaskModel, load_backbone, load_tokenizer
from forgetlab.models.causal_model import CausalTaskModel
from tests.conftest import one_torch_thread

N = 4  # virtual tokens
PAIRS = [("a gripping , beautifully acted film", "it is good"), ("dull", "far too long")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    """Two right-padded sentence pairs (token types 0 and 1) for MiniLM."""
    tokenizer = load_tokenizer(ModelConfig(max_length=32))
    first, second = zip(*PAIRS, strict=True)
    encoded = tokenizer(list(first), list(second), padding=True, return_tensors="pt")
    assert encoded["attention_mask"][1].sum() < encoded["attention_mask"].shape[1]  # padded
    return dict(encoded)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama-prompt"), tokenizer="tiny")


def _encoder(pooling: str = "auto") -> TaskModel:
    backbone, hidden = load_backbone(ModelConfig(max_length=32))
    torch.manual_seed(0)
    return TaskModel(backbone, hidden, {"t": 2}, pooling=pooling, head_dropout=0.0)


def _decoder(folder: Path) -> CausalTaskModel:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return CausalTaskModel(AutoModelForCausalLM.from_pretrained(folder), 32)


def _prepare(model, name: str, **extra):
    mcfg = method_config({"name": name, **extra})
    get_method(name).prepare(model, mcfg)
    model.eval()
    return model


def _llama_batch(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    texts = ["The quick brown fox jumps over the lazy dog.", "A cat sat"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


@torch.no_grad()
def _perturb(model) -> None:
    """Stand in for training: move every trainable backbone parameter off its init."""
    gen = torch.Generator().manual_seed(3)
    for p in model.backbone.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


# --------------------------------------------------------------------------------------
# what trains


PARAMETERS = {
    "prefix": {"prompt_encoder.default.embedding.weight"},
    "prompt": {"prompt_encoder.default.embedding.weight"},
}


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("prefix", {"num_virtual_tokens": N}),
        ("prefix", {"prefix_projection": True, "encoder_hidden_size": 16}),
        ("prompt", {"num_virtual_tokens": N}),
        ("ia3", {}),
    ],
)
def test_only_the_methods_own_parameters_and_the_heads_train(name, extra):
    model = _prepare(_encoder(), name, **extra)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {f"heads.t.{k}" for k in ("weight", "bias")}
    assert heads <= trainable
    backbone = {n.removeprefix("backbone.") for n in trainable - heads}
    if name == "ia3":
        # One vector per targeted layer of each of the 6 layers: key, value and the two
        # output.dense (attention and feed-forward), PEFT's BERT defaults.
        assert all(n.endswith(".ia3_l.default") for n in backbone) and len(backbone) == 4 * 6
    elif extra.get("prefix_projection"):
        mlp = {
            f"prompt_encoder.default.transform.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")
        }
        assert backbone == PARAMETERS[name] | mlp
        assert model.backbone.prompt_encoder.default.transform[0].out_features == 16
    else:
        assert backbone == PARAMETERS[name]
        assert model.backbone.prompt_encoder.default.embedding.weight.shape[0] == N


# --------------------------------------------------------------------------------------
# which positions the heads and losses read


def _peft_stock(name: str, base, **kwargs):
    """PEFT's own feature-extraction wrapper (it keeps the virtual positions)."""
    from peft import PeftModelForFeatureExtraction, PrefixTuningConfig, PromptTuningConfig

    config_cls = PromptTuningConfig if name == "prompt" else PrefixTuningConfig
    config = config_cls(task_type="FEATURE_EXTRACTION", num_virtual_tokens=N, **kwargs)
    return PeftModelForFeatureExtraction(base, config).eval()


@torch.no_grad()
def test_prompt_tuning_heads_pool_the_real_cls_token_and_the_real_tokens(inputs):
    single = {k: v for k, v in inputs.items() if k != "token_type_ids"}  # PEFT drops them
    outputs = {}
    for pooling in ("cls", "pooler", "mean"):
        model = _prepare(_encoder(pooling), "prompt", num_virtual_tokens=N)
        out = model.backbone(**single)
        assert out.last_hidden_state.shape[1] == single["input_ids"].shape[1]
        outputs[pooling] = (model, out, model.pool(out, single["attention_mask"]))
    model, out, cls = outputs["cls"]
    # The same prompt in PEFT's wrapper: positions 0..N-1 are virtual, N is the real [CLS].
    stock = _peft_stock("prompt", load_backbone(ModelConfig(max_length=32))[0])
    stock.prompt_encoder.default.load_state_dict(model.backbone.prompt_encoder.default.state_dict())
    full = stock(**single)
    torch.testing.assert_close(cls, full.last_hidden_state[:, N], rtol=0, atol=1e-6)
    assert not torch.allclose(cls, full.last_hidden_state[:, 0], atol=1e-3)
    pooler = model.backbone.base_model.pooler
    torch.testing.assert_close(outputs["pooler"][2], pooler(full.last_hidden_state[:, N:]))
    # mean: over the real, unpadded tokens only
    mask = single["attention_mask"].unsqueeze(-1).float()
    real = full.last_hidden_state[:, N:]
    torch.testing.assert_close(
        outputs["mean"][2], (real * mask).sum(1) / mask.sum(1), atol=1e-6, rtol=0
    )


@torch.no_grad()
def test_prefix_tuning_keeps_positions_and_the_token_types(inputs):
    model = _prepare(_encoder("cls"), "prefix", num_virtual_tokens=N)
    out = model.backbone(**inputs)
    assert out.last_hidden_state.shape[1] == inputs["input_ids"].shape[1]
    base = load_backbone(ModelConfig(max_length=32))[0].eval()
    assert not torch.allclose(out.last_hidden_state, base(**inputs).last_hidden_state, atol=1e-3)
    # The second segment's token types reach the model (PEFT's own wrapper drops them).
    zero = dict(inputs, token_type_ids=torch.zeros_like(inputs["token_type_ids"]))
    assert not torch.allclose(out.last_hidden_state, model.backbone(**zero).last_hidden_state)
    # Equal to PEFT's wrapper where token types do not matter.
    stock = _peft_stock("prefix", base)
    stock.prompt_encoder.default.load_state_dict(model.backbone.prompt_encoder.default.state_dict())
    torch.testing.assert_close(
        model.backbone(**zero).last_hidden_state,
        stock(**zero).last_hidden_state,
        rtol=0,
        atol=1e-6,
    )


@torch.no_grad()
@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_decoder_logits_are_one_row_per_real_token_and_ignore_padding(llama, name):
    from forgetlab.kinds.next_token import IGNORE, lm_loss

    model = _prepare(_decoder(llama), name, num_virtual_tokens=N)
    batch = _llama_batch(llama)
    logits = model(**batch)
    assert logits.shape[:2] == batch["input_ids"].shape
    # The short, right-padded row scores exactly as alone: the virtual tokens' mask lines up.
    n = int(batch["attention_mask"][1].sum())
    alone = model(
        input_ids=batch["input_ids"][1:, :n], attention_mask=batch["attention_mask"][1:, :n]
    )
    torch.testing.assert_close(logits[1:, :n], alone, rtol=0, atol=1e-5)
    # PEFT's own forward keeps the virtual rows in front (prompt tuning): ours are its last
    # rows, so row t still predicts token t+1 and the kinds' next-token loss reads real rows.
    from peft import PeftModelForCausalLM

    raw = PeftModelForCausalLM.forward(model.backbone, **batch).logits
    virtual = N if name == "prompt" else 0
    assert raw.shape[1] == batch["input_ids"].shape[1] + virtual
    assert torch.equal(logits, raw[:, virtual:])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    loss = lm_loss(model, "t", {"inputs": batch, "labels": labels})
    expected = torch.nn.functional.cross_entropy(
        raw[:, virtual:-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE
    )
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_decoder_generation_continues_the_trained_forward_or_is_refused(llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    batch = dict(tokenizer(["The quick brown fox", "A cat"], padding=True, return_tensors="pt"))
    model = _prepare(_decoder(llama), "prompt", num_virtual_tokens=N)
    _perturb(model)
    out = model.backbone.generate(
        **batch, max_new_tokens=1, do_sample=False, output_scores=True,
        return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    # PEFT's generate injects the prompt itself: its first step is our forward's last row.
    torch.testing.assert_close(out.scores[0], model(**batch)[:, -1], rtol=0, atol=1e-4)
    prefix = _prepare(_decoder(llama), "prefix", num_virtual_tokens=N)
    with pytest.raises(ForgetlabError, match="method prefix cannot generate text with a decoder"):
        prefix.backbone.generate(**batch, max_new_tokens=1)


# --------------------------------------------------------------------------------------
# step 0


@torch.no_grad()
def test_ia3_starts_as_the_pretrained_model(inputs, llama):
    encoder = _encoder()
    encoder.eval()
    before = encoder("t", **inputs)
    _prepare(encoder, "ia3")
    vectors = [p for n, p in encoder.backbone.named_parameters() if "ia3_l" in n]
    assert vectors and all(torch.all(v == 1) for v in vectors)
    assert torch.equal(encoder("t", **inputs), before)
    decoder = _decoder(llama).eval()
    batch = _llama_batch(llama)
    before = decoder(**batch)
    _prepare(decoder, "ia3")
    names = {n.split(".")[-3] for n, p in decoder.backbone.named_parameters() if p.requires_grad}
    assert names == {"k_proj", "v_proj", "down_proj"}  # PEFT's Llama defaults
    assert torch.equal(decoder(**batch), before)


def test_prompt_text_init_copies_the_words_embeddings():
    text = "is this review positive ?"
    model = _prepare(_encoder(), "prompt", num_virtual_tokens=N, prompt_tuning_init="text",
                     prompt_tuning_init_text=text)  # fmt: skip
    ids = load_tokenizer(ModelConfig(max_length=32))(text)["input_ids"][:N]
    words = model.backbone.base_model.embeddings.word_embeddings.weight[ids]
    torch.testing.assert_close(model.backbone.prompt_encoder.default.embedding.weight, words)


# --------------------------------------------------------------------------------------
# save, reload on the original base, resume


def _reloaded(path: Path, base):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(path)).eval()


@torch.no_grad()
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("prefix", {"num_virtual_tokens": N}),
        ("prefix", {"num_virtual_tokens": N, "prefix_projection": True}),
        ("prompt", {"num_virtual_tokens": N}),
        ("ia3", {}),
    ],
)
def test_decoder_checkpoint_reloads_in_peft_and_resumes(llama, tmp_path, name, extra):
    from transformers import AutoModelForCausalLM

    method = get_method(name)
    model = _prepare(_decoder(llama), name, **extra)
    _perturb(model)
    batch = _llama_batch(llama)
    logits = model(**batch)
    method.save_backbone(model, tmp_path / "backbone")
    config = json.loads((tmp_path / "backbone" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}.get(
        name, "IA3"
    )
    loaded = _reloaded(tmp_path / "backbone", AutoModelForCausalLM.from_pretrained(llama))
    theirs = loaded(**batch).logits[:, -logits.shape[1] :]  # PEFT's keeps virtual positions
    torch.testing.assert_close(theirs, logits, rtol=0, atol=1e-5)
    # --resume: a freshly prepared model gets the trained state back, bit for bit.
    fresh = _prepare(_decoder(llama), name, **extra)
    method.load_backbone(fresh, tmp_path / "backbone")
    state = fresh.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@needs_data
@pytest.mark.parametrize(
    "extra",
    [{"name": "prefix", "prefix_projection": True}, {"name": "prompt"}],
)
# ~25 s each; the default suite keeps the part a resume rests on: a decoder's saved
# prompt-learning state reloaded bit for bit (the test above)
@pytest.mark.slow
def test_an_interrupted_decoder_run_resumes_to_the_same_numbers(
    llama, tmp_path, monkeypatch, extra
):
    raw = {
        "model": {"name": str(llama), "max_length": 32},
        "tasks": ["tinyshakespeare", "stdlib_code"],
        "data": {"max_train_examples": 16, "max_eval_examples": 8},
        "method": {**extra, "num_virtual_tokens": N},
        "training": {"lr": 1e-2, "epochs": 1, "batch_size": 8, "mixed_precision": "no",
                     "progress_bar": False},
        "output": {"dir": str(tmp_path / "straight"), "store": str(tmp_path / "s.sqlite"),
                   "checkpoints": "last"},
    }  # fmt: skip
    straight = forgetlab.run(forgetlab.load_config(raw=raw)).metrics["accuracy_matrix"]
    raw["output"]["dir"] = str(tmp_path / "resumed")
    interrupt_at_stage(monkeypatch, raw, 2)
    resumed = forgetlab.run(forgetlab.load_config(raw=raw), resume=True).metrics
    assert resumed["accuracy_matrix"] == straight


def test_a_checkpoint_of_another_size_is_refused(tmp_path):
    method = get_method("prompt")
    method.save_backbone(_prepare(_encoder(), "prompt", num_virtual_tokens=N), tmp_path / "b")
    other = _prepare(_encoder(), "prompt", num_virtual_tokens=N + 1)
    with pytest.raises(ForgetlabError, match="does not match the model"):
        method.load_backbone(other, tmp_path / "b")


# --------------------------------------------------------------------------------------
# a model type they cannot adapt


def _tiny(model_type: str) -> TaskModel:
    """A random one-layer DistilBERT or MPNet (hidden 16) with a head."""
    from transformers import DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    if model_type == "distilbert":
        config = DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
        return TaskModel(DistilBertModel(config), 16, {"t": 2})
    config = MPNetConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    return TaskModel(MPNetModel(config), 16, {"t": 2})


@pytest.mark.parametrize(
    ("name", "model_type", "why"),
    [
        ("prefix", "mpnet", "its forward ignores the virtual tokens"),  # past_key_values dropped
        ("prefix", "distilbert", "token_dim"),  # PEFT cannot read its config
        ("prompt", "distilbert", "token_dim"),
        ("ia3", "distilbert", "set method.target_modules"),  # no (IA)³ defaults
    ],
)
def test_an_unsupported_model_type_gives_one_clear_error(name, model_type, why):
    with pytest.raises(ForgetlabError) as err:
        _prepare(_tiny(model_type), name)
    message = str(err.value)
    assert f"method {name} does not support model type {model_type!r}" in message, message
    assert why in message and "\n" not in message, message


@torch.no_grad()
def test_ia3_has_defaults_for_mpnet_and_starts_there_as_the_base():
    model = _tiny("mpnet").eval()
    ids = torch.tensor([[0, 5, 9, 2]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = model("t", **inputs)
    _prepare(model, "ia3")
    trained = {n.split(".")[-3] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained == {"k", "v", "dense"}  # attn.k, attn.v, output.dense
    assert torch.equal(model("t", **inputs), before)
