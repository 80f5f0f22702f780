"""Regularisers: penalties and gradients against brute-force computations on a tiny random
BERT, config validation, and a table-driven check that each one holds the weights back."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.methods.base import MethodConfig
from forgetlab.methods.full import FullFineTuning
from forgetlab.methods.lora import Lora, LoraMethodConfig
from forgetlab.models.task_model import TaskModel
from forgetlab.regularizers import (
    EWC,
    REGULARIZERS,
    EWCConfig,
    L2Init,
    L2InitConfig,
    Laplace,
    LaplaceConfig,
    StageContext,
    build_regularizer,
)
from forgetlab.regularizers.base import (
    STATE_FILE,
    load_regularizer_state,
    save_regularizer_state,
)
from forgetlab.regularizers.laplace import lora_layers
from tests.conftest import one_torch_thread

# PEFT calls a transformers method deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

OPS = KINDS["classification"]
PAD = 0
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


# --------------------------------------------------------------------------------------
# toy model and data


def make_split(n: int, seed: int) -> EncodedSplit:
    """Variable-length rows (so batches are padded); the label is a function of the tokens."""
    rng = random.Random(seed)
    ids = [[1] + [rng.randrange(2, 100) for _ in range(rng.randrange(2, 9))] for _ in range(n)]
    return EncodedSplit(input_ids=ids, token_type_ids=None, labels=[row[1] % 2 for row in ids])


def tiny_model(method: str = "full", seed: int = 0) -> TaskModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
        initializer_range=0.2,  # BERT's 0.02 makes every gradient here ~1e-6: too quiet
    )
    model = TaskModel(BertModel(cfg), 16, {"a": 2, "b": 3})
    if method == "lora":
        Lora().prepare(
            model,
            LoraMethodConfig(name="lora", r=2, lora_alpha=4, target_modules=["query", "value"]),
        )
    else:
        FullFineTuning().prepare(model, MethodConfig(name="full"))
    return model


def randomize_lora_b(model: TaskModel, seed: int = 1) -> None:
    """LoRA starts at B = 0 (ΔW = 0); a non-zero B makes the penalty non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            b = layer.lora_B["default"].weight
            b.copy_(0.3 * torch.randn(b.shape, generator=gen))


def perturb(params, seed: int = 2, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen))


def stage_ctx(model, stage, task, data, source=()) -> StageContext:
    return StageContext(
        model=model,
        stage=stage,
        task=task,
        kind="classification",
        data=data,
        pad_id=PAD,
        device=CPU,
        source_data=list(source),
    )


def example_nll(model, task, split, i) -> torch.Tensor:
    """−log p(y_i | x_i), one example, no padding: the brute-force reference."""
    batch = OPS.collate(split, [i], PAD, CPU)
    logits = model(task, **batch["inputs"])
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


def grads_of(value: torch.Tensor, params) -> list[torch.Tensor]:
    return [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(params, torch.autograd.grad(value, params, allow_unused=True))
    ]


def assert_close(a, b, rtol=1e-4):
    """Elementwise, relative to the reference's own scale (curvatures here span 1e-12..1)."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-5 * float(b.abs().max()) + 1e-30)


# --------------------------------------------------------------------------------------
# l2_init


def test_l2_init_value_and_gradient_match_explicit():
    model = tiny_model()
    reg = L2Init(L2InitConfig(lam=0.7))
    data = make_split(4, 0)
    reg.on_stage_start(stage_ctx(model, 1, "a", data))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    perturb(model.parameters())

    backbone = [(n, p) for n, p in model.named_parameters() if not n.startswith("heads.")]
    explicit = 0.5 * 0.7 * sum(((p - theta0[n]) ** 2).sum() for n, p in backbone)
    value = reg.penalty(model)
    assert_close(value, explicit)
    params = [p for _, p in model.named_parameters()]
    for (n, p), g in zip(model.named_parameters(), grads_of(value, params)):
        # L2-SP: heads have no pretrained value and are left to weight decay.
        expected = torch.zeros_like(p) if n.startswith("heads.") else 0.7 * (p - theta0[n])
        assert_close(g, expected)

    # θ₀ is the solution before the first stage: a later stage does not re-anchor it.
    reg.on_stage_start(stage_ctx(model, 2, "b", data))
    assert_close(reg.penalty(model), explicit)


# --------------------------------------------------------------------------------------
# ewc


def brute_force_fisher(model, task, split, params) -> list[torch.Tensor]:
    """1/N Σ_n (∇ log p(y_n|x_n))², each example's gradient from its own backward pass."""
    model.eval()
    sums = [torch.zeros_like(p) for p in params]
    for i in range(len(split)):
        for s, g in zip(sums, grads_of(example_nll(model, task, split, i), params)):
            s += g**2
    model.train()
    return [s / len(split) for s in sums]


def test_ewc_fisher_penalty_and_gradient_match_brute_force():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    data_a, data_b = make_split(5, 1), make_split(6, 2)
    reg = EWC(EWCConfig(lam=3.0, fisher_samples=100))  # more than the data: every example

    reg.on_stage_start(stage_ctx(model, 1, "a", data_a))
    assert reg.penalty(model) is None  # no finished task yet
    perturb(params, seed=3)  # "train" task a
    reg.on_stage_end(stage_ctx(model, 1, "a", data_a))
    fisher_a = brute_force_fisher(model, "a", data_a, params)
    star_a = [p.detach().clone() for p in params]
    for n, f in zip(names, fisher_a):
        assert_close(reg.fisher[n], f, rtol=1e-4)
    assert sum(float(f.sum()) for f in fisher_a) > 0

    reg.on_stage_start(stage_ctx(model, 2, "b", data_b))
    perturb(params, seed=4)  # "train" task b
    reg.on_stage_end(stage_ctx(model, 2, "b", data_b))
    fisher_b = brute_force_fisher(model, "b", data_b, params)
    star_b = [p.detach().clone() for p in params]

    perturb(params, seed=5)  # somewhere in stage 3
    explicit = (
        0.5
        * 3.0
        * sum(
            (fa * (p - sa) ** 2).sum() + (fb * (p - sb) ** 2).sum()
            for p, fa, sa, fb, sb in zip(params, fisher_a, star_a, fisher_b, star_b)
        )
    )
    value = reg.penalty(model)
    assert_close(value, explicit, rtol=1e-4)
    expected = [
        3.0 * (fa * (p - sa) + fb * (p - sb))
        for p, fa, sa, fb, sb in zip(params, fisher_a, star_a, fisher_b, star_b)
    ]
    for g, e in zip(grads_of(value, params), expected):
        assert_close(g, e, rtol=1e-4)


# --------------------------------------------------------------------------------------
# laplace


def per_example_layer_terms(model, split, name):
    """For every example alone (no padding): the layer's inputs x (tokens×in), the gradient
    g = ∂L/∂y at its outputs (tokens×out) and ∂L/∂W, by autograd on W itself."""
    layer = lora_layers(model)[name]
    w = layer.base_layer.weight
    seen = {}
    handle = layer.base_layer.register_forward_hook(
        lambda m, args, out: seen.update(x=args[0], y=out)
    )
    w.requires_grad_(True)
    model.eval()
    rows = []
    try:
        for i in range(len(split)):
            nll = example_nll(model, "a", split, i)
            g_y, g_w = torch.autograd.grad(nll, [seen["y"], w])
            rows.append((seen["x"][0].detach(), g_y[0], g_w))
    finally:
        handle.remove()
        w.requires_grad_(False)
        model.train()
    return rows


def lora_delta(layer) -> torch.Tensor:
    return (
        layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )


def lora_params(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def test_laplace_kfac_matches_explicit_kronecker_fisher():
    model = tiny_model("lora")
    # A non-zero B at the start, as residual inits (PiSSA, OLoRA, ...) have: ΔW is then
    # measured from it, s·(B·A − B0·A0).
    randomize_lora_b(model, seed=8)
    start = {n: lora_delta(layer).detach().clone() for n, layer in lora_layers(model).items()}
    data = make_split(7, 3)
    reg = Laplace(LaplaceConfig(lam=2.0, curvature="kfac", batch_size=3))
    reg.on_stage_start(stage_ctx(model, 1, "a", data))
    layers = lora_layers(model)
    assert float(reg.penalty(model).detach()) == 0  # at its start ΔW = 0

    # Factors: A_in = mean of x xᵀ over real tokens, G = 1/N Σ_n Σ_t g gᵀ (padding excluded).
    for name in layers:
        rows = per_example_layer_terms(model, data, name)
        a_in = sum(x.T @ x for x, _, _ in rows) / sum(x.shape[0] for x, _, _ in rows)
        g = sum(gy.T @ gy for _, gy, _ in rows) / len(rows)
        assert_close(reg.curv[name][0], a_in)
        assert_close(reg.curv[name][1], g)

    # Penalty: vec(ΔW)ᵀ (A_in ⊗ G) vec(ΔW), the full Kronecker matrix built explicitly.
    randomize_lora_b(model)
    value = reg.penalty(model)
    explicit = 0
    for n, layer in layers.items():
        a_n, g_n = reg.curv[n]
        vec = (lora_delta(layer) - start[n]).T.reshape(-1)  # column-stacking vec
        explicit = explicit + 0.5 * 2.0 * vec @ torch.kron(a_n, g_n) @ vec
    assert value > 0
    assert_close(value, explicit)
    params = lora_params(model)
    for got, want in zip(grads_of(value, params), grads_of(explicit, params)):
        assert_close(got, want)


def test_laplace_diag_matches_per_example_weight_gradients():
    model = tiny_model("lora")
    data = make_split(6, 4)
    reg = Laplace(LaplaceConfig(lam=5.0, curvature="diag", batch_size=4))
    reg.on_stage_start(stage_ctx(model, 1, "b", make_split(2, 9), source=[("a", data)]))
    layers = lora_layers(model)
    for name in layers:  # F_W = 1/N Σ_n (∂L_n/∂W)², from the source task's data
        rows = per_example_layer_terms(model, data, name)
        assert_close(reg.curv[name][0], sum(gw**2 for _, _, gw in rows) / len(rows))

    randomize_lora_b(model)
    value = reg.penalty(model)
    explicit = sum(
        0.5 * 5.0 * (reg.curv[n][0] * lora_delta(layer) ** 2).sum() for n, layer in layers.items()
    )
    assert_close(value, explicit)
    params = lora_params(model)
    for got, want in zip(grads_of(value, params), grads_of(explicit, params)):
        assert_close(got, want)


def test_laplace_curvature_lives_on_w_and_survives_b_zero():
    """At B = 0 a Fisher over the LoRA parameters is zero for A; the curvature of W is not."""
    model = tiny_model("lora")
    data = make_split(4, 5)
    nll = example_nll(model, "a", data, 0)
    a_params = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert all(float(g.abs().max()) == 0 for g in grads_of(nll, a_params))

    reg = Laplace(LaplaceConfig(lam=1.0, curvature="kfac"))
    reg.on_stage_start(stage_ctx(model, 1, "a", data))
    assert all(float(g.abs().max()) > 0 for _, g in reg.curv.values())
    assert float(reg.penalty(model).detach()) == 0  # ΔW = 0
    randomize_lora_b(model)
    assert float(reg.penalty(model).detach()) > 0


@pytest.mark.parametrize(
    ("section", "method", "hook"),
    [
        ({"name": "laplace", "fisher": "true", "source_examples": 6}, "lora", "on_stage_start"),
        ({"name": "ewc", "fisher": "true", "fisher_samples": 6}, "full", "on_stage_end"),
    ],
)
def test_estimation_leaves_rng_mode_and_frozen_weights_alone(section, method, hook):
    """With or without a regulariser, training sees the same batches and dropout masks; and
    the frozen base weights stay frozen."""
    model = tiny_model(method)
    model.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    reg = build_regularizer(section, model=model)
    rng_state = torch.get_rng_state()
    getattr(reg, hook)(stage_ctx(model, 1, "a", make_split(6, 6)))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(p.grad is None for p in model.parameters())


def test_laplace_needs_lora():
    with pytest.raises(ConfigError, match="laplace needs a LoRA-family method"):
        build_regularizer({"name": "laplace"}, model=tiny_model("full"))


# --------------------------------------------------------------------------------------
# all regularisers


ROWS = [  # (config section, method)
    ({"name": "l2_init", "lambda": 20.0}, "full"),
    ({"name": "ewc", "lambda": 5000.0, "fisher_samples": 8}, "full"),
    ({"name": "ewc", "lambda": 5000.0, "fisher_samples": 8, "fisher": "true"}, "full"),
    ({"name": "laplace", "lambda": 1000.0, "curvature": "kfac", "source_examples": 8}, "lora"),
    ({"name": "laplace", "lambda": 1000.0, "curvature": "diag", "fisher": "true"}, "lora"),
]


def test_every_registered_regularizer_has_a_row():
    assert {row[0]["name"] for row in ROWS} == set(REGULARIZERS)


def train_two_stages(section, method, steps=8):
    """Stage 1 on task a, stage 2 on task b, with the hooks called as train.py calls them.
    Returns the model, the penalties seen, the weights before each stage, and the regulariser."""
    model = tiny_model(method, seed=0)
    reg = build_regularizer(section, model=model)
    tasks = [("a", make_split(16, 10)), ("b", make_split(16, 11))]
    penalties, starts = [], []
    torch.manual_seed(0)
    for stage, (task, data) in enumerate(tasks, start=1):
        ctx = stage_ctx(model, stage, task, data, source=tasks[: stage - 1])
        starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
        reg.on_stage_start(ctx)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
        for step in range(steps):
            batch = OPS.collate(data, [(step * 4 + k) % len(data) for k in range(4)], PAD, CPU)
            loss = OPS.loss(model, task, batch)
            pen = reg.penalty(model)
            if pen is not None:
                penalties.append(float(pen.detach()))
                loss = loss + pen
            opt.zero_grad()
            loss.backward()
            opt.step()
        reg.on_stage_end(ctx)
    return model, penalties, starts, reg


def drift(model, section, starts) -> float:
    """What each regulariser is meant to hold back: l2_init, distance from θ₀; ewc, distance
    moved in stage 2 from task a's solution; laplace, the size of the LoRA update ΔW."""
    name = section["name"]
    if name == "laplace":
        return sum(
            float((lora_delta(layer).detach() ** 2).sum()) for layer in lora_layers(model).values()
        )
    ref = starts[0] if name == "l2_init" else starts[1]
    return sum(
        float(((p.detach() - ref[n]) ** 2).sum())
        for n, p in model.named_parameters()
        if not n.startswith("heads.")
    )


@pytest.mark.parametrize(("section", "method"), ROWS, ids=lambda r: str(r))
def test_regularizer_holds_weights_back(section, method, tmp_path):
    model, penalties, starts, reg = train_two_stages(section, method)
    free, _, free_starts, _ = train_two_stages({**section, "lambda": 0.0}, method)

    assert penalties and all(math.isfinite(p) for p in penalties)
    assert max(penalties) > 0
    assert drift(model, section, starts) < drift(free, section, free_starts)

    # What a resumed run reloads from its checkpoint gives the same penalty; a later
    # on_stage_start must not re-snapshot / re-estimate over the loaded state.
    save_regularizer_state(reg, tmp_path / STATE_FILE)
    fresh = build_regularizer(section, model=model)
    load_regularizer_state(fresh, tmp_path / STATE_FILE)
    fresh.on_stage_start(stage_ctx(model, 3, "b", make_split(2, 12)))
    assert_close(fresh.penalty(model), reg.penalty(model))

    # Under the training loop's bf16 autocast the penalty is still computed in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pen = reg.penalty(model)
    assert pen.dtype == torch.float32
    assert_close(pen, reg.penalty(model), rtol=1e-6)


def test_resume_without_state_file_is_an_error(tmp_path):
    with pytest.raises(ForgetlabError, match="cannot resume"):
        load_regularizer_state(EWC(), tmp_path / STATE_FILE)


@pytest.mark.parametrize(("section", "method"), ROWS, ids=lambda r: str(r))
def test_lambda_zero_gives_exactly_zero_penalty_and_gradient(section, method):
    model, penalties, _, reg = train_two_stages({**section, "lambda": 0.0}, method, steps=2)
    assert penalties and all(p == 0.0 for p in penalties)
    pen = reg.penalty(model)
    assert float(pen.detach()) == 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    if pen.requires_grad:
        assert all(float(g.abs().max()) == 0 for g in grads_of(pen, params))


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"name": "ewc", "lambda": -1.0}, "regularizer.lambda"),
        ({"name": "l2_init", "lambda": float("nan")}, "regularizer.lambda"),
        ({"name": "laplace", "curvature": "full"}, "regularizer.curvature"),
        ({"name": "laplace", "fisher": "exact"}, "regularizer.fisher"),
        ({"name": "laplace", "source_examples": 0}, "regularizer.source_examples"),
        ({"name": "ewc", "fisher_samples": -5}, "regularizer.fisher_samples"),
        ({"name": "ewc", "lambda": "big"}, "regularizer.lambda"),
        ({"name": "ewc", "lam": 1.0}, "regularizer.lam"),
        ({"name": "l2_init", "curvature": "kfac"}, "regularizer.curvature"),
        ({"name": "si"}, "regularizer.name"),
        ({"lambda": 1.0}, "regularizer.name"),
    ],
)
def test_bad_config_names_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_regularizer(section)


def test_build_defaults_and_none():
    assert build_regularizer(None) is None
    assert build_regularizer({"name": "none"}) is None
    ewc = build_regularizer({"name": "ewc"})
    assert isinstance(ewc, EWC) and ewc.cfg.lam == 5000.0 and ewc.cfg.fisher_samples == 500
    lap = build_regularizer({"name": "laplace", "lambda": 3})
    assert isinstance(lap, Laplace) and lap.cfg.lam == 3.0 and lap.cfg.source_examples == 256
    assert lap.cfg.curvature == "kfac" and lap.cfg.fisher == "empirical"
