"""End to end on the packaged MiniLM: the CLI trains, evaluates, stores and resumes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from forgetlab import load_config, run
from forgetlab.cli import main
from forgetlab.methods import get_method, method_config
from forgetlab.models import load_tokenizer
from forgetlab.models.device import resolve_precision
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import prepare_tasks
from forgetlab.recipe.train import make_accelerator, train_stage
from tests.conftest import interrupt_at_stage, needs_data, tiny_raw

pytestmark = needs_data


def _write(tmp_path, raw) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One 2-task LoRA run from the CLI, shared by the assertions below; its precision is the
    shipped configs' `auto` (bf16 where this CPU has it natively, else fp32)."""
    tmp = tmp_path_factory.mktemp("lora")
    out = tmp / "run"
    raw = tiny_raw(out, "lora", mixed_precision="auto")
    assert main(["run", _write(tmp, raw), "--quiet"]) == 0
    return out


def test_cli_run_writes_a_complete_run_dir(lora_run):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    seed = json.loads((lora_run / "seed-1" / "metrics.json").read_text())
    assert metrics["tasks"] == ["rte", "sst2"]
    R = seed["accuracy_matrix"]
    assert len(R) == 3 and all(len(row) == 2 for row in R)  # (T+1) x T
    for key in ("acc", "initial_acc", "avg_forgetting", "bwt", "fwt", "learning"):
        assert key in seed
    assert seed["avg_forgetting"] == pytest.approx(R[1][0] - R[2][0])
    csv = (lora_run / "seed-1" / "accuracy_matrix.csv").read_text().splitlines()
    assert csv[0] == "stage,rte,sst2" and len(csv) == 6  # + majority_baseline, n_eval rows
    assert (lora_run / "config.yaml").is_file() and (lora_run / "run.log").is_file()
    ckpt = lora_run / "seed-1" / "checkpoints" / "stage-2-sst2"
    assert (ckpt / "backbone" / "adapter_model.safetensors").is_file()
    assert (ckpt / "heads.safetensors").is_file()
    state = json.loads((lora_run / "seed-1" / "state.json").read_text())
    assert state["precision"] == resolve_precision("auto", torch.device("cpu"))
    # recorded in the SQLite store
    with sqlite3.connect(lora_run.parent / "store.sqlite") as conn:
        rows = conn.execute("SELECT method, tasks FROM runs").fetchall()
    assert ("lora", '["rte", "sst2"]') in rows


def test_training_lowers_the_loss(lora_run):
    seed = json.loads((lora_run / "seed-1" / "metrics.json").read_text())
    for stage in seed["stages"]:
        curve = [point[1] for point in stage["loss_curve"]]
        assert len(curve) >= 4
        assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, stage["task"]


def test_compare_and_metrics_commands(lora_run, capsys):
    assert main(["compare", str(lora_run)]) == 0
    out = capsys.readouterr().out
    assert "lora" in out and "avg_forget" in out and "learned" in out
    csv = lora_run / "seed-1" / "accuracy_matrix.csv"
    assert main(["metrics", str(csv)]) == 0
    printed = json.loads(capsys.readouterr().out)
    seed = json.loads((lora_run / "seed-1" / "metrics.json").read_text())
    assert printed["avg_forgetting"] == pytest.approx(seed["avg_forgetting"])
    assert [f["learned"] for f in printed["learning"]] == [f["learned"] for f in seed["learning"]]


def test_existing_run_is_not_overwritten(lora_run, capsys):
    before = (lora_run / "metrics.json").read_bytes()
    assert main(["run", str(lora_run.parent / "config.yaml"), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (lora_run / "metrics.json").read_bytes() == before


def _train_one_stage(method_name: str):
    cfg = load_config(raw=tiny_raw(Path("/nonexistent/run"), method_name, tasks=("sst2",)))
    method = get_method(method_name)
    mcfg = method_config(cfg.method)
    tokenizer = load_tokenizer(cfg.model)
    tasks = prepare_tasks(cfg, tokenizer)
    model = build_model(cfg, tasks, method, mcfg, seed=1)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_stage(
        model,
        method,
        mcfg,
        "sst2",
        "classification",
        tasks[0].train,
        cfg.training,
        make_accelerator(cfg.training),
        seed=1,
        stage=1,
        pad_id=tokenizer.pad_token_id,
    )
    return model, before


def test_lora_leaves_base_weights_bit_identical_and_full_changes_them():
    model, before = _train_one_stage("lora")
    after = model.backbone.state_dict()
    base_keys = [k for k in before if "lora_" not in k]
    assert base_keys and all(torch.equal(before[k], after[k]) for k in base_keys)
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and any(after[k].abs().sum() > 0 for k in lora_b)  # the adapter did train

    model, before = _train_one_stage("full")
    after = model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    raw = tiny_raw(tmp_path / "straight", "full")
    straight = run(load_config(raw=raw)).seed_metrics[1]

    raw["output"]["dir"] = str(tmp_path / "resumed")
    interrupt_at_stage(monkeypatch, raw, 2)
    state = json.loads((tmp_path / "resumed" / "seed-1" / "state.json").read_text())
    assert len(state["rows"]) == 2  # base + stage 1 finished before the interruption

    config_path = _write(tmp_path, raw)
    assert main(["run", config_path, "--resume", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "resumed" / "seed-1" / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert [s["final_loss"] for s in resumed["stages"]] == [
        s["final_loss"] for s in straight["stages"]
    ]


def test_resume_with_a_different_config_is_refused(lora_run, capsys):
    raw = yaml.safe_load((lora_run / "config.yaml").read_text())
    raw["training"]["lr"] = 0.5
    path = lora_run.parent / "changed.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--resume", "--quiet"]) == 2
    assert "training.lr was" in capsys.readouterr().err


def test_variants_run_in_one_command(tmp_path, capsys):
    raw = tiny_raw(tmp_path / "cmp", "full", epochs=1)
    raw["variants"] = [
        {"name": "full", "overrides": []},
        {"name": "lora", "overrides": ["method.name=lora", "training.lr=2e-3"]},
    ]
    assert main(["run", _write(tmp_path, raw), "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "lora"):
        assert json.loads((tmp_path / "cmp" / name / "metrics.json").read_text())["method"] == name
    assert "avg_forget" in out  # the comparison table closes the output
