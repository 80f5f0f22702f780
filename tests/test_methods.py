"""The adaptation methods: one table row per adapter method, PEFT-based or our own bottleneck
adapters (train, save, reload on the original base model, resume), then each method's own
property, bad hyper-parameters, the PEFT features the methods rely on, and `forgetlab methods`.

Kept tiny for 2 shared CPU cores: 8 SST-2 examples of <= 32 tokens, one batch, 8 steps.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from forgetlab import load_config
from forgetlab.cli import main
from forgetlab.config import ModelConfig, TrainingConfig
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.methods import METHODS, get_method, method_config
from forgetlab.methods.adapter import load_adapters
from forgetlab.methods.base import Calibration, sample_calibration
from forgetlab.methods.lora import ADAPTER, ResidualLora, base_weight, lora_layers
from forgetlab.methods.lora_ga import gradient_factors
from forgetlab.models import TaskModel, load_backbone, load_tokenizer
from forgetlab.recipe.build import build_model, load_checkpoint, save_checkpoint
from forgetlab.recipe.prepare import prepare_tasks
from forgetlab.recipe.train import _optimizer, make_accelerator, train_stage
from tests.conftest import needs_data, one_torch_thread, tiny_raw

# Methods that save no adapter, only full weights (tested in test_run.py).
NOT_PEFT = {"full", "freeze"}
RESIDUAL = ("pissa", "olora", "milora", "init_ab", "lora_ga", "corda")
# Inits computed from data: prepare gets a Calibration (build_model draws it).
DATA_DRIVEN = ("lora_ga", "corda", "eva")
# Virtual tokens change the outputs from step 0 on (see methods/prompt_learning.py).
VIRTUAL_TOKENS = ("prefix", "prompt")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def env():
    """A tiny SST-2 setup shared by the table: config, tokenized data, one eval batch."""
    raw = tiny_raw(Path("/nonexistent/run"), "lora", tasks=("sst2",), epochs=8, batch_size=8)
    raw["model"].update(max_length=32, head_dropout=0.0)  # no head dropout: a clean loss curve
    raw["data"] = {"max_train_examples": 8, "max_eval_examples": 8}
    cfg = load_config(raw=raw)
    tokenizer = load_tokenizer(cfg.model)
    tasks = prepare_tasks(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id
    batch = KINDS["classification"].collate(tasks[0].train, list(range(8)), pad_id, "cpu")
    return SimpleNamespace(cfg=cfg, tasks=tasks, pad_id=pad_id, inputs=batch["inputs"])


class _Probe:
    """Stands in for a method in `build_model`: records the logits just before and just after
    the real `prepare`, i.e. what the runner's row 0 would score."""

    def __init__(self, method, inputs: dict) -> None:
        self.method, self.inputs = method, inputs
        self.needs_calibration = method.needs_calibration  # build_model asks the probe

    def _logits(self, model: TaskModel) -> torch.Tensor:
        with torch.no_grad():
            return model("sst2", **self.inputs)

    def prepare(self, model: TaskModel, cfg, calibration: Calibration | None = None) -> None:
        model.eval()
        self.before = self._logits(model)
        if calibration is None:
            self.method.prepare(model, cfg)
        else:
            self.method.prepare(model, cfg, calibration)
        self.after = self._logits(model)
        model.train()


def _hidden(backbone: nn.Module, inputs: dict) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(**inputs).last_hidden_state


def _check_adalora(model: TaskModel, mcfg, ckpt: Path) -> None:
    """The allocator ran from the optimizer hook: ranks pruned to the budget, pattern saved."""
    e = [p for n, p in model.backbone.named_parameters() if ".lora_E." in n]
    kept = sum(int((p != 0).sum()) for p in e)
    assert kept <= mcfg.target_r * len(e) < mcfg.init_r * len(e)
    pattern = json.loads((ckpt / "backbone" / "adapter_config.json").read_text())["rank_pattern"]
    assert pattern and sum(sum(v) for v in pattern.values()) == kept


# (method, method config, lr, extra check). Every adapter method in METHODS needs a row.
ROWS = [
    ("lora", {}, 2e-3, None),
    ("rslora", {}, 2e-3, None),
    ("dora", {}, 2e-3, None),
    ("loraplus", {}, 1e-3, None),
    ("gaussian", {}, 2e-3, None),
    ("init_ab", {}, 2e-3, None),
    ("pissa", {}, 1e-3, None),
    ("pissa", {"pissa_niter": 2}, 1e-3, None),
    ("olora", {}, 1e-3, None),
    ("milora", {}, 2e-3, None),
    ("vera", {"r": 64}, 1e-2, None),
    # total_step = the 8 steps of the stage, so that pruning finishes within it
    ("adalora", {"total_step": 8, "tinit": 2, "tfinal": 2, "deltaT": 1}, 2e-3, _check_adalora),
    # data-driven inits: calibrated on the row's 8 SST-2 examples (one batch)
    ("lora_ga", {}, 1e-3, None),
    ("corda", {}, 2e-3, None),
    ("corda", {"corda_method": "ipm"}, 1e-3, None),
    ("eva", {}, 2e-3, None),
    # stage 1 of O-LoRA is one LoRA; its later stages: tests/test_o_lora.py
    ("o_lora", {}, 2e-3, None),
    # bottleneck adapters: our own module and checkpoint format, not PEFT
    ("adapter", {}, 2e-3, None),
    ("adapter", {"style": "pfeiffer"}, 2e-3, None),
    # other PEFT families (own properties: tests/test_prompt_methods.py)
    ("prefix", {"num_virtual_tokens": 4}, 1e-2, None),
    ("prefix", {"prefix_projection": True, "encoder_hidden_size": 32}, 1e-2, None),
    ("prompt", {"num_virtual_tokens": 4}, 1e-2, None),
    ("ia3", {}, 1e-2, None),
]


def test_every_peft_method_has_a_row():
    assert set(METHODS) - NOT_PEFT <= {row[0] for row in ROWS}


@needs_data
@pytest.mark.parametrize(
    ("name", "extra", "lr", "check"),
    ROWS,
    ids=[r[0] + "".join(f"-{k}={v}" for k, v in r[1].items() if r[0] != "adalora") for r in ROWS],
)
def test_method_trains_saves_and_reloads(env, tmp_path, name, extra, lr, check):
    method = get_method(name)
    mcfg = method_config({"name": name, **extra})
    probe = _Probe(method, env.inputs)
    model = build_model(env.cfg, env.tasks, probe, mcfg, seed=1, pad_id=env.pad_id)

    # Row 0 is the pretrained model: preparing must not change the outputs.
    if name not in VIRTUAL_TOKENS:
        torch.testing.assert_close(probe.after, probe.before, rtol=0, atol=1e-4)

    trainable = {
        n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.requires_grad
    }
    assert trainable, "no backbone parameter trains"
    training = replace(env.cfg.training, lr=lr)
    stats = train_stage(
        model,
        method,
        mcfg,
        "sst2",
        "classification",
        env.tasks[0].train,
        training,
        make_accelerator(training),
        seed=1,
        stage=1,
        pad_id=env.pad_id,
    )
    curve = [point[1] for point in stats.loss_curve]
    assert stats.steps == 8
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2 - 0.01, curve
    after = dict(model.backbone.named_parameters())
    assert any(not torch.equal(after[n], t) for n, t in trainable.items()), "adapter unchanged"

    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, method, ckpt)
    if check is not None:
        check(model, mcfg, ckpt)

    # The checkpoint loads onto the *original* pretrained weights.
    loaded, tol = _reload_on_pretrained(env.cfg.model, method, mcfg, ckpt / "backbone")
    ours = _hidden(model.backbone, env.inputs)
    # PEFT's own prompt-tuning wrapper keeps the virtual positions in front; ours drops them.
    theirs = _hidden(loaded, env.inputs)[:, -ours.shape[1] :]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=tol)

    # --resume: loading into a freshly prepared model restores the trained one exactly.
    fresh = build_model(env.cfg, env.tasks, method, mcfg, seed=1, pad_id=env.pad_id)
    load_checkpoint(fresh, method, ckpt)
    fresh_state = fresh.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key


def _reload_on_pretrained(model_cfg, method, mcfg, folder: Path) -> tuple[nn.Module, float]:
    """(the pretrained backbone with the checkpoint's adapter, the tolerance its hidden states
    meet against the trained model's)."""
    pretrained, _ = load_backbone(model_cfg)
    if method.name == "adapter":  # safetensors + JSON; the same float ops: bit-identical
        return load_adapters(pretrained, folder), 0.0
    # A PEFT adapter.
    from peft import PeftModel

    config = json.loads((folder / "adapter_config.json").read_text())
    if isinstance(method, ResidualLora):  # converted to plain LoRA: [B, -B0] @ [A; A0]
        assert config["init_lora_weights"] is True and config["r"] == 2 * mcfg.r
    loaded = PeftModel.from_pretrained(pretrained, str(folder))
    # The residual conversion is fp32 math. AdaLoRA's reloaded adapter applies its rank
    # scaling in another order: up to ~2e-5 apart (transformers 5.24, PEFT 0.21.2), while
    # plain LoRA's reload stays within 1e-6.
    tol = 5e-4 if isinstance(method, ResidualLora) else 1e-4 if method.name == "adalora" else 1e-6
    return loaded, tol


# --------------------------------------------------------------------------------------
# each method's own property (no data needed: a TaskModel built directly)


def _task_model() -> TaskModel:
    backbone, hidden = load_backbone(ModelConfig(max_length=32))
    torch.manual_seed(0)
    return TaskModel(backbone, hidden, {"t": 2})


# A few fixed sentences stand in for task data in the calibration of data-driven inits.
SENTENCES = [
    "a gripping , beautifully acted film",
    "dull , predictable and far too long",
    "the plot never quite comes together , but the cast is wonderful",
    "one of the most moving films of the year",
    "i wanted to like it , yet i kept checking my watch",
    "sharp writing and a terrific score",
    "an ugly , mean-spirited mess",
    "it is funny , warm and surprisingly wise",
]


@functools.lru_cache(maxsize=1)
def _sentence_split() -> tuple[EncodedSplit, int]:
    tokenizer = load_tokenizer(ModelConfig(max_length=32))
    enc = tokenizer(SENTENCES, truncation=True, max_length=32)
    labels = [i % 2 for i in range(len(SENTENCES))]
    return EncodedSplit(enc["input_ids"], enc.get("token_type_ids"), labels), tokenizer.pad_token_id


def _calibration(n_batches: int = 1, batch_size: int = 8, seed: int = 0) -> Calibration:
    """Calibration batches for task "t" (`_task_model`'s head). EVA converges in one or two
    passes over one batch, but needs ~100 over two small ones (measured): one batch of 8."""
    split, pad_id = _sentence_split()
    return sample_calibration(
        split, "classification", "t", n_batches, batch_size, seed=seed, pad_id=pad_id
    )


def _prepared(name: str, calibration: Calibration | None = None, **extra):
    """(TaskModel, method config) prepared by `name`; data-driven inits get `calibration`
    (default: `_calibration()`)."""
    model = _task_model()
    mcfg = method_config({"name": name, **extra})
    method = get_method(name)
    if method.needs_calibration:
        method.prepare(model, mcfg, calibration or _calibration())
    else:
        method.prepare(model, mcfg)
    return model, mcfg


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("pissa", {}),
        ("pissa", {"pissa_niter": 4}),
        ("olora", {}),
        ("milora", {}),
        ("init_ab", {}),
        ("lora_ga", {}),
        ("corda", {}),
        ("corda", {"corda_method": "ipm"}),
    ],
)
def test_residual_inits_keep_base_plus_adapter_equal_to_the_pretrained_weights(name, extra):
    pretrained = dict(_task_model().backbone.named_modules())
    model, _ = _prepared(name, **extra)
    layers = lora_layers(model.backbone)
    assert len(layers) == 12  # query and value in 6 layers
    for layer_name, layer in layers.items():
        original = pretrained[layer_name.removeprefix("base_model.model.")].weight
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        assert a.abs().sum() > 0 and b.abs().sum() > 0  # both factors start non-zero
        w_res = base_weight(layer)
        assert not torch.allclose(w_res, original)  # the base weight really was rewritten
        torch.testing.assert_close(
            w_res + layer.scaling[ADAPTER] * b @ a, original, rtol=0, atol=1e-5
        )


def test_residual_checkpoint_from_another_init_is_refused(tmp_path):
    """Resuming restores A, B on top of this model's W_res: only valid for the same A0, B0."""
    model, _ = _prepared("init_ab")  # A0, B0 drawn with torch.manual_seed(0)
    method = get_method("init_ab")
    method.save_backbone(model, tmp_path / "backbone")
    torch.manual_seed(1)
    other = TaskModel(*load_backbone(ModelConfig(max_length=32)), {"t": 2})
    method.prepare(other, method_config({"name": "init_ab"}))
    with pytest.raises(ForgetlabError, match="different initialisation"):
        method.load_backbone(other, tmp_path / "backbone")
    method.load_backbone(model, tmp_path / "backbone")  # its own checkpoint loads


def test_milora_adapts_the_smallest_singular_components():
    pretrained = dict(_task_model().backbone.named_modules())
    model, mcfg = _prepared("milora", r=4)
    r = mcfg.r
    for layer_name, layer in list(lora_layers(model.backbone).items())[:2]:
        w = pretrained[layer_name.removeprefix("base_model.model.")].weight.detach()
        s = torch.linalg.svdvals(w)
        delta = layer.scaling[ADAPTER] * layer.lora_B[ADAPTER].weight @ layer.lora_A[ADAPTER].weight
        # The adapter is exactly the minor part: its r singular values are W's r smallest...
        torch.testing.assert_close(torch.linalg.svdvals(delta)[:r], s[-r:], rtol=1e-3, atol=1e-6)
        # ... and the frozen residual keeps W's principal spectrum.
        torch.testing.assert_close(
            torch.linalg.svdvals(base_weight(layer))[:-r], s[:-r], rtol=1e-4, atol=1e-5
        )


def _layer_inputs(model: TaskModel, cal: Calibration) -> dict[str, torch.Tensor]:
    """Each LoRA layer's inputs (non-padding tokens) over the calibration batches."""
    layers = lora_layers(model.backbone)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0]))
        for n, layer in layers.items()
    ]
    model.backbone.eval()
    with torch.no_grad():
        for batch in cal.batches:
            mask = batch["inputs"]["attention_mask"].bool()
            model.backbone(**batch["inputs"])
            for n in seen:
                seen[n][-1] = seen[n][-1][mask]
    for hook in hooks:
        hook.remove()
    return {n: torch.cat(x) for n, x in seen.items()}


def test_corda_kpm_adapts_what_the_calibration_inputs_use_least():
    """KPM's adapter holds the components of W·C with the smallest singular values: on the
    calibration inputs it contributes (almost) nothing, the frozen residual carries W's output.
    IPM's holds the largest: most of the output."""
    cal = _calibration(n_batches=2, batch_size=4)
    share = {}
    for mode in ("kpm", "ipm"):
        model, _ = _prepared("corda", calibration=cal, corda_method=mode)
        inputs = _layer_inputs(model, cal)
        share[mode] = []
        for layer_name, layer in lora_layers(model.backbone).items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            delta = (layer.scaling[ADAPTER] * b @ a).detach()
            x = inputs[layer_name]
            full = x @ (base_weight(layer) + delta).T
            share[mode].append(float((x @ delta.T).norm() / full.norm()))
    assert max(share["kpm"]) < 0.01, share["kpm"]
    assert min(share["ipm"]) > 0.3, share["ipm"]


def test_eva_starts_at_b_zero_from_orthonormal_activation_directions():
    pretrained = dict(_task_model().backbone.named_modules())
    model, mcfg = _prepared("eva")
    layers = lora_layers(model.backbone)
    ranks = {}
    for layer_name, layer in layers.items():
        original = pretrained[layer_name.removeprefix("base_model.model.")].weight
        assert torch.equal(layer.get_base_layer().weight, original)  # W untouched
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        assert torch.all(b == 0)
        # A's rows: right-singular vectors of the layer's inputs (orthonormal, whiten off)
        torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), rtol=0, atol=1e-4)
        ranks[layer_name] = a.shape[0]
        # alpha follows the rank: the scale alpha / rank stays lora_alpha / r
        assert layer.scaling[ADAPTER] == pytest.approx(mcfg.lora_alpha / mcfg.r)
    # The rank budget (r per targeted layer) is redistributed, not grown; a layer whose
    # rank went to 0 has no adapter left.
    assert sum(ranks.values()) == 12 * mcfg.r
    assert max(ranks.values()) <= round(mcfg.r * mcfg.rho)
    assert len(set(ranks.values())) > 1, ranks  # the data did move ranks around
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # PEFT's EVA pass switches modes; the model comes back in the mode it had (train).
    assert all(m.training for m in model.modules())


def test_eva_refuses_batches_too_small_for_its_svd():
    """PEFT would loop forever on batches with fewer rows than r*rho components."""
    with pytest.raises(ConfigError, match=r"round\(r\*rho\)=64"):
        _prepared("eva", calibration=_calibration(n_batches=2, batch_size=1), r=32)


def test_lora_ga_factors_are_the_gradients_singular_vectors_scaled_as_in_the_paper():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(48, 48))
    v, _ = torch.linalg.qr(torch.randn(32, 32))
    s = 10.0 * 0.7 ** torch.arange(32.0)  # decaying: the randomized SVD is exact enough
    grad = u[:, :32] * s @ v.T  # known SVD
    r, factor = 4, 48**0.25 / 16**0.5
    a, b = gradient_factors(grad, r, scaling=2.0, direction="ArB2r", scale="stable", gamma=16)
    # A0: V's first r vectors, B0: U's vectors r+1..2r, both times d_out^(1/4)/sqrt(gamma),
    # no singular values (up to each vector's sign).
    torch.testing.assert_close((a @ v[:, :r]).abs(), factor * torch.eye(r), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        (u[:, r : 2 * r].T @ b).abs(), factor * torch.eye(r), atol=1e-4, rtol=0
    )
    a2, b2 = gradient_factors(grad, r, scaling=2.0, direction="A2rBr", scale="gd", gamma=16)
    torch.testing.assert_close((a2 @ v[:, r : 2 * r]).abs(), torch.eye(r) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close((u[:, :r].T @ b2).abs(), torch.eye(r) / 2, atol=1e-4, rtol=0)


def test_lora_ga_leaves_no_gradient_behind_and_trains_the_adapter_and_heads():
    model, _ = _prepared("lora_ga", calibration=_calibration(n_batches=2, batch_size=4))
    assert all(p.grad is None for p in model.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("heads.") for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("backbone."))
    factor = 384**0.25 / 16**0.5  # the stable scale, MiniLM's d_out = 384
    for layer in lora_layers(model.backbone).values():
        assert not hasattr(layer.get_base_layer(), "_peft_loraga_grad")  # all consumed
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        eye = torch.eye(a.shape[0])
        torch.testing.assert_close(a @ a.T, factor**2 * eye, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.T @ b, factor**2 * eye, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_inits_refuse_to_prepare_without_calibration(name):
    with pytest.raises(ForgetlabError, match="needs calibration batches"):
        get_method(name).prepare(_task_model(), method_config({"name": name}))


def test_calibration_is_a_fixed_sample_per_seed():
    split, pad_id = _sentence_split()

    def ids(cal: Calibration) -> list[list[int]]:
        return [b["inputs"]["input_ids"].tolist() for b in cal.batches]

    cal = sample_calibration(split, "classification", "t", 3, 2, seed=5, pad_id=pad_id)
    assert len(cal.batches) == 3 and all(len(b["labels"]) == 2 for b in cal.batches)
    assert cal.task == "t" and cal.device == torch.device("cpu")
    assert cal.loss is KINDS["classification"].loss
    again = sample_calibration(split, "classification", "t", 3, 2, seed=5, pad_id=pad_id)
    other = sample_calibration(split, "classification", "t", 3, 2, seed=6, pad_id=pad_id)
    assert ids(again) == ids(cal) and ids(other) != ids(cal)
    # A split smaller than the request is used whole, each example once.
    whole = sample_calibration(split, "classification", "t", 8, 3, seed=5, pad_id=pad_id)
    assert [len(b["labels"]) for b in whole.batches] == [3, 3, 2]


class _Recorder:
    """A data-driven method stand-in that keeps the Calibration build_model gives it."""

    needs_calibration = True
    name = "recorder"

    def prepare(self, model: TaskModel, cfg, calibration: Calibration | None = None) -> None:
        self.calibration = calibration


@needs_data
def test_build_model_draws_the_calibration_from_the_named_task(env):
    recorder = _Recorder()
    mcfg = method_config({"name": "eva", "calibration_batches": 1, "calibration_batch_size": 4})
    build_model(env.cfg, env.tasks, recorder, mcfg, seed=1, pad_id=env.pad_id)
    cal = recorder.calibration
    assert cal.task == "sst2" and len(cal.batches) == 1 and len(cal.batches[0]["labels"]) == 4
    with pytest.raises(ConfigError, match="method.calibration_task='rte'"):
        bad = replace(mcfg, calibration_task="rte")
        build_model(env.cfg, env.tasks, recorder, bad, seed=1, pad_id=env.pad_id)


@needs_data
@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_inits_rebuild_identically_from_the_seed(env, name):
    """--resume builds the model again and loads the checkpoint onto it: the init (adapter,
    rewritten base weights, heads, EVA's ranks) must come back bit for bit."""
    method, mcfg = get_method(name), method_config({"name": name})
    first, second = (
        build_model(env.cfg, env.tasks, method, mcfg, seed=1, pad_id=env.pad_id) for _ in range(2)
    )
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_rslora_scales_by_alpha_over_sqrt_r():
    model, _ = _prepared("rslora", r=4, lora_alpha=8)
    lora, _ = _prepared("lora", r=4, lora_alpha=8)
    for layer in lora_layers(model.backbone).values():
        assert layer.scaling[ADAPTER] == pytest.approx(8 / math.sqrt(4))  # not 8 / 4
    assert all(layer.scaling[ADAPTER] == 2.0 for layer in lora_layers(lora.backbone).values())


def test_loraplus_gives_b_the_larger_learning_rate():
    model, mcfg = _prepared("loraplus", loraplus_lr_ratio=8)
    method = get_method("loraplus")
    optimizer = _optimizer(model, method, mcfg, TrainingConfig(lr=1e-3), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in lr_of) and any(n.startswith("heads.") for n in lr_of)
    for name, lr in lr_of.items():  # B: 8x; A and the heads: the base rate
        assert lr == pytest.approx(8e-3 if "lora_B" in name else 1e-3), name


def test_dora_and_vera_and_adalora_build_their_own_layers():
    dora, _ = _prepared("dora", r=4)
    assert any("lora_magnitude_vector" in n for n, _ in dora.backbone.named_parameters())
    vera, _ = _prepared("vera", r=32)
    trained = {n.split(".")[-2] for n, p in vera.backbone.named_parameters() if p.requires_grad}
    assert trained == {"vera_lambda_b", "vera_lambda_d"}  # only the scaling vectors train
    ada, _ = _prepared("adalora", total_step=10, tinit=1, tfinal=1)
    assert any(".lora_E." in n for n, _ in ada.backbone.named_parameters())
    # The global optimizer hooks leave other optimizers alone.
    other = torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([other], lr=0.1)
    other.grad = torch.ones(2)
    sgd.step()
    assert torch.equal(other.detach(), torch.full((2,), 0.9))


# --------------------------------------------------------------------------------------
# configs


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"name": "loraplus", "loraplus_lr_ratio": -1}, "loraplus_lr_ratio"),
        ({"name": "loraplus", "loraplus_lr_ratio": 0}, "loraplus_lr_ratio"),
        ({"name": "pissa", "pissa_niter": -1}, "pissa_niter"),
        ({"name": "pissa", "pissa_niter": "fast"}, "pissa_niter"),
        ({"name": "pissa", "niter": 4}, "niter"),
        ({"name": "rslora", "r": 0}, "r"),
        ({"name": "dora", "lora_alpha": -2}, "lora_alpha"),
        ({"name": "milora", "lora_dropout": 1.5}, "lora_dropout"),
        ({"name": "olora", "target_modules": []}, "target_modules"),
        ({"name": "init_ab", "b_std": 0}, "b_std"),
        ({"name": "init_ab", "a_std": -0.1}, "a_std"),
        ({"name": "gaussian", "r": -4}, "r"),
        ({"name": "vera", "d_initial": 0}, "d_initial"),
        ({"name": "vera", "vera_dropout": 1}, "vera_dropout"),
        ({"name": "adalora", "target_r": 16, "init_r": 8}, "target_r"),
        ({"name": "adalora", "total_step": 100, "tinit": 60, "tfinal": 40}, "total_step"),
        ({"name": "adalora", "beta1": 1.0}, "beta1"),
        ({"name": "adalora", "orth_reg_weight": -1}, "orth_reg_weight"),
        ({"name": "adalora", "r": 8}, "r"),  # AdaLoRA's rank keys are init_r / target_r
        ({"name": "lora_ga", "direction": "up"}, "direction"),
        ({"name": "lora_ga", "scale": "big"}, "scale"),
        ({"name": "lora_ga", "stable_gamma": 0}, "stable_gamma"),
        ({"name": "corda", "corda_method": "both"}, "corda_method"),
        ({"name": "corda", "calibration_batches": 0}, "calibration_batches"),
        ({"name": "eva", "calibration_batch_size": 0}, "calibration_batch_size"),
        ({"name": "eva", "calibration_task": 3}, "calibration_task"),
        ({"name": "eva", "rho": 0.5}, "rho"),
        ({"name": "eva", "tau": 0}, "tau"),
        ({"name": "o_lora", "lambda_orth": -0.5}, "lambda_orth"),
        ({"name": "adapter", "style": "parallel"}, "style"),
        ({"name": "adapter", "reduction_factor": 0}, "reduction_factor"),
        ({"name": "adapter", "activation": "swish"}, "activation"),
        ({"name": "adapter", "layers": []}, "layers"),
        ({"name": "adapter", "layers": [0, 0]}, "layers"),
        ({"name": "adapter", "layers": [-1]}, "layers"),
        ({"name": "adapter", "init_std": 0}, "init_std"),
        ({"name": "adapter", "r": 8}, "r"),
        ({"name": "prefix", "num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"name": "prefix", "encoder_hidden_size": 64}, "encoder_hidden_size"),
        (
            {"name": "prefix", "prefix_projection": True, "encoder_hidden_size": 0},
            "encoder_hidden_size",
        ),
        ({"name": "prefix", "r": 8}, "r"),
        ({"name": "prompt", "num_virtual_tokens": -1}, "num_virtual_tokens"),
        ({"name": "prompt", "prompt_tuning_init": "vocab"}, "prompt_tuning_init"),
        ({"name": "prompt", "prompt_tuning_init": "text"}, "prompt_tuning_init_text"),
        ({"name": "prompt", "prompt_tuning_init_text": "hi"}, "prompt_tuning_init_text"),
        ({"name": "ia3", "target_modules": []}, "target_modules"),
        (
            {"name": "ia3", "target_modules": ["key"], "feedforward_modules": ["dense"]},
            "feedforward_modules",
        ),
        ({"name": "ia3", "lora_alpha": 8}, "lora_alpha"),
    ],
)
def test_bad_hyper_parameters_name_the_key(section, key):
    with pytest.raises(ConfigError) as err:
        method_config(section)
    message = str(err.value)
    assert "\n" not in message and f"method.{key}" in message, message


@pytest.mark.parametrize(
    ("name", "extra", "key"),
    [
        ("milora", {"r": 500}, "method.r=500"),
        ("adalora", {"init_r": 500}, "method.init_r=500"),
        ("vera", {"target_modules": ["nope"]}, "method.target_modules"),
        ("lora_ga", {"r": 200}, "method.r=200"),  # LoRA-GA takes 2r singular vectors
        ("corda", {"r": 500}, "method.r=500"),
        ("eva", {"rho": 100}, "method.rho=100"),
        ("adapter", {"layers": [6]}, "method.layers"),  # MiniLM has layers 0-5
        ("adapter", {"reduction_factor": 500}, "method.reduction_factor=500"),
        ("ia3", {"target_modules": ["nope"]}, "method.target_modules"),
        ("prompt", {"num_virtual_tokens": 512}, "method.num_virtual_tokens=512"),
    ],
)
def test_impossible_ranks_and_targets_fail_at_prepare(name, extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _prepared(name, **extra)


# --------------------------------------------------------------------------------------
# the installed PEFT still has what the methods use


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x)


@pytest.mark.parametrize("init", ["gaussian", "pissa", "pissa_niter_4", "olora"])
def test_peft_still_has_the_inits_we_use(init):
    """LoraConfig accepts any string; only building the layer tells whether PEFT knows it."""
    import peft
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    toy = _Toy()
    original = toy.query.weight.detach().clone()
    try:
        model = get_peft_model(
            toy, LoraConfig(r=4, lora_alpha=8, target_modules=["query"], init_lora_weights=init)
        )
    except Exception as e:  # noqa: BLE001 - any failure means the init is gone or renamed
        pytest.fail(f"PEFT {peft.__version__} no longer supports init_lora_weights={init!r}: {e}")
    layer = model.base_model.model.query
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    if init == "gaussian":
        assert torch.all(b == 0) and a.std() > 0
    else:  # residual inits: base + adapter = W, with W rewritten
        assert not torch.equal(layer.base_layer.weight, original)
        torch.testing.assert_close(
            layer.base_layer.weight + layer.scaling[ADAPTER] * b @ a, original, rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("init", DATA_DRIVEN)
def test_peft_still_has_the_data_driven_inits_we_use(init):
    """The calls lora_ga.py, corda.py and eva.py make, on a toy layer: a PEFT that dropped or
    changed one fails here by name, not somewhere inside a run."""
    import peft
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    toy = _Toy()
    original = toy.query.weight.detach().clone()
    x = torch.randn(4, 6, 16)
    kwargs = {"r": 2, "lora_alpha": 4, "target_modules": ["query"]}
    try:
        if init == "lora_ga":  # only PEFT's gradient estimate is used (see lora_ga.py)
            from peft import preprocess_loraga

            config = LoraConfig(**kwargs, init_lora_weights="lora_ga", lora_ga_config={})
            batches = x.split(2)
            preprocess_loraga(
                toy, config, lambda: [toy(b).pow(2).mean().backward() for b in batches]
            )
            grad = toy.query._peft_loraga_grad
        elif init == "corda":
            from peft.tuners.lora.config import CordaConfig
            from peft.tuners.lora.corda import preprocess_corda

            corda = CordaConfig(corda_method="kpm")
            config = LoraConfig(**kwargs, init_lora_weights="corda", corda_config=corda)
            preprocess_corda(toy, config, run_model=lambda: [toy(row[None]) for row in x])
            model = get_peft_model(toy, config)
        else:
            from peft import initialize_lora_eva_weights
            from peft.tuners.lora.config import EvaConfig

            config = LoraConfig(**kwargs, init_lora_weights="eva", eva_config=EvaConfig(rho=1.0))
            model = get_peft_model(toy, config)
            initialize_lora_eva_weights(
                model,
                [{"x": x}],
                prepare_model_inputs_fn=None,
                prepare_layer_inputs_fn=None,
                show_progress_bar=False,
            )
    except Exception as e:  # noqa: BLE001 - any failure means the init is gone or changed
        pytest.fail(
            f"PEFT {peft.__version__} no longer supports init_lora_weights={init!r} as "
            f"forgetlab uses it: {type(e).__name__}: {e}"
        )
    if init == "lora_ga":  # the gradient averaged over the backward passes
        w = original.clone().requires_grad_(True)
        losses = [(b @ w.T + toy.query.bias.detach()).pow(2).mean() for b in x.split(2)]
        (expected,) = torch.autograd.grad(sum(losses) / len(losses), w)
        torch.testing.assert_close(grad, expected)
        assert toy.query.weight.grad is None and torch.equal(toy.query.weight, original)
        return
    layer = model.base_model.model.query
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    if init == "eva":  # B = 0, W untouched, A from the inputs' singular vectors
        assert torch.all(b == 0) and torch.equal(layer.base_layer.weight, original)
        torch.testing.assert_close(a @ a.T, torch.eye(2), rtol=0, atol=1e-4)
    else:  # residual inits: base + adapter = W, with W rewritten
        assert not torch.equal(layer.base_layer.weight, original)
        torch.testing.assert_close(
            layer.base_layer.weight + layer.scaling[ADAPTER] * b @ a, original, rtol=0, atol=1e-5
        )


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("lora_ga", "peft.preprocess_loraga"),
        ("corda", "peft.tuners.lora.corda"),
        ("corda", "attr"),  # PEFT's corda.py imports attrs without depending on it
        ("eva", "peft.initialize_lora_eva_weights"),
    ],
)
def test_a_peft_without_the_init_fails_naming_its_version(monkeypatch, name, missing):
    import peft

    if missing.startswith("peft.") and missing.count(".") == 1:
        monkeypatch.delattr(peft, missing.removeprefix("peft."))
    else:  # the module cannot be imported
        monkeypatch.delitem(sys.modules, "peft.tuners.lora.corda", raising=False)
        monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ForgetlabError, match=rf"PEFT {peft.__version__}") as err:
        _prepared(name)
    assert f"method {name} needs PEFT's" in str(err.value)
    if missing == "attr":
        assert "pip install attrs" in str(err.value)


def test_peft_still_has_the_features_we_use():
    import peft
    from peft import (
        AdaLoraConfig,
        LoraConfig,
        PeftModel,
        VeraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )
    from peft.tuners.adalora import AdaLoraModel
    from peft.tuners.adalora.layer import RankAllocator
    from peft.utils.other import transpose

    version = f"PEFT {peft.__version__}"
    save_params = inspect.signature(PeftModel.save_pretrained).parameters
    assert "path_initial_model_for_weight_conversion" in save_params, version
    assert callable(AdaLoraModel.update_and_allocate) and callable(RankAllocator.reset_ipt)
    assert callable(transpose) and callable(get_peft_model_state_dict)
    assert callable(set_peft_model_state_dict)
    rs = get_peft_model(
        _Toy(), LoraConfig(r=4, lora_alpha=8, target_modules=["query"], use_rslora=True)
    )
    assert rs.base_model.model.query.scaling[ADAPTER] == pytest.approx(4.0), version
    dora = get_peft_model(_Toy(), LoraConfig(r=4, target_modules=["query"], use_dora=True))
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters()), version
    get_peft_model(_Toy(), VeraConfig(r=4, target_modules=["query"]))
    ada = get_peft_model(
        _Toy(), AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["query"])
    )
    assert hasattr(ada.base_model, "rankallocator"), version


# --------------------------------------------------------------------------------------
# CLI


def test_cli_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    methods = text[: text.index("\nregularizers")].splitlines()[1:]
    listed = {line.split()[0] for line in methods if line[:3].strip() and line.startswith("  ")}
    assert listed == set(METHODS)
