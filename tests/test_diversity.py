"""Generation diversity of a finished causal LM run (tiny random Llama): rows for the base model,
every saved stage and the final one, values in range, caching, near-greedy sampling that
repeats itself, the CLI, and the clear errors for encoder runs and runs without prompts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import needs_data, tiny_raw
from tiny_llama import tiny_llama

import forgetlab
from forgetlab.analyses import diversity
from forgetlab.analyses.runs import open_run
from forgetlab.cli import _default_analyses, main
from forgetlab.config import config_to_yaml
from forgetlab.errors import ForgetlabError

pytestmark = needs_data

SMALL = {"prompts": 3, "samples": 3, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """gsm8k, then tinyshakespeare (checkpoints of every stage, so stage 1 gets a row too):
    full fine-tuning at a high lr, so that the samples change visibly."""
    root = tmp_path_factory.mktemp("diversity")
    llama = tiny_llama(root, tokenizer="tiny")
    raw = {
        "name": "tiny-diversity",
        "model": {"name": str(llama), "max_length": 64},
        "tasks": ["gsm8k", "tinyshakespeare"],
        "probes": [],
        "data": {"max_train_examples": 16, "max_eval_examples": 8},
        "method": {"name": "full"},
        "eval": {"batch_size": 8, "max_new_tokens": 8},
        "training": {
            "lr": 1e-2,  # high: the model must change visibly in two epochs
            "epochs": 2,
            "batch_size": 8,
            "mixed_precision": "no",
            "progress_bar": False,
        },
        "output": {"dir": str(root / "run"), "store": str(root / "store.sqlite")},
    }
    forgetlab.run(forgetlab.load_config(raw=raw))
    return root / "run"


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory) -> Path:
    """A finished-looking encoder run directory (config + metrics; no training needed: the
    check refuses it before any checkpoint is read)."""
    out = tmp_path_factory.mktemp("encoder") / "run"
    out.mkdir()
    raw = tiny_raw(out, "lora", tasks=("rte",))
    raw["data"] = {"max_train_examples": 8, "max_eval_examples": 8}
    (out / "config.yaml").write_text(config_to_yaml(forgetlab.load_config(raw=raw)))
    metrics = {
        "version": forgetlab.__version__,
        "tasks": ["rte"],
        "seeds": [1],
        "accuracy_matrix": [[0.5], [0.6]],
        "per_seed": {"1": {"complete": True}},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def _in_range(row: dict) -> None:
    for key in ("distinct_1", "distinct_2", "distinct_1_per_prompt", "distinct_2_per_prompt"):
        assert 0 <= row[key] <= 1, (key, row)
    assert 0 <= row["self_bleu"] <= 100
    assert 0 <= row["distinct_answers"] <= SMALL["samples"]
    assert 0 <= row["empty_samples"] <= 1 and row["mean_words"] >= 0


def test_rows_for_base_every_saved_stage_and_final_are_in_range(run):
    r = forgetlab.analyze(run, ["diversity"], options={"diversity": SMALL})["diversity"]
    assert r["task"] == "gsm8k"
    assert (r["n_prompts"], r["k"], r["temperature"], r["max_new_tokens"]) == (3, 3, 0.8, 12)
    assert [(x["stage"], x["label"]) for x in r["rows"]] == [
        (0, "base"),
        (1, "after gsm8k"),
        (2, "after tinyshakespeare"),
    ]
    for row in r["rows"]:
        _in_range(row)
    assert [e["label"] for e in r["examples"]] == ["base", "after gsm8k", "after tinyshakespeare"]
    assert all(len(e["samples"]) == 2 and e["prompt"] for e in r["examples"])
    assert r["examples"][0]["samples"] != r["examples"][-1]["samples"]  # the model changed


def test_results_are_cached_and_other_options_recompute(run):
    forgetlab.analyze(run, ["diversity"], options={"diversity": SMALL})
    path = run / "analyses" / "diversity.json"
    before = path.stat().st_mtime_ns
    again = forgetlab.analyze(run, ["diversity"], options={"diversity": SMALL})["diversity"]
    assert path.stat().st_mtime_ns == before and again["temperature"] == 0.8  # cached
    hot = {**SMALL, "temperature": 1.5}
    other = forgetlab.analyze(run, ["diversity"], options={"diversity": hot})["diversity"]
    assert path.stat().st_mtime_ns > before
    assert other["temperature"] == 1.5 and json.loads(path.read_text())["temperature"] == 1.5


def test_near_greedy_sampling_repeats_itself(run):
    # temperature 1e-6 scales logit gaps by 10^6: every draw is the argmax, so a prompt's k
    # samples are identical: self-BLEU 100 and at most one distinct final answer
    cold = {**SMALL, "temperature": 1e-6}
    r = forgetlab.analyze(run, ["diversity"], options={"diversity": cold})["diversity"]
    for row, example in zip(r["rows"], r["examples"]):
        assert row["empty_samples"] == 0, row  # (identical empty texts score self-BLEU 0)
        assert row["self_bleu"] == pytest.approx(100.0), row
        assert row["distinct_answers"] <= 1
        assert example["samples"][0] == example["samples"][1]
    assert r["rows"][1]["distinct_answers"] == 1  # after gsm8k: every sample has a number


def test_cli_prints_the_table_and_defaults_to_diversity_only_for_causal_runs(
    run, encoder_run, capsys
):
    args = ["analyze", str(run), "--diversity", "--samples", "2", "--prompts", "2"]
    assert main([*args, "--temperature", "0.7", "--quiet", "--force"]) == 0
    out = capsys.readouterr().out
    assert "Generation diversity on gsm8k (2 held-out prompts × 2 samples" in out
    assert "after tinyshakespeare" in out and "self-BLEU" in out
    saved = json.loads((run / "analyses" / "diversity.json").read_text())
    assert saved["params"]["temperature"] == 0.7 and saved["k"] == 2
    # `forgetlab analyze RUN` without a flag: every analysis that applies to the run
    assert "diversity" in _default_analyses(str(run))
    assert _default_analyses(str(encoder_run)) == ["cka", "spectrum", "similarity"]


def test_an_encoder_run_is_refused_clearly(encoder_run, capsys):
    with pytest.raises(ForgetlabError, match="diversity needs a causal LM run"):
        forgetlab.analyze(encoder_run, ["diversity"])
    assert main(["analyze", str(encoder_run), "--diversity", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "diversity needs a causal LM run" in err and len(err.strip().splitlines()) == 1
    assert not (encoder_run / "analyses").exists()


def test_a_run_without_prompts_or_a_bad_option_is_refused(run):
    with pytest.raises(ForgetlabError, match="'tinyshakespeare' is of kind text, without prompts"):
        forgetlab.analyze(run, ["diversity"], options={"diversity": {"task": "tinyshakespeare"}})
    with pytest.raises(ForgetlabError, match="'nope' is not a task .* gsm8k, tinyshakespeare"):
        forgetlab.analyze(run, ["diversity"], options={"diversity": {"task": "nope"}})
    with pytest.raises(ForgetlabError, match="samples must be at least 2"):
        forgetlab.analyze(run, ["diversity"], options={"diversity": {"samples": 1}})
    with pytest.raises(ForgetlabError, match="temperature must be > 0"):
        forgetlab.analyze(run, ["diversity"], options={"diversity": {"temperature": 0.0}})
    opened = open_run(run)
    reordered = dataclasses.replace(
        opened, run_tasks=dataclasses.replace(opened.run_tasks, tasks=opened.tasks[::-1])
    )
    assert diversity.prompt_task(reordered, None).name == "gsm8k"  # the first with prompts
    text_only = dataclasses.replace(
        opened, run_tasks=dataclasses.replace(opened.run_tasks, tasks=opened.tasks[1:])
    )
    with pytest.raises(ForgetlabError, match=r"needs a prompt → response task .* tinyshakespeare"):
        diversity.check(text_only, 1, dict(diversity.DEFAULTS))
