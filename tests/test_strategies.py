"""Strategies: the replay buffer and its loss against brute force, LwF's distillation term,
config validation, and a table-driven check that each strategy acts in a real run and
resumes exactly; replay combined with a regulariser and LoRA from the CLI."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from forgetlab import load_config, run
from forgetlab.cli import main
from forgetlab.errors import ConfigError
from forgetlab.kinds import EncodedSplit
from forgetlab.models.causal_model import CausalTaskModel
from forgetlab.models.task_model import TaskModel
from forgetlab.strategies import (
    STRATEGIES,
    EarlierTask,
    LwF,
    LwFConfig,
    Replay,
    ReplayConfig,
    StrategyContext,
    build_strategies,
)
from forgetlab.strategies.replay import build_buffer, replay_size, reservoir_sample
from tests.conftest import interrupt_at_stage, needs_data, tiny_raw
from tests.test_regularizers import CPU, OPS, PAD, _one_thread  # noqa: F401 (an autouse fixture)

# PEFT calls a transformers method deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def make_split(n: int, low: int, high: int, seed: int) -> EncodedSplit:
    """Rows of tokens in [low, high): splits of different ranges never share a row."""
    rng = random.Random(seed)
    ids = [[1] + [rng.randrange(low, high) for _ in range(rng.randrange(2, 7))] for _ in range(n)]
    return EncodedSplit(input_ids=ids, token_type_ids=None, labels=[r[1] % 2 for r in ids])


def tiny_encoder(shared: bool = False) -> TaskModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return TaskModel(BertModel(cfg), 16, {"a": 2, "b": 3, "c": 2}, shared_head=shared)


def ctx_for(model, stage: int, earlier, task="c", kind="classification", seed=1, batch=8):
    return StrategyContext(model, stage, task, kind, PAD, CPU, seed, batch, list(earlier))


EARLIER = [
    EarlierTask("a", "classification", make_split(30, 2, 40, 0)),
    EarlierTask("b", "classification", make_split(7, 40, 70, 1)),
]
CURRENT = make_split(12, 70, 100, 2)  # task c


# --------------------------------------------------------------------------------------
# replay: the buffer


def test_replay_size_follows_the_ratio():
    assert [replay_size(16, r) for r in (0.2, 0.5, 0.75)] == [4, 16, 48]
    assert replay_size(8, 0.2) == 2 and replay_size(1, 0.1) == 1  # at least one


@pytest.mark.parametrize("selection", ["random", "reservoir"])
def test_buffer_holds_only_earlier_tasks_examples_in_the_declared_count(selection):
    rep = Replay(ReplayConfig(examples_per_task=10, selection=selection))
    rep.on_stage_start(ctx_for(tiny_encoder(), 3, EARLIER))
    counts = Counter(pos for pos, _ in rep.buffer)
    if selection == "random":  # per task: examples_per_task, or all of a smaller task
        assert counts == {0: 10, 1: 7}
    else:  # one memory of examples_per_task × 2 slots over the 37 examples seen
        assert sum(counts.values()) == 20 and set(counts) <= {0, 1}
    assert len(set(rep.buffer)) == len(rep.buffer)  # no example twice
    current = {tuple(r) for r in CURRENT.input_ids}
    for pos, i in rep.buffer:
        row = tuple(EARLIER[pos].data.input_ids[i])  # a real row of that task's training split
        assert row not in current
    # stage 1 has no earlier task: an empty buffer, and no replayed loss
    first = Replay(ReplayConfig(selection=selection))
    first.on_stage_start(ctx_for(tiny_encoder(), 1, []))
    assert first.buffer == [] and first.loss(tiny_encoder(), {}, ctx_for(None, 1, [])) is None


def test_buffer_is_drawn_from_the_seed():
    def buffer(selection, seed, stage, earlier=EARLIER):
        return build_buffer(earlier, 5, selection, seed, stage)

    for selection in ("random", "reservoir"):
        assert buffer(selection, 1, 3) == buffer(selection, 1, 3)
        assert buffer(selection, 1, 3) != buffer(selection, 2, 3)
    # random: task a keeps the same examples at every later stage
    at_2 = buffer("random", 1, 2, EARLIER[:1])
    assert at_2 == [e for e in buffer("random", 1, 3) if e[0] == 0]


def test_reservoir_sample_is_uniform():
    """Algorithm R: every item of a stream of 20 is kept with probability 5/20."""
    hits = Counter()
    for trial in range(2000):
        hits.update(reservoir_sample(range(20), 5, random.Random(trial)))
    # 500 expected per item, binomial std ≈ 19: ±4 std
    assert all(abs(hits[i] - 500) < 80 for i in range(20)), hits


# --------------------------------------------------------------------------------------
# replay: the loss


@pytest.mark.parametrize("shared", [False, True], ids=["per_task", "shared"])
def test_replayed_examples_train_their_own_head_weighted_by_their_share(shared):
    model = tiny_encoder(shared).eval()  # eval: no dropout, so forwards repeat exactly
    rep = Replay(ReplayConfig(examples_per_task=10, ratio=0.5))
    ctx = ctx_for(model, 3, EARLIER, batch=8)
    rep.on_stage_start(ctx)
    batch = OPS.collate(CURRENT, list(range(6)), PAD, CPU)  # a short last batch: B = 6
    state = rep.rng.getstate()
    loss = rep.loss(model, batch, ctx)
    rep.rng.setstate(state)
    groups = rep.draw(replay_size(8, 0.5))
    assert sum(len(v) for v in groups.values()) == 8
    # brute force: each replayed example's cross-entropy on its own task's logits, over B
    ref = sum(
        F.cross_entropy(
            model(EARLIER[pos].name, **OPS.collate(EARLIER[pos].data, [i], PAD, CPU)["inputs"]),
            torch.tensor([EARLIER[pos].data.labels[i]]),
        )
        for pos, indices in groups.items()
        for i in indices
    )
    torch.testing.assert_close(loss, ref / 6)
    loss.backward()
    head = model.heads["shared" if shared else "a"].weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    if not shared:  # the current task's head takes no part in the replayed loss
        assert model.heads["c"].weight.grad is None


# --------------------------------------------------------------------------------------
# lwf


def kl_reference(old: torch.Tensor, new: torch.Tensor, t: float) -> torch.Tensor:
    p = torch.softmax(old / t, -1)
    return t * t * (p * (p.log() - torch.log_softmax(new / t, -1))).sum(-1).mean()


@pytest.mark.parametrize("shared", [False, True], ids=["per_task", "shared"])
def test_lwf_is_zero_at_the_previous_model_and_matches_brute_force(shared):
    model = tiny_encoder(shared).eval()
    lwf = LwF(LwFConfig(temperature=2.0, weight=0.5))
    ctx = ctx_for(model, 3, EARLIER)
    lwf.on_stage_start(ctx)
    batch = OPS.collate(CURRENT, list(range(8)), PAD, CPU)
    zero = lwf.loss(model, batch, ctx)
    assert float(zero.detach()) == 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(zero, params, allow_unused=True)
    assert all(g is None or float(g.abs().max()) < 1e-7 for g in grads)

    before = {t.name: model(t.name, **batch["inputs"]).detach() for t in EARLIER}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = {t.name: model(t.name, **batch["inputs"]) for t in EARLIER}
    ref = 0.5 * sum(kl_reference(before[n], after[n], 2.0) for n in before)
    got = lwf.loss(model, batch, ctx)
    assert float(got.detach()) > 0
    torch.testing.assert_close(got, ref)
    lwf.on_stage_end(ctx)
    assert lwf.previous is None
    # stage 1: nothing to distil
    lwf.on_stage_start(ctx_for(model, 1, []))
    assert lwf.loss(model, batch, ctx) is None


def test_lwf_on_a_decoder_distils_next_token_distributions_of_real_tokens():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    model = CausalTaskModel(LlamaForCausalLM(cfg), 16).eval()
    earlier = [EarlierTask("x", "text", None), EarlierTask("y", "instruction", None)]
    ctx = ctx_for(model, 3, earlier, task="z", kind="text")
    lwf = LwF(LwFConfig(temperature=1.0))
    lwf.on_stage_start(ctx)
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    batch = {"inputs": {"input_ids": ids, "attention_mask": mask}}
    assert float(lwf.loss(model, batch, ctx).detach()) == 0.0
    old = model(None, **batch["inputs"]).detach()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    new = model(None, **batch["inputs"])
    keep = mask.bool()  # padded positions do not count; one head, counted once
    ref = kl_reference(old[keep], new[keep], 1.0)
    torch.testing.assert_close(lwf.loss(model, batch, ctx), ref)


# --------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"name": "replay", "ratio": 1.0}, "strategy.ratio"),
        ({"name": "replay", "ratio": 0}, "strategy.ratio"),
        ({"name": "replay", "examples_per_task": 0}, "strategy.examples_per_task"),
        ({"name": "replay", "selection": "ring"}, "strategy.selection"),
        ({"name": "replay", "buffer": 5}, "strategy.buffer"),
        ({"name": "lwf", "temperature": 0}, "strategy.temperature"),
        ({"name": "lwf", "weight": -1}, "strategy.weight"),
        ({"name": "lwf", "ratio": 0.2}, "strategy.ratio"),
        ({"name": "gem"}, "strategy.name"),
        ([{"name": "replay"}, {"name": "replay"}], "'replay' twice"),
        ([{"name": "replay"}, "lwf"], "strategy must be a mapping"),
    ],
)
def test_a_bad_strategy_is_one_config_error_naming_the_key(value, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(raw={"tasks": ["rte"], "strategy": value})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["rte"], "strategy": value}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err


def test_strategy_forms_and_defaults():
    assert build_strategies(None) == [] and build_strategies({"name": "none"}) == []
    (rep,) = build_strategies({"name": "replay"})
    assert (rep.cfg.examples_per_task, rep.cfg.selection, rep.cfg.ratio) == (50, "random", 0.2)
    both = build_strategies([{"name": "replay", "ratio": 0.5}, {"name": "lwf"}])
    assert [s.name for s in both] == ["replay", "lwf"] and both[0].cfg.ratio == 0.5
    assert (both[1].cfg.temperature, both[1].cfg.weight) == (2.0, 1.0)
    config = load_config(raw={"tasks": ["rte"]}, overrides=["strategy.name=lwf"])
    assert config.strategy == {"name": "lwf"}


# --------------------------------------------------------------------------------------
# every strategy in a real run: it acts from stage 2 on, and --resume repeats it exactly

ROWS = [{"name": "replay", "examples_per_task": 8, "ratio": 0.5}, {"name": "lwf"}]


def test_every_registered_strategy_has_a_row():
    assert {row["name"] for row in ROWS} == set(STRATEGIES)


def tiny_run_raw(out, **extra) -> dict:
    """LoRA on RTE then SST-2, 16 examples each: two steps per stage."""
    raw = tiny_raw(out, "lora", epochs=1, batch_size=8)
    raw["model"]["max_length"] = 32
    raw["data"] = {"max_train_examples": 16, "max_eval_examples": 16}
    return {**raw, "name": out.name, **extra}


@needs_data
@pytest.mark.parametrize("section", ROWS, ids=lambda s: s["name"])
def test_strategy_acts_and_resume_repeats_the_uninterrupted_run(section, tmp_path, monkeypatch):
    raw = tiny_run_raw(tmp_path / "straight", strategy=section)
    straight = run(load_config(raw=raw)).seed_metrics[1]
    extra = [[p[2] for p in s["loss_curve"]] for s in straight["stages"]]
    assert all(x == 0 for x in extra[0]) and all(x > 0 for x in extra[1])

    raw["output"]["dir"] = str(tmp_path / "resumed")
    interrupt_at_stage(monkeypatch, raw, 2)
    resumed = run(load_config(raw=raw), resume=True).seed_metrics[1]
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert [s["loss_curve"] for s in resumed["stages"]] == [
        s["loss_curve"] for s in straight["stages"]
    ]


@needs_data
def test_replay_with_a_regulariser_and_lora_from_the_cli(tmp_path, capsys):
    raw = tiny_run_raw(
        tmp_path / "run",
        strategy={"name": "replay"},
        regularizer={"name": "l2_init", "lambda": 1.0},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["strategy"] == {"name": "replay"}
    assert metrics["regularizer"]["name"] == "l2_init"
    stage2 = metrics["per_seed"]["1"]["stages"][1]["loss_curve"]
    assert all(p[2] > 0 for p in stage2)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run")]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.split()[:5] == ["run", "method", "regularizer", "strategy", "lr"]
    assert row.split()[1:5] == ["lora", "l2_init", "λ=1", "replay"]


@needs_data
def test_replay_and_lwf_together_on_a_decoder(tmp_path):
    from tiny_llama import tiny_llama

    llama = tiny_llama(tmp_path / "llama", tokenizer="tiny")
    raw = tiny_run_raw(
        tmp_path / "run",
        strategy=[{"name": "replay", "examples_per_task": 4}, {"name": "lwf"}],
    )
    raw.update(
        {
            "model": {"name": str(llama), "max_length": 32},
            "tasks": ["gsm8k", "tinyshakespeare"],
            "method": {"name": "full"},
        }
    )
    raw["data"] = {"max_train_examples": 8, "max_eval_examples": 4}
    raw["training"].update({"lr": 1e-3, "mixed_precision": "no"})
    metrics = run(load_config(raw=raw)).seed_metrics[1]
    extra = [[p[2] for p in s["loss_curve"]] for s in metrics["stages"]]
    assert all(x == 0 for x in extra[0]) and all(x > 0 for x in extra[1])


def test_strategies_name_the_answers_method_label(tmp_path):
    """lora and lora+replay are different methods to the answers; a swept ratio a setting."""
    from forgetlab.answers import load_points
    from tests.answers_fixtures import write_run

    def with_strategy(run, value):
        for name, load, dump in [
            ("metrics.json", json.loads, json.dumps),
            ("config.yaml", yaml.safe_load, yaml.safe_dump),
        ]:
            data = load((run / name).read_text())
            data["strategy"] = value
            (run / name).write_text(dump(data))
        return run

    lap = {"name": "laplace", "lambda": 100.0}
    runs = [
        write_run(tmp_path, "lora", "lora", {1: (0.6, 0.1)}),
        with_strategy(write_run(tmp_path, "r2", "lora", {1: (0.6, 0.05)}), {"name": "replay"}),
        with_strategy(
            write_run(tmp_path, "r5", "lora", {1: (0.6, 0.04)}), {"name": "replay", "ratio": 0.5}
        ),
        with_strategy(
            write_run(tmp_path, "both", "lora", {1: (0.6, 0.0)}, regularizer=lap),
            [{"name": "replay"}, {"name": "lwf"}],
        ),
    ]
    points = load_points(runs)
    assert [p.method for p in points] == [
        "lora",
        "lora+replay",
        "lora+replay",
        "lora+laplace(λ=100)+replay+lwf",
    ]
    assert points[2].settings == {"strategy.ratio": 0.5}
