"""The forgetting budget (`guard:`): it ends a stage at the first check over budget, `rollback`
keeps weights that score within budget, the run records where and why, --resume continues a
guarded run, a bad guard config is one line; on the encoder and the tiny decoder."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import interrupt_at_stage, needs_data, tiny_raw
from torch import nn

import forgetlab
from forgetlab.analyses.runs import open_run
from forgetlab.cli import main
from forgetlab.config import GuardConfig
from forgetlab.errors import ConfigError
from forgetlab.recipe.evaluate import eval_row
from forgetlab.recipe.guard import StageGuard
from forgetlab.recipe.prepare import PreparedTask, RunTasks
from forgetlab.recipe.train import make_accelerator

# --------------------------------------------------------------------------------------------
# the guard alone: a one-weight model whose watched score falls by 0.01 per training step


class OneWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.heads = nn.ModuleDict({"a": nn.Linear(1, 1)})
        nn.init.zeros_(self.heads["a"].bias)
        self.heads.requires_grad_(False)  # a frozen head is kept all the same


def fake_score(model: OneWeight):
    return lambda tasks: [{"score": 0.8 - float(model.w.detach())} for _ in tasks]


def _task(name: str) -> PreparedTask:
    return PreparedTask(name=name, kind="classification", data=None, train=None, eval=None,
                        majority=0.5)  # fmt: skip


def _drive(action: str, every: int, max_loss: float, total: int = 10):
    """Stage 2 of [a, b], watching a (scored 0.8 after stage 1): one 'training step' adds 0.01
    to w, so the loss at step k is 0.01·k. Returns the guard, the model and the steps taken."""
    guard = GuardConfig(watch=["a"], max_loss=max_loss, every=every, action=action)
    rows = [[{"score": 0.5}, {"score": 0.5}], [{"score": 0.8}, {"score": 0.5}]]
    state = {"seed": 1, "rows": rows}
    model = OneWeight()
    tasks = RunTasks(tasks=[_task("a"), _task("b")], sources=[], probes=[])
    hook = StageGuard(guard, state, 2, model, tasks, fake_score(model))
    steps = 0
    if not hook(0, total):
        for step in range(1, total + 1):
            with torch.no_grad():
                model.w += 0.01
                model.heads["a"].bias += 1.0
            steps = step
            if hook(step, total):
                break
    return hook, model, steps, state


@pytest.mark.parametrize(
    ("every", "max_loss", "crossed_at", "kept_at"),
    [(1, 0.025, 3, 2), (2, 0.025, 4, 2), (3, 0.045, 6, 3), (4, 0.0, 4, 0)],
)
def test_the_stage_ends_at_the_first_check_over_budget(every, max_loss, crossed_at, kept_at):
    for action in ("stop", "rollback"):
        hook, model, steps, state = _drive(action, every, max_loss)
        record = state["guard"]["stages"][0]
        assert steps == crossed_at, action
        assert record["crossed"]["step"] == crossed_at
        assert record["crossed"]["loss"] == pytest.approx(0.01 * crossed_at)
        assert record["reference"] == {"a": 0.8}
        checked = [c["step"] for c in record["checks"]]
        assert checked == list(range(0, crossed_at + 1, every))
        assert all(c["loss"] <= max_loss for c in record["checks"][:-1])
        if action == "stop":  # the weights stay where the crossing found them
            assert record["kept_step"] == crossed_at
            assert model.w.item() == pytest.approx(0.01 * crossed_at)
        else:  # the last check within budget, re-scored: within budget
            assert record["kept_step"] == kept_at
            assert model.w.item() == pytest.approx(0.01 * kept_at)
            assert 0.8 - fake_score(model)([None])[0]["score"] <= max_loss + 1e-9


def test_rollback_restores_heads_too():
    hook, model, _, _ = _drive("rollback", every=1, max_loss=0.025)
    # the head's bias moved by 1.0 per step: it is back at its step-2 value, 1.0 below where
    # the crossing at step 3 found it
    assert float(model.heads["a"].bias) == pytest.approx(2.0)
    _, stopped, _, _ = _drive("stop", every=1, max_loss=0.025)
    assert float(stopped.heads["a"].bias) == pytest.approx(3.0)


def test_a_budget_never_crossed_trains_the_whole_stage_and_checks_its_last_step():
    hook, model, steps, state = _drive("rollback", every=4, max_loss=0.5)
    record = state["guard"]["stages"][0]
    assert steps == 10 and record["crossed"] is None and record["kept_step"] is None
    assert [c["step"] for c in record["checks"]] == [0, 4, 8, 10]


def test_the_first_stage_of_a_sequence_watches_no_earlier_task():
    state = {"seed": 1, "rows": [[{"score": 0.5}, {"score": 0.5}]]}
    tasks = RunTasks(tasks=[_task("a"), _task("b")], sources=[], probes=[])
    model = OneWeight()
    hook = StageGuard(GuardConfig(watch=["a"]), state, 1, model, tasks, fake_score(model))
    assert not any(hook(step, 3) for step in range(4))
    assert state["guard"]["stages"][0]["watched"] == []


# --------------------------------------------------------------------------------------------
# bad configs: one line each


@pytest.mark.parametrize(
    ("guard", "needle"),
    [
        ({"watch": []}, "guard.watch must name"),
        ({"watch": ["rte", "rte"]}, "guard.watch repeats rte"),
        ({"watch": ["cola"]}, "guard.watch names cola, which is not a task"),
        ({"watch": ["sst2"]}, "the last task of the sequence"),
        ({"watch": ["rte"], "max_loss": -0.1}, "guard.max_loss=-0.1 must be >= 0"),
        ({"watch": ["rte"], "max_loss": float("nan")}, "guard.max_loss=nan must be a finite"),
        ({"watch": ["rte"], "every": 0}, "guard.every=0 must be > 0"),
        ({"watch": ["rte"], "action": "pause"}, "guard.action='pause' is not one of stop"),
        ({"watch": ["rte"], "reduce": "sum"}, "guard.reduce='sum' is not one of mean"),
        ({"watch": ["rte"], "budget": 1}, "unknown key config.guard.budget"),
    ],
)
def test_a_bad_guard_config_is_one_line(tmp_path, guard, needle):
    raw = tiny_raw(tmp_path / "run", "full")
    raw["guard"] = guard
    with pytest.raises(ConfigError) as e:
        forgetlab.load_config(raw=raw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_guard_may_watch_probes_and_source_tasks(tmp_path):
    raw = tiny_raw(tmp_path / "run", "full")
    raw.update(probes=["trec"], source_tasks=["mrpc"])
    raw["guard"] = {"watch": ["trec", "mrpc", "rte"], "action": "rollback"}
    assert forgetlab.load_config(raw=raw).guard.watch == ["trec", "mrpc", "rte"]


# --------------------------------------------------------------------------------------------
# end to end on MiniLM: full fine-tuning at a high rate loses the sst2 probe in a step or two


def guarded_raw(out, action: str) -> dict:
    raw = tiny_raw(out, "full", tasks=("rte", "mrpc"), lr=1e-3, max_steps=4, epochs=1)
    raw["data"] = {"max_train_examples": 48, "max_eval_examples": 32}
    raw["probes"] = ["sst2"]
    raw["source_tasks"] = ["trec"]  # scored with its linear-probe head on the base features
    raw["strategy"] = {"name": "replay", "examples_per_task": 8}  # the guard beside a strategy
    raw["guard"] = {"watch": ["sst2", "rte", "trec"], "max_loss": 0.0, "every": 1,
                    "action": action}  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("guarded")
    out = {}
    for action in ("stop", "rollback"):
        raw = guarded_raw(root / action, action)
        out[action] = forgetlab.run(forgetlab.load_config(raw=raw)).metrics
        out[action]["raw"] = raw
    return out


def _watched_loss(m: dict, stage: int) -> float:
    """The guard's loss (mean over its watched names) re-computed from the stage's row."""
    seed = m["per_seed"]["1"]
    record = seed["guard"]["stages"][stage - 1]
    row = dict(zip(m["tasks"], seed["accuracy_matrix"][stage]))
    row.update(zip(m["probes"], seed["probe_matrix"][stage]))
    # a source task is in no row: its score at the stage's last check (the weights kept)
    last = next(c for c in record["checks"] if c["step"] == (record["kept_step"] or 0))
    row.setdefault("trec", last["scores"]["trec"])
    losses = [record["reference"][n] - row[n] for n in record["watched"]]
    return sum(losses) / len(losses)


@needs_data
def test_an_encoder_run_stops_at_the_first_check_over_budget(guarded):
    for action, m in guarded.items():
        seed = m["per_seed"]["1"]
        records = seed["guard"]["stages"]
        assert [r["watched"] for r in records] == [["sst2", "trec"], ["rte", "sst2", "trec"]]
        assert records[0]["reference"]["sst2"] == seed["probe_matrix"][0][0]  # base score
        assert records[1]["reference"]["rte"] == seed["accuracy_matrix"][1][0]  # R[1][1]
        # a source task: scored on the base model when stage 1 starts, kept for stage 2
        trec = seed["guard"]["source_reference"]["trec"]
        assert records[0]["checks"][0]["scores"]["trec"] == trec
        assert records[0]["reference"]["trec"] == records[1]["reference"]["trec"] == trec
        for r, stats in zip(records, seed["stages"]):
            if r["crossed"] is None:
                assert all(c["loss"] <= 0 for c in r["checks"])
                continue
            over = [c["step"] for c in r["checks"] if c["loss"] > 0]
            assert r["crossed"]["step"] == over[0] == r["checks"][-1]["step"], action
            assert stats["steps"] == r["crossed"]["step"]  # training ended there
        assert m["guard_crossings"], f"{action}: the budget of 0 was never crossed"
        assert m["guard"]["action"] == action


@needs_data
def test_rollback_keeps_weights_within_budget_and_stop_does_not(guarded):
    stop, back = guarded["stop"], guarded["rollback"]
    first = stop["per_seed"]["1"]["guard"]["stages"][0]
    assert first["crossed"] is not None
    # stage 1 trained the same steps in both runs up to the crossing
    assert back["per_seed"]["1"]["guard"]["stages"][0]["crossed"] == first["crossed"]
    # stop: the row after the stage scores the crossing's weights, over budget
    assert _watched_loss(stop, 1) == pytest.approx(first["crossed"]["loss"])
    assert _watched_loss(stop, 1) > 0
    # so stop's stage 2 starts over budget: it trains no step, and its row is stage 1's
    second = stop["per_seed"]["1"]["guard"]["stages"][1]
    assert second["crossed"]["step"] == 0 and stop["per_seed"]["1"]["stages"][1]["steps"] == 0
    assert stop["accuracy_matrix"][2] == stop["accuracy_matrix"][1]
    # rollback: the kept weights, reloaded from the stage's checkpoint and scored anew (the
    # source task too), are within budget: the kept check's scores
    run = open_run(back["raw"]["output"]["dir"], device="cpu")
    accelerator = make_accelerator(run.config.training)
    pool = {t.name: t for t in [*run.tasks, *run.sources, *run.probes]}
    for stage in (1, 2):
        record = back["per_seed"]["1"]["guard"]["stages"][stage - 1]
        if record["crossed"] is None:
            continue
        kept = next(c for c in record["checks"] if c["step"] == record["kept_step"])
        todo = [pool[n] for n in record["watched"]]
        row = eval_row(run.model_at(1, stage), todo, run.config, accelerator, run.pad_id)
        losses = [record["reference"][t.name] - c["score"] for t, c in zip(todo, row)]
        assert sum(losses) / len(losses) <= 0
        assert sum(losses) / len(losses) == pytest.approx(kept["loss"])
        assert _watched_loss(back, stage) == pytest.approx(kept["loss"])


@needs_data
def test_compare_shows_where_the_guard_stopped(guarded, capsys):
    run_dir = guarded["stop"]["raw"]["output"]["dir"]
    assert main(["compare", run_dir]) == 0
    out = capsys.readouterr().out
    crossing = guarded["stop"]["guard_crossings"][0]
    assert f"seed 1 stage {crossing['stage']} ({crossing['task']}) stopped at step" in out


@needs_data
def test_resume_after_a_guarded_stage(guarded, tmp_path, monkeypatch):
    straight = guarded["stop"]
    raw = guarded_raw(tmp_path / "resumed", "stop")
    interrupt_at_stage(monkeypatch, raw, 2)
    path = tmp_path / "resumed.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--resume", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["guard_crossings"] == straight["guard_crossings"]
    assert resumed["per_seed"]["1"]["guard"] == straight["per_seed"]["1"]["guard"]


# --------------------------------------------------------------------------------------------
# the tiny decoder: an earlier task's held-out NLL (score −NLL: a rise is a loss)


@needs_data
def test_a_decoder_run_rolls_back_within_its_nll_budget(tmp_path):
    from test_causal_runs import decoder_raw
    from tiny_llama import tiny_llama

    llama = tiny_llama(tmp_path / "llama", tokenizer="tiny")
    raw = decoder_raw(llama, tmp_path / "run", "full", probes=["agnews_text"])
    # a rate this high makes the random tiny Llama overshoot: stage 2 raises gsm8k's NLL
    raw["training"].update(max_steps=4, lr=5e-2)
    raw["eval"]["every"] = 2  # the curve hook and the guard both watch the stage
    raw["guard"] = {"watch": ["gsm8k", "agnews_text"], "max_loss": 0.0, "every": 1,
                    "action": "rollback", "reduce": "max"}  # fmt: skip
    m = forgetlab.run(forgetlab.load_config(raw=raw)).metrics
    seed = m["per_seed"]["1"]
    assert m["metrics"] == ["neg_nll", "neg_nll"] and m["probe_metrics"] == ["neg_nll"]
    records = seed["guard"]["stages"]
    assert [r["watched"] for r in records] == [["agnews_text"], ["gsm8k", "agnews_text"]]
    for stage, record in enumerate(records, start=1):
        row = {"gsm8k": seed["accuracy_matrix"][stage][0]}
        row["agnews_text"] = seed["probe_matrix"][stage][0]
        worst = max(record["reference"][n] - row[n] for n in record["watched"])
        # rollback: whatever happened during the stage, its row is within budget
        assert worst <= 1e-6, (stage, record)
        assert all(math.isfinite(c["loss"]) for c in record["checks"])
    assert [c["stage"] for c in m["guard_crossings"]] == [2]
    # stage 1 ran its 4 steps (a curve point at step 2); stage 2 ended at step 1, before any
    assert [(c["stage"], c["step"]) for c in seed["curves"]] == [(1, 2)]
    assert [s["steps"] for s in seed["stages"]] == [4, 1]
    crossed = records[1]["crossed"]
    assert crossed["loss"] == max(crossed["losses"].values()) > 0  # reduce: max
