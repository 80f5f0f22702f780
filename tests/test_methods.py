"""The adaptation methods: one table row per PEFT-based method (train, save, reload on the
original base model, resume), then each method's own property, bad hyper-parameters, the
PEFT features the methods rely on, and `forgetlab methods`.

Kept tiny for 2 shared CPU cores: 8 SST-2 examples of <= 32 tokens, one batch, 8 steps.
"""

from __future__ import annotations

import inspect
import json
import math
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
from forgetlab.kinds import KINDS
from forgetlab.methods import METHODS, get_method, method_config
from forgetlab.methods.lora import ADAPTER, ResidualLora, base_weight, lora_layers
from forgetlab.models import TaskModel, load_backbone, load_tokenizer
from forgetlab.runner import build_model, load_checkpoint, prepare_tasks, save_checkpoint
from forgetlab.train import _optimizer, make_accelerator, train_stage
from tests.conftest import needs_data, tiny_raw

# Methods that are not PEFT adapters (tested in test_run.py).
NOT_PEFT = {"full", "freeze"}
RESIDUAL = ("pissa", "olora", "milora", "init_ab")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On these 2 shared cores, 2 OpenMP threads under load make small SVDs and matmuls
    10-200x slower than 1 (measured); restore the setting for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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

    def _logits(self, model: TaskModel) -> torch.Tensor:
        with torch.no_grad():
            return model("sst2", **self.inputs)

    def prepare(self, model: TaskModel, cfg) -> None:
        model.eval()
        self.before = self._logits(model)
        self.method.prepare(model, cfg)
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


# (method, method config, lr, extra check). Every PEFT method in METHODS needs a row.
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
    model = build_model(env.cfg, env.tasks, probe, mcfg, seed=1)

    # Row 0 is the pretrained model: preparing must not change the outputs.
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

    # The checkpoint is a PEFT adapter for the *original* pretrained weights.
    from peft import PeftModel

    config = json.loads((ckpt / "backbone" / "adapter_config.json").read_text())
    if isinstance(method, ResidualLora):  # converted to plain LoRA: [B, -B0] @ [A; A0]
        assert config["init_lora_weights"] is True and config["r"] == 2 * mcfg.r
    pretrained, _ = load_backbone(env.cfg.model)
    loaded = PeftModel.from_pretrained(pretrained, str(ckpt / "backbone"))
    tol = 5e-4 if isinstance(method, ResidualLora) else 1e-6  # the conversion is fp32 math
    torch.testing.assert_close(
        _hidden(loaded, env.inputs), _hidden(model.backbone, env.inputs), rtol=0, atol=tol
    )

    # --resume: loading into a freshly prepared model restores the trained one exactly.
    fresh = build_model(env.cfg, env.tasks, method, mcfg, seed=1)
    load_checkpoint(fresh, method, ckpt)
    fresh_state = fresh.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key


# --------------------------------------------------------------------------------------
# each method's own property (no data needed: a TaskModel built directly)


def _task_model() -> TaskModel:
    backbone, hidden = load_backbone(ModelConfig(max_length=32))
    torch.manual_seed(0)
    return TaskModel(backbone, hidden, {"t": 2})


def _prepared(name: str, **extra) -> tuple[TaskModel, object]:
    model = _task_model()
    mcfg = method_config({"name": name, **extra})
    get_method(name).prepare(model, mcfg)
    return model, mcfg


@pytest.mark.parametrize(
    ("name", "extra"),
    [("pissa", {}), ("pissa", {"pissa_niter": 4}), ("olora", {}), ("milora", {}), ("init_ab", {})],
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
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert listed == set(METHODS)
