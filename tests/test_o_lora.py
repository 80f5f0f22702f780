"""O-LoRA (methods/o_lora.py): the overlap penalty against a brute-force computation, which
adapter trains at each stage, checkpoints that hold several adapters, resume, the CLI and a
decoder. (Stage 1 alone, like every PEFT method, is a row of tests/test_methods.py.)

Kept tiny for 2 shared CPU cores: MiniLM at rank 4, a few examples, a few steps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from peft.tuners.lora import LoraLayer

from forgetlab import load_config, run
from forgetlab.cli import main
from forgetlab.config import ModelConfig
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method, method_config
from forgetlab.methods.o_lora import adapters
from forgetlab.models import TaskModel, load_backbone, load_tokenizer
from forgetlab.recipe.build import build_model, load_checkpoint, save_checkpoint
from forgetlab.recipe.prepare import prepare_tasks
from forgetlab.recipe.train import make_accelerator, train_stage
from tests.conftest import needs_data, one_torch_thread, tiny_raw
from tests.tiny_llama import tiny_llama

METHOD = get_method("o_lora")
STAGE_2 = {"default": False, "stage_2": True}  # which adapter trains at stage 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _prepared(**extra) -> tuple[TaskModel, object]:
    backbone, hidden = load_backbone(ModelConfig(max_length=32))
    torch.manual_seed(0)
    model = TaskModel(backbone, hidden, {"t": 2})
    mcfg = method_config({"name": "o_lora", "r": 4, **extra})
    METHOD.prepare(model, mcfg)
    return model, mcfg


def _lora_layers(model: TaskModel) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.backbone.named_modules() if isinstance(m, LoraLayer)}


def _brute_force(model: TaskModel, lam: float) -> tuple[float, dict[str, torch.Tensor]]:
    """lam * sum over layers, earlier adapters and entries (j, k) of |a_old[j] . a_new[k]|,
    one dot product at a time in float64, and its gradient with respect to each layer's
    newest A: lam * sum sign(a_old[j] . a_new[k]) a_old[j] into row k."""
    value, grads = 0.0, {}
    for name, layer in _lora_layers(model).items():
        names = list(layer.lora_A)
        a_new = layer.lora_A[names[-1]].weight.detach().double()
        grad = torch.zeros_like(a_new)
        for old in names[:-1]:
            a_old = layer.lora_A[old].weight.detach().double()
            for j in range(a_old.shape[0]):
                for k in range(a_new.shape[0]):
                    dot = float(torch.dot(a_old[j], a_new[k]))
                    value += abs(dot)
                    grad[k] += (1.0 if dot > 0 else -1.0) * a_old[j]
        grads[name] = lam * grad
    return lam * value, grads


def test_penalty_value_and_gradient_match_a_brute_force_computation():
    model, mcfg = _prepared(lambda_orth=0.3)
    METHOD.on_stage_start(model, mcfg, 1, "t")
    assert METHOD.penalty(model, mcfg) is None  # stage 1: nothing to be orthogonal to
    METHOD.on_stage_start(model, mcfg, 2, "t")
    METHOD.on_stage_start(model, mcfg, 3, "t")  # two earlier adapters
    assert adapters(model.backbone) == ["default", "stage_2", "stage_3"]
    penalty = METHOD.penalty(model, mcfg)
    expected, grads = _brute_force(model, 0.3)
    assert expected > 0
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    layers = _lora_layers(model)
    assert len(layers) == 12  # query and value in 6 layers
    for name, layer in layers.items():
        torch.testing.assert_close(
            layer.lora_A["stage_3"].weight.grad.double(), grads[name], rtol=1e-5, atol=1e-7
        )
        for old in ("default", "stage_2"):  # frozen: no gradient reaches them
            assert layer.lora_A[old].weight.grad is None
    # lambda_orth = 0: independent adapters, no penalty at all
    assert METHOD.penalty(model, replace(mcfg, lambda_orth=0.0)) is None


def test_each_stage_trains_only_its_own_adapter_and_the_heads():
    model, mcfg = _prepared()
    for stage in (1, 2, 3):
        METHOD.on_stage_start(model, mcfg, stage, "t")
        own = "default" if stage == 1 else f"stage_{stage}"
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        backbone = {n for n in trainable if n.startswith("backbone.")}
        assert backbone and all(f".{own}." in n and ".lora_" in n for n in backbone)
        assert len(backbone) == 24  # A and B in 12 layers
        assert {"heads.t.weight", "heads.t.bias"} <= trainable
        for layer in _lora_layers(model).values():  # every adapter so far stays in the model
            assert layer.active_adapters == adapters(model.backbone)[:stage]


def test_a_stage_without_the_earlier_adapters_is_refused():
    model, mcfg = _prepared()
    with pytest.raises(ForgetlabError, match="stage 3 needs the adapters of stages 1..2"):
        METHOD.on_stage_start(model, mcfg, 3, "t")


def _hidden(backbone, inputs) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(**inputs).last_hidden_state


@needs_data
def test_two_stages_keep_stage_1_frozen_and_a_checkpoint_reloads_both_adapters(tmp_path):
    raw = tiny_raw(Path("/nonexistent/run"), "o_lora", tasks=("sst2", "rte"), batch_size=8)
    raw["model"].update(max_length=32, head_dropout=0.0)
    raw["data"] = {"max_train_examples": 8, "max_eval_examples": 8}
    raw["method"]["r"] = 4
    raw["training"].update(max_steps=6, lr=2e-3)
    cfg = load_config(raw=raw)
    tokenizer = load_tokenizer(cfg.model)
    tasks = prepare_tasks(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id
    mcfg = method_config(cfg.method)
    model = build_model(cfg, tasks, METHOD, mcfg, seed=1, pad_id=pad_id)
    accelerator = make_accelerator(cfg.training)
    curves = {}
    for stage, task in enumerate(tasks, start=1):
        stats = train_stage(
            model,
            METHOD,
            mcfg,
            task.name,
            task.kind,
            task.train,
            cfg.training,
            accelerator,
            seed=1,
            stage=stage,
            pad_id=pad_id,
        )
        curves[stage] = stats.loss_curve
        if stage == 1:
            after_1 = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    after_2 = model.backbone.state_dict()
    stage_1 = [k for k in after_1 if ".lora_" in k]
    assert stage_1 and all(torch.equal(after_1[k], after_2[k]) for k in stage_1)  # frozen
    base = [k for k in after_1 if ".lora_" not in k]
    assert all(torch.equal(after_1[k], after_2[k]) for k in base)
    new = [k for k in after_2 if ".stage_2." in k]
    assert new and any(after_2[k].abs().sum() > 0 for k in new if "lora_B" in k)  # it trained
    # The penalty is logged (0 at stage 1, nothing to overlap) and training lowers it.
    assert all(point[2] == 0 for point in curves[1])
    penalty = [point[2] for point in curves[2]]
    assert penalty[0] > 0 and penalty[-1] < penalty[0], penalty

    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, METHOD, ckpt)
    assert (ckpt / "backbone" / "stage_2" / "adapter_model.safetensors").is_file()
    batch = KINDS["classification"].collate(tasks[1].train, list(range(8)), pad_id, "cpu")
    # A fresh model of the run, the checkpoint loaded: the same weights and outputs, bit for bit.
    fresh = build_model(cfg, tasks, METHOD, mcfg, seed=1, pad_id=pad_id)
    load_checkpoint(fresh, METHOD, ckpt)
    fresh_state = fresh.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key
    trainable = {n for n, p in fresh.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".stage_2." in n for n in trainable)  # as at the end of stage 2
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model("rte", **batch["inputs"]), fresh("rte", **batch["inputs"]))

    # Plain PEFT loads the same two adapters onto the original pretrained model.
    from peft import PeftModel

    pretrained, _ = load_backbone(cfg.model)
    loaded = PeftModel.from_pretrained(pretrained, str(ckpt / "backbone"))
    loaded.load_adapter(str(ckpt / "backbone" / "stage_2"), adapter_name="stage_2")
    loaded.base_model.set_adapter(["default", "stage_2"])
    inputs = batch["inputs"]
    torch.testing.assert_close(
        _hidden(loaded, inputs), _hidden(model.backbone, inputs), rtol=0, atol=1e-6
    )


def _write(tmp_path: Path, raw: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _three_tasks(out: Path, method: str) -> dict:
    raw = tiny_raw(out, method, tasks=("rte", "sst2", "mrpc"), batch_size=8, epochs=1)
    raw["model"]["max_length"] = 32
    raw["data"] = {"max_train_examples": 16, "max_eval_examples": 16}
    raw["training"]["lr"] = 2e-3  # tiny_raw's default depends on the method's name
    raw["output"]["checkpoints"] = "last"
    return raw


@needs_data
def test_cli_run_and_a_resume_after_two_stages_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    """Resuming after stage 2 rebuilds both adapters from the checkpoint and adds stage 3's
    as the uninterrupted run did."""
    # From the CLI: a LoRA config switched to O-LoRA by overrides.
    straight_dir = tmp_path / "straight"
    config = _write(tmp_path, _three_tasks(straight_dir, "lora"), "lora.yaml")
    args = ["run", config, "method.name=o_lora", "method.r=4", "training.max_steps=2", "--quiet"]
    assert main(args) == 0
    straight = json.loads((straight_dir / "seed-1" / "metrics.json").read_text())
    ckpt = straight_dir / "seed-1" / "checkpoints" / "stage-3-mrpc" / "backbone"
    assert (ckpt / "stage_2").is_dir() and (ckpt / "stage_3").is_dir()
    assert all(p[2] > 0 for s in straight["stages"][1:] for p in s["loss_curve"])

    raw = _three_tasks(tmp_path / "resumed", "o_lora")
    raw["method"]["r"] = 4
    raw["training"]["max_steps"] = 2
    import forgetlab.recipe.run as runner

    real = runner.train_stage

    def interrupted(*args, **kwargs):
        if kwargs["stage"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(raw=raw))
    state = json.loads((tmp_path / "resumed" / "seed-1" / "state.json").read_text())
    assert len(state["rows"]) == 3  # base + stages 1 and 2
    monkeypatch.setattr(runner, "train_stage", real)
    assert main(["run", _write(tmp_path, raw), "--resume", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "resumed" / "seed-1" / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert [s["loss_curve"] for s in resumed["stages"]] == [
        s["loss_curve"] for s in straight["stages"]
    ]


@needs_data
def test_o_lora_on_a_decoder(tmp_path):
    llama = tiny_llama(tmp_path / "llama", tokenizer="tiny")
    raw = {
        "name": "o_lora-decoder",
        "model": {"name": str(llama), "max_length": 32},
        "tasks": ["tinyshakespeare", "stdlib_code"],
        "data": {"max_train_examples": 16, "max_eval_examples": 8},
        "method": {"name": "o_lora", "r": 4},
        "training": {
            "lr": 1e-2,
            "epochs": 1,
            "batch_size": 8,
            "mixed_precision": "no",
            "progress_bar": False,
            "log_every": 1,
        },
        "output": {"dir": str(tmp_path / "run"), "store": str(tmp_path / "s.sqlite")},
    }
    m = run(load_config(raw=raw)).metrics
    R = m["accuracy_matrix"]
    assert R[2][1] != R[1][1]  # stage 2's adapter trained
    stages = m["per_seed"]["1"]["stages"]
    assert all(p[2] == 0 for p in stages[0]["loss_curve"])
    assert all(p[2] > 0 for p in stages[1]["loss_curve"])
    ckpt = tmp_path / "run" / "seed-1" / "checkpoints" / "stage-2-stdlib_code" / "backbone"
    assert (ckpt / "stage_2" / "adapter_model.safetensors").is_file()
