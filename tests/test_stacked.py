"""Stacked trials (`forgetlab.recipe.stacked`): K trials that differ only in values train as one
batched model and each ends with the numbers it has alone (fp32, dropout 0)."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import needs_data, one_torch_thread, tiny_raw
from torch import nn

from forgetlab.errors import ConfigError, TrainingDiverged
from forgetlab.methods import METHODS
from forgetlab.recipe.stacked.layers import stack_models
from forgetlab.recipe.stacked.optimizer import StackedAdamW


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


def test_stacked_adamw_equals_torch_adamw_per_trial_with_its_own_clipping():
    torch.manual_seed(0)
    rates, decays, norms = [1e-2, 3e-3, 5e-2], [0.0, 0.1, 0.01], [None, 0.5, 0.05]
    lone = [nn.Sequential(nn.Linear(4, 3)) for _ in rates]
    stack = stack_models(lone)
    params = dict(stack.named_stacked_parameters())
    opt = StackedAdamW(
        params,
        {n: list(rates) for n in params},
        {n: decays if n.endswith("weight") else [0.0] * 3 for n in params},
        norms,
    )
    copies = [copy.deepcopy(m) for m in lone]
    refs = [
        torch.optim.AdamW(
            [
                {"params": [m[0].weight], "weight_decay": wd},
                {"params": [m[0].bias], "weight_decay": 0.0},
            ],
            lr=lr,
        )
        for m, lr, wd in zip(copies, rates, decays)
    ]
    for step in range(6):
        x = torch.randn(3 * 5, 4)
        stack.layout.set([0, 1, 2], 5)
        (stack.model(x) ** 2).sum().backward()
        opt.clip([0, 1, 2])
        opt.step([1.0 - 0.1 * step] * 3, [0, 1, 2])
        opt.zero_grad()
        for k, (m, ref) in enumerate(zip(copies, refs)):
            (m(x[5 * k : 5 * k + 5]) ** 2).sum().backward()
            if norms[k] is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), norms[k])
            for group in ref.param_groups:
                group["lr"] = rates[k] * (1.0 - 0.1 * step)
            ref.step()
            ref.zero_grad()
    for k, m in enumerate(copies):
        torch.testing.assert_close(params["0.weight"][k], m[0].weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(params["0.bias"][k], m[0].bias, rtol=1e-6, atol=1e-6)


def test_stacked_layers_give_each_trial_its_own_output_and_skip_trials_that_left():
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Embedding(10, 6, padding_idx=0), nn.LayerNorm(6), nn.Linear(6, 2))
        for _ in range(3)
    ]
    stack = stack_models(models)
    ids = torch.randint(0, 10, (3 * 2, 5))
    stack.layout.set([0, 1, 2], 2)
    out = stack.model(ids)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[2 * k : 2 * k + 2], m(ids[2 * k : 2 * k + 2]))
    stack.layout.set([0, 2], 2)  # trial 1 left: its rows are gone
    out = stack.model(torch.cat([ids[:2], ids[4:]]))
    torch.testing.assert_close(out[2:], models[2](ids[4:]))


def test_stacked_embedding_gradients_are_each_trials_own_across_steps_and_trials_that_left():
    """The stacked lookup's gradient (added in place into a buffer kept across steps) is each
    trial's nn.Embedding gradient: pad rows get none, broadcast ids sum over the rows, two
    backward passes accumulate, a step after zero_grad starts from zero, trials that left get
    none; a gradient from elsewhere (a penalty on the table) adds to it."""
    torch.manual_seed(0)
    lone = [nn.Sequential(nn.Embedding(12, 4, padding_idx=1)) for _ in range(3)]
    stack = stack_models(lone)
    weight = stack.stacked["0"].weight
    for step, active in enumerate([[0, 1, 2], [0, 2]]):
        refs = [torch.zeros_like(m[0].weight) for m in lone]
        for _ in range(2):  # two micro-batches into one step
            ids = torch.randint(0, 12, (len(active) * 2, 5))
            ids[0, :2] = 1  # pad tokens
            stack.layout.set(active, 2)
            out = stack.model(ids)
            positions = stack.model(torch.arange(5).unsqueeze(0))  # broadcast ids
            cost = (out**2).sum() + positions.sum() + (weight[active[-1]] ** 2).sum()
            cost.backward()
            for i, k in enumerate(active):
                ref = lone[k][0].weight
                mine = lone[k](ids[2 * i : 2 * i + 2])
                rep = lone[k](torch.arange(5).unsqueeze(0)).expand(2, -1, -1)
                extra = (ref**2).sum() if k == active[-1] else 0.0
                refs[k] += torch.autograd.grad((mine**2).sum() + rep.sum() + extra, ref)[0]
        for k in range(3):
            torch.testing.assert_close(weight.grad[k], refs[k], rtol=1e-6, atol=1e-6)
        assert weight.grad[:, 1].abs().sum() == 0  # the pad row, in every table
        assert step == 0 or weight.grad[1].abs().sum() == 0  # trial 1 left: no gradient
        weight.grad = None  # what StackedAdamW.zero_grad does


@pytest.mark.parametrize("bf16", [False, True])
def test_groups_of_trials_run_apart_give_each_trial_its_gradients_in_one_backward(bf16):
    """The trials split into groups, a forward each (as `width_groups` splits a micro-batch),
    one backward: each trial's weight and bias gradients are its lone layer's (fp32), and
    those of all trials in one forward (bf16 autocast, where a group's weights are gathered
    in bf16 and their gradients added back in fp32: a lone layer's differ by bf16 rounding)."""
    torch.manual_seed(0)
    lone = [nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)) for _ in range(4)]
    stack = stack_models(lone)
    x, r = torch.randn(4, 2, 4), torch.randn(4, 2, 3)

    def grads(groups) -> dict[str, torch.Tensor]:
        total = 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for group in groups:
                stack.layout.set(group, 2)
                out = stack.model(x[group].reshape(-1, 4)).float().reshape(-1, 2, 3)
                total = total + (out**3 * r[group]).sum()
        total.backward()
        out = {n: p.grad.clone() for n, p in stack.model.named_parameters()}
        stack.model.zero_grad(set_to_none=True)
        return out

    apart, together = grads(([0, 2], [1], [3])), grads(([0, 1, 2, 3],))
    for name, g in apart.items():
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, together[name])
    if bf16:
        return
    for k, m in enumerate(lone):
        (m(x[k]) ** 3 * r[k]).sum().backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(apart[name][k], p.grad)


@pytest.mark.parametrize(
    "widths, rows, overhead, groups",
    [
        ([10, 40, 12, 38], [16] * 4, 75.0, [[0, 2], [1, 3]]),  # two lengths, two groups
        ([10, 40, 12, 38], [16] * 4, 1e6, [[0, 1, 2, 3]]),  # a forward dearer than padding
        ([10, 40, 12, 38], [16] * 4, None, [[0, 1, 2, 3]]),  # no grouping (a GPU)
        ([20, 21, 20], [16] * 3, 75.0, [[0, 1, 2]]),  # too little padding to save
        ([20, 20], [16, 3], 75.0, [[0], [1]]),  # an epoch's last, short batch: its rows
        ([5, 9, 30], [16] * 3, 0.0, [[0], [1], [2]]),  # forwards free: each its own
    ],
)
def test_width_groups_split_where_the_padding_saved_pays_for_a_forward(
    widths, rows, overhead, groups
):
    from forgetlab.recipe.stacked.train import width_groups

    assert width_groups(widths, rows, overhead) == groups


@pytest.mark.parametrize("dropout_on_x", [False, True])
def test_stacked_dora_gives_each_trial_peft_s_dora_output(dropout_on_x):
    """PEFT's DoRA layer of each trial (its own magnitudes, A and B) against the stacked one;
    with dropout on x PEFT passes no base result and recomputes W x."""
    peft = pytest.importorskip("peft")

    torch.manual_seed(0)
    models = []
    for _ in range(3):
        base = nn.Sequential(nn.Linear(6, 5))
        config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], use_dora=True)
        model = peft.get_peft_model(base, config)
        with torch.no_grad():  # B = 0 at init: give each trial its own update and magnitude
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.3)
        models.append(model)
    stack = stack_models(models)
    stack.layout.set([0, 1, 2], 4)
    x = torch.randn(12, 6)
    layer = stack.model.get_submodule("base_model.model.0")
    if dropout_on_x:  # a dropout that keeps everything, but is not nn.Identity
        layer.lora_dropout["default"] = nn.Dropout(0.0)
        for m in models:
            m.get_submodule("base_model.model.0").lora_dropout["default"] = nn.Dropout(0.0)
    out = stack.model(x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[4 * k : 4 * k + 4], m(x[4 * k : 4 * k + 4]))
    out.sum().backward()  # the magnitudes train, per trial
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.shape == (3, 5) and magnitude.grad.abs().sum(1).min() > 0


def test_a_module_that_trains_but_cannot_stack_is_named():
    models = [nn.Sequential(nn.Conv1d(2, 2, 1)) for _ in range(2)]
    with pytest.raises(ConfigError, match="module 0 .Conv1d. trains but cannot be stacked"):
        stack_models(models)


def test_trials_whose_parameters_differ_in_shape_are_refused_by_name():
    models = [nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(2, 4))]
    with pytest.raises(ConfigError, match="parameter 0.bias is 3 in one trial, 4 in another"):
        stack_models(models)
    models = [nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(2, 3, bias=False))]
    with pytest.raises(ConfigError, match="parameter 0.bias is 3 in one trial, absent in"):
        stack_models(models)


@needs_data
def test_eva_seeds_whose_ranks_differ_stack_per_seed_not_in_one_stack(tmp_path, capfd):
    """EVA's ranks follow each seed's calibration batches: seeds 4 and 5 redistribute them
    differently here. `--stack-seeds` refuses them in one line naming a layer; `--stack` (a
    stack per seed) trains them."""
    import yaml

    from forgetlab.cli import main

    raw = _config(tmp_path / "run", "eva", 2e-3, 4, max_steps=1).to_dict()
    raw["seeds"] = [4, 5]
    path = tmp_path / "eva.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--stack-seeds"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert "lora_A" in err[-1] and "in one trial" in err[-1] and "stack trials of one" in err[-1]
    raw["output"]["dir"] = str(tmp_path / "per-seed")
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--stack"]) == 0
    metrics = json.loads((tmp_path / "per-seed" / "metrics.json").read_text())
    assert sorted(metrics["per_seed"]) == ["4", "5"]


def _config(out, method: str, lr: float, seed: int, regularizer=None, method_values=None,
            checkpoints="none", **training):  # fmt: skip
    from forgetlab import load_config

    raw = tiny_raw(out, method=method, **{"batch_size": 8, "epochs": 1, **training})
    if regularizer:
        raw["regularizer"] = regularizer
    raw["method"].update(method_values or {})
    raw["data"] = {"max_train_examples": 20, "max_eval_examples": 16}
    raw["model"] = {"max_length": 32, "dropout": 0.0, "head_dropout": 0.0}
    raw["output"]["checkpoints"] = checkpoints
    raw["training"]["lr"] = lr
    raw["seeds"] = [seed]
    if "lora_dropout" in {f.name for f in fields(METHODS[method].config_cls)}:  # LoRA family
        raw["method"]["lora_dropout"] = 0.0
    return load_config(raw=raw)


def _state(config) -> dict:
    return json.loads(Path(config.output.dir, f"seed-{config.seeds[0]}", "state.json").read_text())


def _assert_same_numbers(alone, stacked) -> None:
    a, b = _state(alone), _state(stacked)
    curve_a = [p for s in a["stages"] for p in s["loss_curve"]]
    curve_b = [p for s in b["stages"] for p in s["loss_curve"]]
    assert [p[0] for p in curve_a] == [p[0] for p in curve_b]  # the same steps logged
    assert [p[1] for p in curve_a] == pytest.approx([p[1] for p in curve_b], abs=1e-5)
    # the penalty (a regulariser's, O-LoRA's overlap) logged beside the task loss; it runs to
    # hundreds (O-LoRA at lambda_orth 50), where fp32's spacing is ~3e-5: a few ulps relative
    assert [p[2] for p in curve_a] == pytest.approx([p[2] for p in curve_b], rel=1e-6, abs=1e-5)
    assert [s["examples"] for s in a["stages"]] == [s["examples"] for s in b["stages"]]
    assert [s["tokens"] for s in a["stages"]] == [s["tokens"] for s in b["stages"]]
    cells = ("score", "accuracy")  # accuracy: where the kind has one
    rows_a = [c.get(k) for row in a["rows"] for c in row for k in cells]
    rows_b = [c.get(k) for row in b["rows"] for c in row for k in cells]
    assert [x is None for x in rows_a] == [x is None for x in rows_b]
    rows_a, rows_b = [x for x in rows_a if x is not None], [x for x in rows_b if x is not None]
    assert rows_a == pytest.approx(rows_b, abs=1e-5)
    metrics_a = json.loads(Path(alone.output.dir, "metrics.json").read_text())
    metrics_b = json.loads(Path(stacked.output.dir, "metrics.json").read_text())
    flat_a = [x for row in metrics_a["accuracy_matrix"] for x in row]
    flat_b = [x for row in metrics_b["accuracy_matrix"] for x in row]
    assert len(flat_a) == 6 and flat_a == pytest.approx(flat_b, abs=1e-5)


def _stacked_equal_alone(config, values: list[tuple]) -> list:
    """Each `config(name, *value)` trained alone, then all stacked (a seed each: one stack);
    every stacked trial finishes with its lone numbers. Returns the stacked configs."""
    from forgetlab.recipe.run import run
    from forgetlab.recipe.stacked.run import run_stacked

    alone = [config(f"alone{i}", *v) for i, v in enumerate(values)]
    stacked = [config(f"stack{i}", *v) for i, v in enumerate(values)]
    for c in alone:
        run(c)
    assert all(o.error is None for o in run_stacked(stacked, by_seed=False))
    for a, b in zip(alone, stacked):
        _assert_same_numbers(a, b)
    return stacked


@needs_data
def test_lora_trials_stacked_equal_alone_and_a_diverging_one_stops_alone(tmp_path, monkeypatch):
    """Different rates, seeds and warm-ups; the fourth trial's rate makes its loss non-finite:
    it stops alone (the error its lone run raises), the other three finish as they do alone.
    The trials' batches run a group per length (their seeds draw different lengths)."""
    from forgetlab import api
    from forgetlab.recipe.run import run
    from forgetlab.recipe.stacked.train import GROUP_OVERHEAD

    values = [(2e-3, 1, 0), (5e-4, 2, 1), (1e-3, 3, 2), (1e8, 4, 0)]

    def config(name, lr, seed, warmup):
        return _config(tmp_path / name, "lora", lr, seed, warmup_steps=warmup, max_grad_norm=None)

    alone = [config(f"alone{i}", *v) for i, v in enumerate(values)]
    stacked = [config(f"stack{i}", *v) for i, v in enumerate(values)]
    # every length its own forward: the trials' batches run in groups, one backward
    monkeypatch.setitem(GROUP_OVERHEAD, "cpu", 0.0)
    for config in alone[:3]:
        run(config)
    with pytest.raises(TrainingDiverged) as lone_error:
        run(alone[3])
    outcomes = api.run_stacked(stacked, by_seed=False)  # a seed each: the hardest stack
    assert [o.error is None for o in outcomes] == [True, True, True, False]
    assert (
        str(outcomes[3].error).split(". Finished")[0]
        == str(lone_error.value).split(". Finished")[0]
    )
    for a, b in zip(alone[:3], stacked[:3]):
        _assert_same_numbers(a, b)
    # the diverged trial keeps what its lone run keeps: the rows before the diverged stage
    assert len(_state(stacked[3])["rows"]) == len(_state(alone[3])["rows"])


@needs_data
def test_full_fine_tuning_trials_stacked_equal_alone(tmp_path):
    def config(name, lr, seed, warmup, wd):
        return _config(tmp_path / name, "full", lr, seed, warmup_steps=warmup, weight_decay=wd)

    _stacked_equal_alone(config, [(1e-4, 1, 0, 0.01), (3e-5, 2, 1, 0.0), (5e-5, 3, 2, 0.1)])


@needs_data
@pytest.mark.parametrize(
    "method",
    [
        "dora",  # its own stacked layer: each trial's row norms and magnitudes
        "rslora",  # plain LoRA layers, PEFT's alpha / sqrt(r) scaling
        pytest.param("gaussian", marks=pytest.mark.slow),  # plain LoRA, A ~ N(0, 1/r^2)
        # PiSSA, OLoRA and MiLoRA rewrite the frozen base to W_res at init, then train a plain
        # LoRA on it: one row in the default suite, the other two take the same path
        "pissa",
        "loraplus",  # plain LoRA layers, B's optimizer group at lr x loraplus_lr_ratio
        pytest.param("olora", marks=pytest.mark.slow),
        pytest.param("milora", marks=pytest.mark.slow),
        pytest.param("init_ab", marks=pytest.mark.slow),
        pytest.param("corda", marks=pytest.mark.slow),  # calibrated inits: W_res from data
        pytest.param("lora_ga", marks=pytest.mark.slow),
        "eva",  # calibrated A and redistributed ranks (equal here: see the shapes test)
        # a new adapter at stage 2 (a new stack) and a penalty on its overlap with stage 1's
        "o_lora",
    ],
)
def test_lora_variants_stacked_equal_alone(tmp_path, method):
    """Stacked (a rate and a seed each), each trial keeps its lone numbers."""

    def config(name, lr, seed):
        return _config(tmp_path / name, method, lr, seed)

    _stacked_equal_alone(config, [(2e-3, 1), (5e-4, 2)])


@needs_data
@pytest.mark.parametrize(
    "method",
    [
        "adapter",  # bottleneck adapters after the projections, added by forward hooks
        "prompt",  # virtual-token embeddings, one lookup per row (RowPrompts)
        pytest.param("prefix", marks=pytest.mark.slow),  # past key values from its encoder
        "ia3",  # vectors in ParameterDicts, stacked in place: input and output scaling
        "vera",  # the same path, two vectors a layer around the shared frozen A, B
    ],
)
def test_adapter_and_prompt_methods_stacked_equal_alone(tmp_path, method):
    def config(name, lr, seed):
        return _config(tmp_path / name, method, lr, seed)

    _stacked_equal_alone(config, [(2e-3, 1), (5e-4, 2)])


def _rank_patterns(config) -> list[dict]:
    """The rank pattern AdaLoRA saved with each stage's adapter."""
    stages = sorted(Path(config.output.dir, f"seed-{config.seeds[0]}", "checkpoints").iterdir())
    return [
        json.loads(next(stage.rglob("adapter_config.json")).read_text())["rank_pattern"]
        for stage in stages
    ]


@needs_data
@pytest.mark.parametrize(
    "total_step",
    [
        6,  # the whole schedule in each 6-step stage: 2 steps at full rank, the budget cut
        # at steps 2 and 3, the final mask at 4, then the rank pattern kept
        12,  # stages that end mid-way: stage 2 starts its scores afresh, as a lone run's
    ],
)
def test_adalora_trials_stacked_equal_alone_each_pruned_by_its_own_scores(tmp_path, total_step):
    """AdaLoRA's schedule and its orthogonality gradient (after clipping), per stage. Each
    stacked trial keeps its lone numbers and prunes the same triplets: its own sensitivity
    scores, from its own gradients."""
    values = {"init_r": 4, "target_r": 2, "total_step": total_step, "tinit": 1, "tfinal": 2,
              "deltaT": 1}  # fmt: skip

    def config(name, lr, seed):
        return _config(tmp_path / name, "adalora", lr, seed, method_values=values,
                       checkpoints="all", epochs=2)  # fmt: skip

    trials = [(1e-2, 1), (3e-3, 2)]
    stacked = _stacked_equal_alone(config, trials)
    patterns = [_rank_patterns(c) for c in stacked]
    alone = [_rank_patterns(config(f"alone{i}", *v)) for i, v in enumerate(trials)]
    assert patterns == alone and len(patterns[0]) == 2
    kept = [sum(sum(mask) for mask in stage.values()) for stage in patterns[0]]
    layers = len(patterns[0][0])
    if total_step == 6:  # pruned to target_r on average, 4 -> 2; else on the way there
        assert kept == [2 * layers] * 2
    assert all(2 * layers <= n < 4 * layers for n in kept)
    assert patterns[0] != patterns[1]  # each trial's own scores (a rate and a seed each)


@needs_data
def test_partial_fine_tuning_trials_stacked_equal_alone(tmp_path):
    """freeze: the top layer and the heads stacked, the frozen bottom shared. Rates at which
    the loss stays near 1 (at 2e-3 it climbs to ~5, where 1e-5 is below float rounding)."""

    def config(name, lr, seed):
        return _config(tmp_path / name, "freeze", lr, seed)

    _stacked_equal_alone(config, [(5e-4, 1), (2e-4, 2)])


@needs_data
@pytest.mark.parametrize(
    "section, lams",
    [
        ({"name": "l2_init"}, [0.1, 300.0]),
        # K-FAC curvature of each trial's own base, estimated on its plain model at stage 1
        ({"name": "laplace", "source_examples": 16, "batch_size": 8}, [10.0, 3e4]),
        # its penalty from stage 2 on; in the default suite EWC stacks through the CLI row
        pytest.param({"name": "ewc", "fisher_samples": 6}, [100.0, 3e4], marks=pytest.mark.slow),
    ],
)
def test_regularised_trials_stacked_equal_alone_each_at_its_own_lambda(tmp_path, section, lams):
    """A lambda sweep stacks: each trial's own regulariser (its theta0, its Fisher) and lambda,
    the penalty on its slices of the stack; loss curves, rows and matrix as alone."""

    def config(name, lam, lr, seed):
        reg = {**section, "lambda": lam}
        return _config(tmp_path / name, "lora", lr, seed, regularizer=reg, max_grad_norm=None)

    stacked = _stacked_equal_alone(config, [(lams[0], 2e-3, 1), (lams[1], 1e-3, 2)])
    penalties = [[p[2] for s in _state(c)["stages"] for p in s["loss_curve"]] for c in stacked]
    assert all(max(p) > 0 for p in penalties)  # the penalty was on, in both trials
    assert max(penalties[1]) > max(penalties[0])  # and at each trial's own lambda


@needs_data
def test_o_lora_trials_stacked_equal_alone_each_at_its_own_lambda_orth(tmp_path):
    """O-LoRA's overlap weight is a value too: each trial's penalty at its own lambda_orth."""

    def config(name, lam, lr, seed):
        return _config(tmp_path / name, "o_lora", lr, seed, method_values={"lambda_orth": lam})

    stacked = _stacked_equal_alone(config, [(0.5, 2e-3, 1), (50.0, 1e-3, 2)])
    penalties = [[p[2] for p in _state(c)["stages"][1]["loss_curve"]] for c in stacked]
    assert min(penalties[1]) > 10 * max(penalties[0]) > 0  # stage 2, at each trial's own


@needs_data
def test_decoder_lora_trials_stacked_equal_alone_on_token_kinds(tmp_path):
    """A tiny Llama with LoRA on an instruction task (GSM8K) then a next-token one: the token
    logits of each trial's block cut to its own length; loss curves and matrix as alone."""
    from tiny_llama import tiny_llama

    from forgetlab import load_config

    llama = tiny_llama(tmp_path / "llama", tokenizer="tiny")

    def config(name, lr, seed):
        out = tmp_path / name
        return load_config(
            raw={
                "model": {"name": str(llama), "max_length": 48},
                "tasks": ["gsm8k", "tinyshakespeare"],
                "data": {"max_train_examples": 12, "max_eval_examples": 4},
                "method": {"name": "lora", "lora_dropout": 0.0},
                "eval": {"batch_size": 8},
                "seeds": [seed],
                "training": {"lr": lr, "epochs": 1, "batch_size": 4, "mixed_precision": "no",
                             "progress_bar": False},
                "output": {"dir": str(out), "store": str(tmp_path / "store.sqlite"),
                           "checkpoints": "none"},
            }
        )  # fmt: skip

    _stacked_equal_alone(config, [(5e-3, 1), (2e-3, 2)])


def test_tied_weights_that_train_are_refused():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    with pytest.raises(ConfigError, match="embed and head share a weight that trains"):
        stack_models([Tied(), Tied()])


def test_configs_that_differ_beyond_values_or_a_method_that_cannot_stack_are_refused(
    tmp_path, monkeypatch
):
    from forgetlab import load_config
    from forgetlab.recipe.stacked.run import check_stackable

    a = load_config(raw=tiny_raw(tmp_path / "a"))
    b = load_config(raw=tiny_raw(tmp_path / "b", batch_size=4))
    with pytest.raises(ConfigError, match="training.batch_size is 16 in one, 4 in another"):
        check_stackable([a, b])
    from forgetlab.methods.adalora import AdaLora

    monkeypatch.delattr(AdaLora, "stackable")  # a method that does not declare it
    adalora = load_config(raw=tiny_raw(tmp_path / "c", method="adalora"))
    with pytest.raises(ConfigError, match="method adalora cannot be stacked .stackable: full"):
        check_stackable([adalora])
    cached = tiny_raw(tmp_path / "e", method="freeze")
    cached["method"] |= {"frozen_dropout": False, "cache_frozen": True}
    with pytest.raises(ConfigError, match="method.cache_frozen is not supported in a stack"):
        check_stackable([load_config(raw=cached)])
    laplace = tiny_raw(tmp_path / "d")
    laplace["regularizer"] = {"name": "laplace", "lambda": 10}
    check_stackable([load_config(raw=laplace)])
    from forgetlab.regularizers.laplace import Laplace

    monkeypatch.setattr(Laplace, "stackable", False)  # a regulariser that does not declare it
    with pytest.raises(ConfigError, match="regularizer laplace cannot be stacked.*l2_init, ewc"):
        check_stackable([load_config(raw=laplace)])


def test_a_lambda_is_a_value_a_regulariser_is_not(tmp_path):
    """What `forgetlab sweep` with sweep.stack groups: trials of one regulariser at several
    lambdas stack; different regularisers (or none) do not."""
    from forgetlab import load_config
    from forgetlab.recipe.stacked.run import stack_difference

    def config(name, reg):
        raw = tiny_raw(tmp_path / name)
        if reg:
            raw["regularizer"] = reg
        return load_config(raw=raw)

    l2_small = config("a", {"name": "l2_init", "lambda": 0.1})
    assert stack_difference(l2_small, config("b", {"name": "l2_init", "lambda": 100})) is None
    assert "regularizer.name" in stack_difference(l2_small, config("c", {"name": "ewc"}))
    assert "regularizer" in stack_difference(l2_small, config("d", None))


def test_sweep_stack_is_checked():
    from forgetlab.sweeps.spec import parse_sweep

    space = {"training.lr": [1e-3, 2e-3]}
    assert parse_sweep({"space": space, "stack": 4}).stack == 4
    with pytest.raises(ConfigError, match="sweep.stack=0 must be a whole number >= 1"):
        parse_sweep({"space": space, "stack": 0})
    with pytest.raises(ConfigError, match="sweep.stack stacks grid points: sampler tpe"):
        parse_sweep({"space": space, "stack": 2, "sampler": "tpe", "trials": 4})


@needs_data
@pytest.mark.slow
def test_forgetlab_sweep_with_sweep_stack_trains_the_grid_stacked(tmp_path, capfd):
    """Three rates x two seeds in one worker: the three points stacked, a stack of three
    trials per seed; every trial an ordinary run directory with the numbers its lone run
    has."""
    import yaml

    from forgetlab.cli import main
    from forgetlab.recipe.run import run
    from forgetlab.rundir import RunDir
    from forgetlab.store import ResultsStore

    out = tmp_path / "sweep"
    raw = tiny_raw(out, batch_size=8, epochs=1)
    raw["data"] = {"max_train_examples": 20, "max_eval_examples": 16}
    raw["model"] = {"max_length": 32, "dropout": 0.0, "head_dropout": 0.0}
    raw["method"]["lora_dropout"] = 0.0
    raw["sweep"] = {"space": {"training.lr": [1e-3, 2e-3, 4e-3]}, "seeds": [1, 2], "stack": 3}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path)]) == 0
    err = capfd.readouterr().err
    assert err.count("stacking 3 trials:") == 1  # the worker's line
    trials = sorted((out / "trials").iterdir())
    for t in trials:  # each trial's own log: its seed's stack, once a seed
        assert RunDir(t).log_path.read_text().count("stacking 3 trials of lora") == 2
    assert len(trials) == 3 and all((t / "metrics.json").is_file() for t in trials)
    assert len(ResultsStore(raw["output"]["store"]).runs()) == 3
    from forgetlab import load_config

    lone = raw | {"training": raw["training"] | {"lr": 2e-3}, "seeds": [1, 2]}
    lone = {k: v for k, v in lone.items() if k != "sweep"}
    lone["output"] = {**raw["output"], "dir": str(tmp_path / "lone")}
    alone = run(load_config(raw=lone))
    stacked = json.loads((trials[1] / "metrics.json").read_text())
    flat = [x for row in stacked["accuracy_matrix"] for x in row]
    assert flat == pytest.approx([x for row in alone.metrics["accuracy_matrix"] for x in row])
    for seed in (1, 2):
        a = json.loads((tmp_path / "lone" / f"seed-{seed}" / "state.json").read_text())
        b = json.loads((trials[1] / f"seed-{seed}" / "state.json").read_text())
        curve = [p[1] for s in a["stages"] for p in s["loss_curve"]]
        assert curve == pytest.approx(
            [p[1] for s in b["stages"] for p in s["loss_curve"]], abs=1e-5
        )


def test_a_stack_per_seed_groups_the_trials_that_share_a_batch_order():
    from forgetlab.recipe.stacked.run import _groups

    owners = [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]  # (config, seed)
    assert _groups(owners, by_seed=True) == [[0, 2, 4], [1, 3]]
    assert _groups(owners, by_seed=False) == [[0, 1, 2, 3, 4]]


@needs_data
@pytest.mark.parametrize(
    ("flag", "stacks", "penalty"),
    # --stack's grouping per seed is unit-tested (test_a_stack_per_seed_groups_...) and run by
    # the sweep's stack test: its CLI row is slow-only
    [
        pytest.param("--stack", [1, 1], "ewc", marks=pytest.mark.slow),
        ("--stack-seeds", [2], "ewc"),
        # O-LoRA: a new adapter per seed at stage 2 (the stack built anew), and its overlap
        ("--stack-seeds", [2], "o_lora"),
        # AdaLoRA: each seed's ranks pruned by its own scores (no penalty: a gradient instead)
        ("--stack-seeds", [2], "adalora"),
    ],
)
def test_cli_run_stacks_per_seed_or_a_configs_seeds_in_one_stack(
    tmp_path, capfd, flag, stacks, penalty
):
    """`forgetlab run --stack` of an EWC (or O-LoRA, AdaLoRA) config with seeds [1, 2]: one
    stack per seed (each of one trial); --stack-seeds: both seeds in one stack. Either way one
    run directory, both seeds, each with its own penalty from stage 2 on."""
    import yaml

    from forgetlab.cli import main

    method = penalty if penalty in ("o_lora", "adalora") else "lora"
    raw = tiny_raw(tmp_path / "run", method=method, batch_size=8, epochs=1, max_steps=2)
    raw["data"] = {"max_train_examples": 16, "max_eval_examples": 16}
    raw["model"] = {"max_length": 32}
    raw["seeds"] = [1, 2]
    if penalty == "ewc":
        raw["regularizer"] = {"name": "ewc", "lambda": 100.0, "fisher_samples": 4}
    if penalty == "adalora":  # a 2-step schedule: a step at full rank, then the final mask
        raw["method"] |= {"init_r": 4, "target_r": 2, "total_step": 2, "tinit": 0, "tfinal": 1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), flag]) == 0
    captured = capfd.readouterr()
    sizes = [int(line.split("stacking ")[1].split()[0]) for line in
             captured.err.splitlines() if "stacking " in line]  # fmt: skip
    assert sizes == stacks
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(metrics["per_seed"]) == ["1", "2"] and "run directory" in captured.out
    for seed in (1, 2):
        state = json.loads((tmp_path / "run" / f"seed-{seed}" / "state.json").read_text())
        penalised = [max(p[2] for p in s["loss_curve"]) > 0 for s in state["stages"]]
        assert penalised == ([False, False] if penalty == "adalora" else [False, True])
    if penalty == "adalora":  # each stage's adapter saved with the ranks of its seed's mask
        for seed in (1, 2):
            configs = (tmp_path / "run" / f"seed-{seed}" / "checkpoints").rglob(
                "adapter_config.json"
            )
            patterns = [json.loads(c.read_text())["rank_pattern"] for c in configs]
            assert len(patterns) == 2 and all(
                sum(map(sum, p.values())) == 2 * len(p) for p in patterns
            )
