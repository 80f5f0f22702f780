"""Largest Hessian eigenvalue: HVPs, eigensolvers and parameter groups against exact answers.

Exact Hessians come from `torch.func.hessian` (forward-over-reverse, an independent code
path from the double backward under test), on models small enough to form them: a tiny
MLP and a 2-layer, 32-wide BERT with LoRA. Everything runs in float64 so agreement can be
asserted to ~1e-6 relative or better.
"""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.func import functional_call, hessian

from forgetlab.analyses.maths.lanczos import (
    EigenResult,
    HessianOperator,
    hvp,
    lanczos,
    power_iteration,
)
from forgetlab.analyses.model_hessian import largest_eigenvalue, parameter_groups
from forgetlab.errors import ForgetlabError

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def exact_hessian(model: nn.Module, named: list[tuple[str, nn.Parameter]], loss_of_model):
    """Dense Hessian of ``loss_of_model(call)`` w.r.t. ``named``, by torch.func.

    ``call(**kwargs)`` runs the whole model with only the ``named`` parameters replaced by
    the ones being differentiated (the rest stay as they are).
    """
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(flat):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[start : start + shape.numel()].view(shape)
            start += shape.numel()
        return loss_of_model(lambda *args, **kw: functional_call(model, params, args, kw))

    return hessian(f)(flat0).detach()


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def dense(matvec, dim: int) -> torch.Tensor:
    """The operator as a matrix, one column per basis vector."""
    eye = torch.eye(dim, dtype=torch.float64)
    return torch.stack([matvec(eye[i]) for i in range(dim)], dim=1)


def symmetric_with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dim = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


# ---------------------------------------------------------------------------------------
# A tiny MLP (83 parameters) with cross-entropy: exact Hessian available
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=gen)
    named = list(model.named_parameters())
    h = exact_hessian(model, named, lambda call: F.cross_entropy(call(x), y))
    return model, x, y, h


def mlp_operator(model, x, y) -> HessianOperator:
    return HessianOperator([(lambda: F.cross_entropy(model(x), y), 1.0)], list(model.parameters()))


def test_hvp_and_operator_match_exact_hessian_vector_product(mlp):
    model, x, y, h = mlp
    params = list(model.parameters())
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = h @ v

    pieces, start = [], 0
    for p in params:
        pieces.append(v[start : start + p.numel()].view(p.shape))
        start += p.numel()
    got = torch.cat(
        [t.reshape(-1) for t in hvp(lambda: F.cross_entropy(model(x), y), params, pieces)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)

    operator = mlp_operator(model, x, y)
    assert operator.dim == 83
    torch.testing.assert_close(operator.matvec(v), expected, rtol=1e-10, atol=1e-12)


def test_lanczos_matches_exact_extreme_eigenvalues(mlp):
    model, x, y, h = mlp
    eig = torch.linalg.eigvalsh(h)
    top, bottom = float(eig[-1]), float(eig[0])
    assert bottom < 0 < top  # away from a minimum the Hessian is indefinite
    operator = mlp_operator(model, x, y)

    # Stopped by the tolerance, well before the Krylov space is exhausted.
    early = lanczos(operator.matvec, operator.dim, iters=60, tol=1e-10)
    assert early.converged and early.iterations < operator.dim
    assert rel(early.value, top) < 1e-6
    # Ritz values of a growing Krylov space only increase (interlacing).
    assert all(b >= a - 1e-12 for a, b in zip(early.history, early.history[1:]))

    # Without a tolerance it runs until the space is exhausted, where both ends are exact.
    full = lanczos(operator.matvec, operator.dim, iters=200, tol=0.0)
    assert full.converged and full.iterations <= operator.dim
    assert rel(full.value, top) < 1e-6
    assert rel(full.min_value, bottom) < 1e-6
    assert full.method == "lanczos"


def test_power_iteration_matches_largest_magnitude_eigenvalue(mlp):
    model, x, y, h = mlp
    eig = torch.linalg.eigvalsh(h)
    dominant = float(eig[eig.abs().argmax()])
    operator = mlp_operator(model, x, y)
    result = power_iteration(operator.matvec, operator.dim, iters=1000, tol=1e-12)
    assert result.converged and result.min_value is None and result.method == "power"
    assert rel(result.value, dominant) < 1e-6
    # Same seed, same start vector, same answer.
    again = power_iteration(operator.matvec, operator.dim, iters=1000, tol=1e-12)
    assert again.history == result.history


def test_batches_weighted_by_size_give_hessian_of_mean_over_union(mlp):
    model, x, y, _ = mlp
    sizes = (7, 13)
    batches = [
        {"x": x[:7], "labels": y[:7]},
        {"x": x[7:], "labels": y[7:]},
    ]
    named = list(model.named_parameters())
    union = exact_hessian(model, named, lambda call: F.cross_entropy(call(x), y))

    operator = HessianOperator(
        [
            (lambda b=b: F.cross_entropy(model(b["x"]), b["labels"]), n / 20)
            for b, n in zip(batches, sizes)
        ],
        [p for _, p in named],
    )
    torch.testing.assert_close(dense(operator.matvec, operator.dim), union, rtol=1e-9, atol=1e-12)

    result = largest_eigenvalue(
        model,
        lambda m, b: F.cross_entropy(m(b["x"]), b["labels"]),
        batches,
        named,
        iters=83,
        tol=1e-10,
    )
    top = float(torch.linalg.eigvalsh(union)[-1])
    assert rel(result.value, top) < 1e-6
    # Equal batch weights would be a different operator: the check above can fail.
    halves = [
        exact_hessian(model, named, lambda call, b=b: F.cross_entropy(call(b["x"]), b["labels"]))
        for b in batches
    ]
    unweighted_top = float(torch.linalg.eigvalsh((halves[0] + halves[1]) / 2)[-1])
    assert rel(unweighted_top, top) > 1e-3


# ---------------------------------------------------------------------------------------
# Eigensolvers on matrices with a known spectrum
# ---------------------------------------------------------------------------------------


def test_indefinite_matrix_lanczos_gives_top_and_bottom_power_gives_largest_magnitude():
    spectrum = [3.0, -5.0] + torch.linspace(-1.0, 2.0, 38).tolist()
    a = symmetric_with_spectrum(spectrum)

    result = lanczos(lambda v: a @ v, 40, iters=40, tol=1e-12)
    assert result.value == pytest.approx(3.0, rel=1e-8)
    assert result.min_value == pytest.approx(-5.0, rel=1e-8)

    # Power iteration finds the eigenvalue of largest magnitude: the negative one, not the
    # sharpest upward curvature. That is why Lanczos is the default.
    power = power_iteration(lambda v: a @ v, 40, iters=500, tol=1e-12)
    assert power.value == pytest.approx(-5.0, rel=1e-6)

    # Too few iterations: an estimate, honestly flagged as not converged.
    short = lanczos(lambda v: a @ v, 40, iters=3, tol=1e-12)
    assert short.iterations == 3 and not short.converged
    assert len(short.history) == 3 and short.value < 3.0


def test_lanczos_keeps_its_basis_orthonormal_under_a_dominant_eigenvalue():
    # A dominant eigenvalue (like a sharp Hessian direction) is where plain Lanczos loses
    # orthogonality: once it has converged, rounding re-injects that direction at every
    # step. Without re-orthogonalisation (or with a single Gram-Schmidt pass) the queried
    # vectors stop being orthonormal and the bottom Ritz value becomes a spurious -3.2.
    a = symmetric_with_spectrum([1e4, 1e3] + torch.linspace(0.0, 1.0, 98).tolist(), seed=0)
    queried = []

    def matvec(v):
        queried.append(v.clone())
        return a @ v

    result = lanczos(matvec, 100, iters=80, tol=0.0)
    q = torch.stack(queried)
    torch.testing.assert_close(q @ q.T, torch.eye(80, dtype=torch.float64), rtol=0, atol=1e-12)
    assert result.value == pytest.approx(1e4, rel=1e-12)
    assert result.min_value == pytest.approx(0.0, abs=1e-8)


def test_lanczos_breakdown_when_dim_is_below_iters_is_exact():
    spectrum = [2.0, -1.0, 0.5, 0.25, 4.0]
    a = symmetric_with_spectrum(spectrum, seed=3)
    result = lanczos(lambda v: a @ v, 5, iters=30, tol=0.0)
    assert result.converged and result.iterations <= 5
    assert result.value == pytest.approx(4.0, rel=1e-10)
    assert result.min_value == pytest.approx(-1.0, rel=1e-10)


def test_lanczos_stops_once_krylov_space_is_invariant():
    # Three distinct eigenvalues: the Krylov space has dimension 3, whatever the start.
    a = symmetric_with_spectrum([5.0] * 4 + [-2.0] * 3 + [1.0] * 5, seed=4)
    result = lanczos(lambda v: a @ v, 12, iters=30, tol=0.0)
    assert result.converged and result.iterations == 3
    assert result.value == pytest.approx(5.0, rel=1e-10)
    assert result.min_value == pytest.approx(-2.0, rel=1e-10)


def test_eigen_result_to_dict_is_json_ready():
    result = lanczos(lambda v: 2.0 * v, 4, iters=10)
    assert isinstance(result, EigenResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["value"] == pytest.approx(2.0)
    assert set(data) == {"value", "min_value", "history", "iterations", "converged", "method"}


# ---------------------------------------------------------------------------------------
# Parameter groups on a tiny BERT, with and without PEFT
# ---------------------------------------------------------------------------------------


def tiny_bert_config(**kw):
    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        **kw,
    )


def with_lora(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(
            model, peft.LoraConfig(r=2, target_modules=["query", "value"], **kw)
        )


@pytest.fixture(scope="module")
def lora_bert():
    torch.manual_seed(0)
    return with_lora(transformers.BertModel(tiny_bert_config()))


def test_modules_groups_lora_a_and_b_under_the_adapted_module(lora_bert):
    groups = parameter_groups(lora_bert, "modules")
    assert list(groups) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    ]
    for key, members in groups.items():
        names = [n for n, _ in members]
        assert names == [
            f"base_model.model.{key}.lora_A.default.weight",
            f"base_model.model.{key}.lora_B.default.weight",
        ]
        # Member names address the model's own parameters.
        assert all(lora_bert.get_parameter(n) is p for n, p in members)


def test_layers_and_trainable_groups(lora_bert):
    layers = parameter_groups(lora_bert, "layers")
    assert list(layers) == ["layer 0", "layer 1"]
    assert all(len(members) == 4 for members in layers.values())
    assert all(".layer.1." in n for n, _ in layers["layer 1"])
    trainable = parameter_groups(lora_bert, "trainable")
    assert list(trainable) == ["trainable"] and len(trainable["trainable"]) == 8


def test_regex_group_selects_frozen_parameters_and_fails_loudly(lora_bert):
    groups = parameter_groups(lora_bert, r"layer\.1\.output\.dense")
    names = [n for n, _ in groups[r"layer\.1\.output\.dense"]]
    assert names == [
        "base_model.model.encoder.layer.1.output.dense.weight",
        "base_model.model.encoder.layer.1.output.dense.bias",
    ]
    with pytest.raises(ForgetlabError, match=r"nothing_like_this.*names look like: base_model"):
        parameter_groups(lora_bert, "nothing_like_this")
    with pytest.raises(ForgetlabError, match="regular expression"):
        parameter_groups(lora_bert, "layer.(")


def test_full_model_groups_weight_and_bias_by_module_and_layer():
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_bert_config())
    modules = parameter_groups(model, "modules")
    assert [n for n, _ in modules["encoder.layer.0.attention.self.query"]] == [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.bias",
    ]
    layers = parameter_groups(model, "layers")
    assert list(layers) == ["layer 0", "layer 1", "other"]
    other = [n for n, _ in layers["other"]]
    assert "embeddings.word_embeddings.weight" in other and "pooler.dense.weight" in other


def test_modules_groups_dora_magnitude_and_modules_to_save():
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(tiny_bert_config(num_labels=3))
    model = with_lora(base, use_dora=True, modules_to_save=["classifier"])
    groups = parameter_groups(model, "modules")
    query = [
        n.rsplit("query.", 1)[1] for n, _ in groups["bert.encoder.layer.0.attention.self.query"]
    ]
    assert query == [
        "lora_A.default.weight",
        "lora_B.default.weight",
        "lora_magnitude_vector.default.weight",
    ]
    assert [n for n, _ in groups["classifier"]] == [
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    ]


# ---------------------------------------------------------------------------------------
# largest_eigenvalue on a LoRA BERT classifier, against torch.func
# ---------------------------------------------------------------------------------------


def bert_loss(model, batch):
    return F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])


def bert_batches():
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, 100, (n, 8), generator=gen),
            "labels": torch.randint(0, 3, (n,), generator=gen),
        }
        for n in (3, 5)
    ]


def lora_classifier(attn_implementation: str):
    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=3, attn_implementation=attn_implementation)
    base = transformers.BertForSequenceClassification(config)
    # Random (not zero) lora_B, so the LoRA Hessian is not degenerate.
    return with_lora(base, init_lora_weights=False).double()


@pytest.fixture(scope="module")
def eager_classifier():
    return lora_classifier("eager")


def exact_top_eigenvalue(model, named, batches) -> float:
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    model.eval()
    try:
        h = exact_hessian(
            model, named, lambda call: F.cross_entropy(call(input_ids=ids).logits, labels)
        )
    finally:
        model.train()
    return float(torch.linalg.eigvalsh(h)[-1])


@pytest.mark.parametrize(
    ("spec", "group"),
    [
        ("modules", "bert.encoder.layer.1.attention.self.value"),  # a LoRA adapter
        ("classifier", "classifier"),  # the frozen head: gradients enabled for the time
    ],
)
def test_largest_eigenvalue_matches_exact_hessian_and_restores_state(eager_classifier, spec, group):
    model = eager_classifier
    named = parameter_groups(model, spec)[group]
    batches = bert_batches()
    exact = exact_top_eigenvalue(model, named, batches)
    model.train()
    dropout = model.base_model.model.bert.embeddings.dropout
    dropout.eval()  # a submodule's own mode must survive, not just the top-level flag
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    result = largest_eigenvalue(model, bert_loss, batches, named, iters=60, tol=1e-10)

    assert torch.isfinite(torch.tensor(result.value)) and result.converged
    assert rel(result.value, exact) < 1e-4
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and model.base_model.model.bert.encoder.training
    assert not dropout.training
    dropout.train()


def test_sdpa_attention_has_no_double_backward_and_says_to_use_eager():
    # Checked on torch 2.13 CPU: SDPA dispatches to a fused flash kernel whose backward is
    # not differentiable, so HVPs fail; the error must tell the user what to do.
    model = lora_classifier("sdpa")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    named = parameter_groups(model, "trainable")["trainable"]
    with pytest.raises(ForgetlabError, match=r'attn_implementation="eager".*Original error'):
        largest_eigenvalue(model, bert_loss, bert_batches(), named, iters=5)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_largest_eigenvalue_rejects_bad_requests(mlp):
    model, x, y, _ = mlp

    def loss(m, b):
        return F.cross_entropy(m(b["x"]), b["labels"])

    batches = [{"x": x, "labels": y}]
    with pytest.raises(ForgetlabError, match="unknown eigenvalue method"):
        largest_eigenvalue(model, loss, batches, list(model.parameters()), method="qr")
    # A parameter the loss never touches: said plainly, not blamed on attention kernels.
    stray = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ForgetlabError, match="does not depend on the selected parameters"):
        largest_eigenvalue(model, loss, batches, [stray])
    assert all(p.requires_grad for p in model.parameters())
