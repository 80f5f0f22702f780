"""Causal LMs through the same pipeline: every task kind on a tiny random Llama, from the CLI
and the API, with probes scored after every stage; and the bad inputs of LM data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_data
from tiny_llama import tiny_llama

import forgetlab
from forgetlab.cli import main
from forgetlab.errors import ConfigError, DataError, ForgetlabError
from forgetlab.kinds.instruction import encode_instruction
from forgetlab.tasks.base import InstructionExample

pytestmark = needs_data


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama"), tokenizer="tiny")


def decoder_raw(llama: Path, out: Path, method: str = "full", **extra) -> dict:
    raw = {
        "name": f"tiny-decoder-{method}",
        "model": {"name": str(llama), "max_length": 64},
        "tasks": ["gsm8k", "tinyshakespeare"],
        "probes": [
            "bb_strategyqa",
            "agnews_text",
            "gsm8k_gen",
            {"name": "humaneval", "max_eval_examples": 2},
        ],
        "data": {"max_train_examples": 16, "max_eval_examples": 8},
        "method": {"name": method},
        "eval": {"batch_size": 8, "max_new_tokens": 8, "sandbox_timeout_s": 2},
        "training": {
            "lr": 1e-3 if method == "full" else 5e-3,
            "epochs": 2,
            "batch_size": 8,
            "mixed_precision": "no",
            "progress_bar": False,
        },
        "output": {"dir": str(out), "store": str(out.parent / "store.sqlite")},
    }
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def runs(llama, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("decoder-runs")
    out = {}
    for method in ("full", "lora"):
        config = forgetlab.load_config(raw=decoder_raw(llama, root / method, method))
        out[method] = forgetlab.run(config).metrics
        out[method]["run_dir"] = str(root / method)
    return out


def test_every_kind_is_scored_in_every_row(runs):
    m = runs["full"]
    assert m["metrics"] == ["neg_nll", "neg_nll"]  # instruction and text: held-out −NLL
    assert m["probes"] == ["bb_strategyqa", "agnews_text", "gsm8k_gen", "humaneval"]
    assert m["probe_metrics"] == ["accuracy", "neg_nll", "exact_match", "pass@1"]
    P = m["probe_matrix"]
    assert len(P) == 3 and all(len(row) == 4 for row in P)  # base + 2 stages
    assert m["probe_baseline"][0] == pytest.approx(0.5)  # strategyqa: two choices
    seed = m["per_seed"]["1"]
    assert seed["probe_scores"][0][3]["n"] == 2  # two HumanEval problems, run in the sandbox


def test_training_lowers_the_held_out_loss_of_the_trained_task(runs):
    for method, m in runs.items():
        R = m["accuracy_matrix"]
        assert R[1][0] > R[0][0], method  # gsm8k response NLL fell after its stage
        assert R[2][1] > R[0][1], method  # so did tinyshakespeare's
        flags = m["per_seed"]["1"]["learning"]
        assert [f["test"] for f in flags] == [flags[0]["test"]] * 2
        assert "paired" in flags[0]["test"]
        assert flags[1]["learned"], method


def test_lora_on_a_decoder_adapts_every_linear_layer_but_the_head(runs, tmp_path):
    adapter = next((tmp_path.parent).glob("**/lora/seed-1/checkpoints/stage-2-*/backbone"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip


def test_cli_runs_a_decoder_config(llama, tmp_path, capsys):
    raw = decoder_raw(llama, tmp_path / "cli", "lora")
    raw["probes"] = ["bb_strategyqa"]
    raw["tasks"] = ["tinyshakespeare"]
    (tmp_path / "c.yaml").write_text(json.dumps(raw))  # JSON is YAML
    assert main(["run", str(tmp_path / "c.yaml"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Score matrix" in out and "neg_nll" in out and "Probes (never trained" in out


def test_a_probe_kind_cannot_be_trained(llama, tmp_path):
    raw = decoder_raw(llama, tmp_path / "bad", tasks=["bb_strategyqa"], probes=[])
    with pytest.raises(ConfigError, match="scored, not trained: list it under probes"):
        forgetlab.run(forgetlab.load_config(raw=raw))


@pytest.mark.parametrize(
    "rows, kind, message",
    [
        ([{"prompt": "2+2?", "response": ""}], "instruction", "empty"),
        ([{"question": "Sky?", "choices": ["blue"], "label": 0}], "multiple_choice", "choice"),
        ([{"question": "Sky?", "choices": ["a", "b"], "label": 5}], "multiple_choice", "label"),
    ],
    ids=["empty-response", "one-choice", "label-out-of-range"],
)
def test_bad_lm_files_end_in_one_message(llama, tmp_path, capsys, rows, kind, message):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = {"name": "mine", "type": "file", "kind": kind, "eval": str(data)}
    if kind == "instruction":
        task["train"] = str(data)
        raw = decoder_raw(llama, tmp_path / "run", tasks=[task], probes=[])
    else:
        raw = decoder_raw(llama, tmp_path / "run", tasks=["tinyshakespeare"], probes=[task])
    (tmp_path / "c.yaml").write_text(json.dumps(raw))
    assert main(["run", str(tmp_path / "c.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("forgetlab: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_long_prompts_are_truncated_or_rejected_and_counted(llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    examples = [
        InstructionExample("word " * 200, "the answer"),
        InstructionExample("short?", "yes"),
    ]
    cut = encode_instruction(examples, tok, 32, long_prompts="truncate")
    assert cut.n_truncated == 1 and len(cut) == 2 and max(cut.lengths) == 32
    assert cut.labels[0][-3:] == cut.input_ids[0][-3:]  # the response survives, whole
    dropped = encode_instruction(examples, tok, 32, long_prompts="reject")
    assert dropped.n_rejected == 1 and len(dropped) == 1
    with pytest.raises(DataError, match="longer than model.max_length"):
        encode_instruction(examples[:1], tok, 32, long_prompts="reject")


def test_a_gguf_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    raw = {"tasks": ["tinyshakespeare"], "model": {"name": str(bad), "type": "causal"}}
    with pytest.raises(ForgetlabError, match="notes.gguf"):
        forgetlab.run(forgetlab.load_config(raw={**raw, "output": {"dir": str(tmp_path / "o")}}))


def test_eval_every_records_learning_and_forgetting_curves(llama, tmp_path):
    from forgetlab.recipe.evaluate import eval_interval

    assert eval_interval(None, 10) is None
    assert eval_interval(3, 10) == 3 and eval_interval(0.25, 10) == 2  # round(2.5) = 2
    raw = decoder_raw(llama, tmp_path / "curves", "lora", probes=["agnews_text"])
    raw["tasks"] = ["tinyshakespeare"]
    raw["eval"]["every"] = 0.5
    m = forgetlab.run(forgetlab.load_config(raw=raw)).metrics["per_seed"]["1"]
    total = m["stages"][0]["steps"]
    assert [c["step"] for c in m["curves"]] == [total // 2]  # mid-stage; the end is the row
    (point,) = m["curves"]
    assert len(point["scores"]) == 2  # the task, then the probe
    # learning is under way mid-stage: between the base and the final score
    base, final = m["accuracy_matrix"][0][0], m["accuracy_matrix"][1][0]
    assert base < point["scores"][0] < final + 1e-6


def test_cli_eval_scores_a_runs_model_with_lm_eval_offline(runs, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run = runs["lora"]["run_dir"]
    args = ["eval", run, "--lm-eval", "bb_strategyqa", "--limit", "6"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "bb_strategyqa" in x)
    name, acc, acc_norm, n = line.split()
    assert name == "forgetlab_bb_strategyqa" and n == "6" and 0 <= float(acc) <= 1
    assert main(["eval", run, "--lm-eval", "no_such_task_anywhere"]) == 2
    assert "unknown lm-eval task" in capsys.readouterr().err


def test_every_analysis_runs_on_a_decoder_run(runs):
    run = runs["lora"]["run_dir"]
    results = forgetlab.analyze(run, ["cka", "spectrum", "similarity"])
    assert len(results["cka"]["layers"]) == 3  # embeddings + 2 decoder layers
    final = results["spectrum"]["stages"][-1]
    assert final["matrices"] and all(m["numerical_rank"] <= 8 for m in final["matrices"])
    assert results["similarity"]["tasks"] == ["gsm8k", "tinyshakespeare"]
    h = forgetlab.hessian(run, stage=1, examples=4, batch_size=4, iters=3)
    assert h["task"] == "tinyshakespeare" and h["results"][0]["n_params"] > 0


def test_a_decoder_sweep_puts_target_gain_and_source_loss_on_one_frontier(llama, tmp_path, capsys):
    """configs/smollm2_frontier.yaml's shape on the tiny Llama: full FT and LoRA over rates,
    objectives target_gain and source_loss. The answers' points are the objectives Optuna was
    told, and compare draws them on one frontier."""
    import yaml

    out = tmp_path / "frontier"
    raw = decoder_raw(llama, out, "lora", tasks=["gsm8k"], probes=["bb_strategyqa", "agnews_text"])
    raw["output"]["checkpoints"] = "none"
    raw["training"]["epochs"] = 1  # what is checked is bookkeeping, not how much is learned
    raw["sweep"] = {
        "methods": ["full", "lora"],
        "space": {"training.lr": [1.0e-3, 1.0e-2]},
        "per_method": {"full": {"training.lr": [1.0e-4, 1.0e-3]}},
        "seeds": [1],
        "objectives": ["target_gain", "source_loss"],
    }
    path = tmp_path / "frontier.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = forgetlab.sweep(path, quiet=True)
    assert len(result.complete) == 4
    answers = json.loads((out / "answers.json").read_text())
    assert (answers["learning"], answers["forgetting"]) == ("target_gain", "source_loss")
    by_run = {Path(p["run"]).name: p for p in answers["points"]}
    for trial in result.complete:
        point = by_run[Path(trial.run_dir).name]
        gain, loss = trial.values  # what Optuna was told: mean over seeds
        assert point["learning"]["mean"] == pytest.approx(gain)
        assert point["forgetting"]["mean"] == pytest.approx(loss)
        # source_loss: -mean change of the probes that count (agnews_text's NLL always does)
        m = json.loads((Path(trial.run_dir) / "metrics.json").read_text())
        assert loss == pytest.approx(m["per_seed"]["1"]["source_loss"])
    assert {p["method"] for p in answers["points"]} == {"full", "lora"}
    assert main(["compare", str(out)]) == 0  # on the sweep's objectives, as answers.json
    printed = capsys.readouterr().out
    assert "Learning–forgetting frontier" in printed and "learning (target_gain)" in printed
    # trial directories alone (no sweep to read objectives from): one task with probes, so
    # the answers default to target_gain / source_loss too; --learning overrides
    from forgetlab.answers import answers as answers_of

    assert answers_of(result.run_dirs)["forgetting"] == "source_loss"
    trials = [str(d) for d in result.run_dirs]
    assert main(["compare", *trials, "--learning", "initial_acc"]) == 0
    assert "learning (initial_acc)" in capsys.readouterr().out
    page = forgetlab.report([out], tmp_path / "report.html").read_text()
    assert 'id="answers"' in page and "learning (target_gain)" in page
