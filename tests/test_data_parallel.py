"""Data-parallel training for real: `forgetlab run --processes 2` (2 gloo workers on the CPU,
started by torchrun) gives the loss curves and accuracy matrix of one process at the same
global batch, and only rank 0 writes (one run directory, one store row).

Dropout is off (backbone, LoRA and heads) so that the two runs draw no random masks and can be
compared number for number; 15 training examples in batches of 8 make the second batch's
shards unequal (4 + 3), which the shard weighting must get right. A regulariser (the same
penalty on every rank, not weighted) and replay (the same draws on every rank, each counting
its share) join the loss; evaluation is sharded and gathered, and resuming over 2 processes
continues the run as if uninterrupted. A causal LM (slow) checks the token weighting of
token-mean losses. (No LwF here: at a stage's first step its
gradient on the earlier heads is zero up to float noise, which AdamW's normalisation turns
into updates of ±lr, so two equal-in-exact-arithmetic runs part there.)
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgetlab.cli import main
from forgetlab.kinds.base import EvalContext, Shards
from forgetlab.recipe.data_parallel import DataParallel
from tests.conftest import needs_data, tiny_raw
from tests.tiny_llama import tiny_llama


def _config(tmp_path: Path, out: Path) -> Path:
    raw = tiny_raw(out, "lora", epochs=1, batch_size=8)
    raw["method"]["lora_dropout"] = 0.0
    raw["model"].update(max_length=32, dropout=0.0, head_dropout=0.0)
    raw["data"] = {"max_train_examples": 15, "max_eval_examples": 16}
    raw["regularizer"] = {"name": "l2_init", "lambda": 0.1}
    raw["strategy"] = {"name": "replay", "examples_per_task": 6}  # every rank counts its share
    raw["eval"] = {"batch_size": 4}  # 4 eval batches per task: 2 for each rank
    raw["output"]["checkpoints"] = "all"  # stage 1's is what a resumption continues from
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _seed(run_dir: Path) -> tuple[dict, dict]:
    seed = run_dir / "seed-1"
    state = json.loads((seed / "state.json").read_text())
    return state, json.loads((seed / "metrics.json").read_text())


def _launch(config: Path, *args: str) -> subprocess.CompletedProcess:
    """`forgetlab run CONFIG ARGS --processes 2` in a fresh process; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "forgetlab", "run", str(config), *args, "--processes", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory) -> dict:
    """The same tiny LoRA run in one process and over 2 (the suite's one 2-process launch)."""
    root = tmp_path_factory.mktemp("dp")
    one, two = root / "one" / "run", root / "two" / "run"
    assert main(["run", str(_config(root, one)), "--quiet"]) == 0
    config = _config(root, two)
    done = _launch(config)
    return {"root": root, "one": one, "two": two, "config": config, "stdout": done.stdout}


def _same_stages(stages1: list[dict], stages2: list[dict], rel: float = 1e-5) -> None:
    assert len(stages1) == len(stages2)
    for a, b in zip(stages1, stages2):
        assert (a["steps"], a["examples"], a["tokens"]) == (b["steps"], b["examples"], b["tokens"])
        assert len(a["loss_curve"]) == len(b["loss_curve"]) >= 2
        for (step1, loss1, pen1), (step2, loss2, pen2) in zip(a["loss_curve"], b["loss_curve"]):
            assert step1 == step2
            assert loss2 == pytest.approx(loss1, rel=rel)
            assert pen2 == pytest.approx(pen1, rel=rel, abs=1e-8)


@needs_data
def test_two_processes_train_as_one(classifier_runs: dict) -> None:
    one, two = classifier_runs["one"], classifier_runs["two"]
    assert classifier_runs["stdout"].count("run directory:") == 1  # rank 0 alone reports
    (state1, metrics1), (state2, metrics2) = _seed(one), _seed(two)
    assert len(state2["stages"]) == 2
    _same_stages(state1["stages"], state2["stages"])
    assert state2["stages"][1]["loss_curve"][0][2] > 0  # the penalty and replay took part
    # evaluation sharded over the ranks and gathered: one process's rows, cell for cell
    assert metrics2["accuracy_matrix"] == metrics1["accuracy_matrix"]
    assert state2["rows"] == state1["rows"]

    # only rank 0 wrote: one run directory beside its store, one store row
    assert sorted(p.name for p in two.parent.iterdir()) == ["run", "store.sqlite"]
    with sqlite3.connect(two.parent / "store.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def _as_if_killed_after_stage_1(run_dir: Path) -> None:
    """What a run killed during stage 2 leaves: state.json up to stage 1's row and stage 1's
    checkpoint, no metrics yet."""
    state_path = run_dir / "seed-1" / "state.json"
    state = json.loads(state_path.read_text())
    state["rows"], state["stages"] = state["rows"][:2], state["stages"][:1]
    state_path.write_text(json.dumps(state))
    for name in ("seed-1/metrics.json", "seed-1/accuracy_matrix.csv", "metrics.json"):
        (run_dir / name).unlink()
    (stage_2,) = (run_dir / "seed-1" / "checkpoints").glob("stage-2-*")
    shutil.rmtree(stage_2)


@needs_data
@pytest.mark.slow
def test_resume_over_two_processes_equals_the_uninterrupted_run(classifier_runs: dict) -> None:
    """Rank 0 reads state.json and stage 1's checkpoint and hands both to rank 1; the
    resumed stage 2 and the final matrix are the uninterrupted 2-process run's."""
    two = classifier_runs["two"]
    resumed = classifier_runs["root"] / "resumed" / "run"
    shutil.copytree(two, resumed)
    _as_if_killed_after_stage_1(resumed)
    store = resumed.parent / "store.sqlite"
    _launch(classifier_runs["config"], f"output.store={store}", "--out", str(resumed), "--resume")
    (state2, metrics2), (state_r, metrics_r) = _seed(two), _seed(resumed)
    _same_stages(state2["stages"], state_r["stages"])
    assert state_r["rows"] == state2["rows"]
    assert metrics_r["accuracy_matrix"] == metrics2["accuracy_matrix"]
    assert "resumed after stage 1" in (resumed / "run.log").read_text()


def _decoder_config(tmp_path: Path, out: Path, llama: Path) -> Path:
    """A tiny Llama, full fine-tuning: an instruction task (responses of unequal lengths, so
    the shards' labelled tokens differ from their share of examples), then text with replay of
    the first; probes of the other LM kinds."""
    raw = tiny_raw(out, "full", tasks=("gsm8k", "tinyshakespeare"), epochs=1, batch_size=8)
    raw["model"] = {"name": str(llama), "max_length": 256}  # whole responses: unequal lengths
    raw["probes"] = ["agnews_text", "bb_strategyqa"]
    raw["data"] = {"max_train_examples": 15, "max_eval_examples": 12}
    raw["eval"] = {"batch_size": 4}
    raw["training"].update(lr=1e-3, mixed_precision="no")
    raw["strategy"] = {"name": "replay", "examples_per_task": 6, "ratio": 0.2}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@needs_data
@pytest.mark.slow
def test_causal_lm_over_two_processes_trains_as_one(tmp_path: Path) -> None:
    """Token-mean losses: each shard is weighted by its share of the batch's labelled tokens
    (replay by its share of the batch), so the loss curves and the −NLL matrix are one
    process's at the same global batch."""
    llama = tiny_llama(tmp_path)
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert main(["run", str(_decoder_config(tmp_path, one, llama)), "--quiet"]) == 0
    _launch(_decoder_config(tmp_path, two, llama))
    state1, state2 = _seed(one)[0], _seed(two)[0]
    _same_stages(state1["stages"], state2["stages"])
    assert state2["stages"][1]["loss_curve"][0][2] > 0  # replay took part
    for row1, row2 in zip(state1["rows"], state2["rows"]):
        for a, b in zip(row1, row2):
            assert b["metric"] == a["metric"]
            if a["metric"] == "accuracy":  # multiple choice
                assert b["score"] == a["score"]
            else:
                assert b["nll"] == pytest.approx(a["nll"], rel=1e-5)


def test_processes_refused_in_one_line(capsys) -> None:
    assert main(["run", "any.yaml", "--processes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "forgetlab: error: --processes 0: must be 1 or more"


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


def test_end_process_group_destroys_the_group_and_is_a_no_op_without_one(tmp_path) -> None:
    import torch.distributed as dist

    from forgetlab.recipe.data_parallel import end_process_group

    end_process_group()  # no group: nothing to do
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    end_process_group()
    assert not dist.is_initialized()
