"""Data-parallel training for real: `forgetlab run --processes 2` (2 gloo workers on the CPU,
started by torchrun) gives the loss curves and accuracy matrix of one process at the same
global batch, and only rank 0 writes (one run directory, one store row).

Dropout is off (backbone, LoRA and heads) so that the two runs draw no random masks and can be
compared number for number; 15 training examples in batches of 8 make the second batch's
shards unequal (4 + 3), which the shard weighting must get right. A regulariser (the same
penalty on every rank, not weighted) joins the loss. (No LwF here: at a stage's first step its
gradient on the earlier heads is zero up to float noise, which AdamW's normalisation turns
into updates of ±lr, so two equal-in-exact-arithmetic runs part there.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgetlab.cli import main
from forgetlab.kinds.base import EvalContext, Shards
from forgetlab.recipe.data_parallel import RESUME_REFUSED, DataParallel
from tests.conftest import needs_data, tiny_raw
from tests.tiny_llama import tiny_llama


def _config(tmp_path: Path, out: Path) -> Path:
    raw = tiny_raw(out, "lora", epochs=1, batch_size=8)
    raw["method"]["lora_dropout"] = 0.0
    raw["model"].update(max_length=32, dropout=0.0, head_dropout=0.0)
    raw["data"] = {"max_train_examples": 15, "max_eval_examples": 16}
    raw["regularizer"] = {"name": "l2_init", "lambda": 0.1}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _seed(run_dir: Path) -> tuple[dict, dict]:
    seed = run_dir / "seed-1"
    state = json.loads((seed / "state.json").read_text())
    return state, json.loads((seed / "metrics.json").read_text())


@needs_data
def test_two_processes_train_as_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert main(["run", str(_config(tmp_path, one)), "--quiet"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "forgetlab", "run", str(_config(tmp_path, two))]
    done = subprocess.run(
        [*cmd, "--processes", "2"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports

    (state1, metrics1), (state2, metrics2) = _seed(one), _seed(two)
    assert len(state2["stages"]) == 2
    for a, b in zip(state1["stages"], state2["stages"]):
        assert (a["steps"], a["examples"], a["tokens"]) == (b["steps"], b["examples"], b["tokens"])
        assert len(a["loss_curve"]) == len(b["loss_curve"]) == 2
        for (step1, loss1, pen1), (step2, loss2, pen2) in zip(a["loss_curve"], b["loss_curve"]):
            assert step1 == step2
            assert loss2 == pytest.approx(loss1, rel=1e-5)
            assert pen2 == pytest.approx(pen1, rel=1e-5, abs=1e-8)
    assert state2["stages"][1]["loss_curve"][0][2] > 0  # the penalties did take part
    assert metrics2["accuracy_matrix"] == metrics1["accuracy_matrix"]

    # only rank 0 wrote: one run directory beside its store, one store row
    assert sorted(p.name for p in two.parent.iterdir()) == ["run", "store.sqlite"]
    with sqlite3.connect(two.parent / "store.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def test_processes_refused_in_one_line(capsys) -> None:
    assert main(["run", "any.yaml", "--processes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "forgetlab: error: --processes 0: must be 1 or more"
    # before any worker starts (each would refuse, then torchrun would report at length)
    assert main(["run", "any.yaml", "--processes", "2", "--resume"]) == 2
    assert capsys.readouterr().err.strip() == f"forgetlab: error: {RESUME_REFUSED}"


@needs_data
def test_resume_refused_under_several_processes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = _config(tmp_path, tmp_path / "run")
    assert main(["run", str(config), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetlab: error: --resume runs in one process") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_shards_cover_the_batch_once() -> None:
    batch = list(range(7))
    shards = [DataParallel(rank, 3).shard(batch) for rank in range(3)]
    assert shards == [[0, 1], [2, 3], [4, 5, 6]]
    assert DataParallel(1, 2).shard([9]) == [9] and DataParallel(0, 2).shard([9]) == []
    # weights: each shard's mean, weighted and averaged over the ranks, is the batch's mean
    weights = [DataParallel(r, 3).weight(len(s), len(batch)) for r, s in enumerate(shards)]
    means = [sum(s) / len(s) for s in shards]
    assert sum(w * m for w, m in zip(weights, means)) / 3 == pytest.approx(sum(batch) / 7)


class _Stop(Exception):
    """Rank 1 has scored its part."""


class _Rank(Shards):
    """Rank `rank` of 2 in this one process: rank 1 scores its batches, keeps their outputs
    in `part` and stops; rank 0 joins its own part with rank 1's, as the gather would."""

    def __init__(self, rank: int, other: _Rank | None = None) -> None:
        self.rank, self.world, self.other, self.part = rank, 2, other, {}

    def join(self, outputs: dict) -> dict:
        self.part = outputs
        if self.rank:
            raise _Stop
        return {**outputs, **self.other.part}


def _scores_of_two_ranks(raw: dict) -> list[tuple[str, dict, dict, _Rank, _Rank]]:
    """Every scored task of `raw`'s run at init: (kind, one process's scores, the joined
    scores of two ranks, rank 0, rank 1)."""
    from forgetlab import load_config
    from forgetlab.models import load_tokenizer
    from forgetlab.recipe.build import build_run_model
    from forgetlab.recipe.evaluate import evaluate_task
    from forgetlab.recipe.prepare import pad_token_id, prepare_run
    from forgetlab.recipe.train import make_accelerator

    config = load_config(raw=raw)
    tokenizer = load_tokenizer(config.model)
    pad_id = pad_token_id(tokenizer)
    run_tasks = prepare_run(config, tokenizer)
    model = build_run_model(config, run_tasks, 1, pad_id=pad_id, device="cpu")
    accelerator = make_accelerator(config.training)
    out = []
    for t in run_tasks.scored:

        def score(shards: Shards, t=t) -> dict:
            ctx = EvalContext(config.eval.batch_size, accelerator, pad_id, tokenizer,
                              config.eval, t.data.extra_metrics, shards)  # fmt: skip
            return evaluate_task(model, t.name, t.kind, t.eval, ctx)

        one = score(Shards())
        second = _Rank(1)
        with pytest.raises(_Stop):
            score(second)
        first = _Rank(0, second)
        out.append((t.kind, one, score(first), first, second))
    return out


@needs_data
@pytest.mark.parametrize("model", ["encoder", "decoder"])
def test_sharded_evaluation_scores_as_one_process(tmp_path: Path, model: str) -> None:
    """Each rank scores every other eval batch of a task; the joined outputs give one
    process's scores exactly (whole batches, the same ones: the same numbers)."""
    if model == "encoder":  # MiniLM: accuracy, MCC (CoLA)
        raw = tiny_raw(tmp_path / "run", tasks=("rte", "cola"))
        raw["data"] = {"max_train_examples": 4, "max_eval_examples": 40}
    else:  # a tiny Llama: instruction and text −NLL, multiple choice by log-likelihood
        raw = tiny_raw(tmp_path / "run", tasks=("gsm8k",))
        raw["model"] = {"name": str(tiny_llama(tmp_path)), "max_length": 64}
        raw["probes"] = ["agnews_text", "bb_strategyqa"]
        raw["data"] = {"max_train_examples": 4, "max_eval_examples": 20}
    raw["eval"] = {"batch_size": 4}
    kinds = set()
    for kind, one, two, first, second in _scores_of_two_ranks(raw):
        kinds.add(kind)
        assert two == one, kind
        assert first.part and second.part and not first.part.keys() & second.part.keys()
        assert len(first.part) + len(second.part) == one["n"]
    expected = {"classification"} if model == "encoder" else {
        "instruction", "perplexity", "multiple_choice"}  # fmt: skip
    assert kinds == expected
