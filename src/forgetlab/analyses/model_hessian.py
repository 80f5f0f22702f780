"""The Hessian of a model's loss: which parameters one eigenvalue is computed over
(`parameter_groups`) and the largest eigenvalue over one group (`largest_eigenvalue`), from the
solvers of `forgetlab.analyses.maths.lanczos`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from forgetlab.analyses.maths.lanczos import EigenResult, HessianOperator, lanczos, power_iteration
from forgetlab.errors import ForgetlabError

__all__ = ["largest_eigenvalue", "parameter_groups"]

# PEFT wraps a model as `PeftModel.base_model (a tuner).model (the original)`; names of the
# original model come back once this prefix is removed.
_PEFT_PREFIX = "base_model.model."

# `encoder.layer.3.`, `model.layers.3.`, `transformer.h.3.`, `encoder.block.3.` (T5).
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")

_SPECS = ("trainable", "modules", "layers")


# ---------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module, spec: str) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split a model's parameters into the groups one eigenvalue each is computed over.

    ``spec`` is one of:

    * ``"trainable"``: one group, ``"trainable"``, with every parameter that requires grad;
    * ``"modules"``: trainable parameters by the module they belong to or adapt. A PEFT
      adapter's parameters (``...query.lora_A.default.weight``, ``lora_B``, DoRA's
      magnitude, VeRA's lambdas, AdaLoRA's ``lora_E``, ``modules_to_save`` copies, ...) are
      grouped under the module PEFT wrapped (``...query``), like a plain ``...query.weight``
      and ``...query.bias``; a leading ``base_model.model.`` is dropped so group names are
      those of the original model;
    * ``"layers"``: trainable parameters by transformer layer index (``layer.N``,
      ``layers.N``, ``h.N``, ``block(s).N``; the first one in the name), as ``"layer N"``,
      and ``"other"`` for the rest (embeddings, head). Encoder and decoder layers with the
      same index share a group;
    * anything else: a regular expression; one group named by the spec with every parameter
      whose name it matches (``re.search``), trainable or not, so a layer of a frozen
      backbone can be measured (`largest_eigenvalue` enables its gradients for the time).

    Member names are exactly those of ``model.named_parameters()`` (usable with
    ``get_parameter`` or ``torch.func.functional_call``). Groups keep the model's order.
    """
    named = list(model.named_parameters())
    if spec in _SPECS:
        trainable = [(n, p) for n, p in named if p.requires_grad]
        if not trainable:
            raise ForgetlabError(
                f"parameter group spec {spec!r}: the model has no trainable parameters; "
                "use a regular expression to select frozen ones"
            )
        if spec == "trainable":
            return {"trainable": trainable}
        if spec == "modules":
            owners = _adapter_owners(model)
            return _group_by(trainable, lambda name: _module_key(name, owners))
        return _group_by_layer(trainable)
    return {spec: _match_regex(named, spec)}


def _group_by(
    named: list[tuple[str, nn.Parameter]], key: Callable[[str], str]
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, param in named:
        groups.setdefault(key(name), []).append((name, param))
    return groups


def _group_by_layer(
    named: list[tuple[str, nn.Parameter]],
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    groups = _group_by(named, _layer_key)
    # Numeric order ("layer 2" before "layer 10"), "other" last.
    order = sorted(groups, key=lambda k: (1, 0) if k == "other" else (0, int(k.split()[1])))
    return {k: groups[k] for k in order}


def _layer_key(name: str) -> str:
    match = _LAYER_RE.search(name)
    return f"layer {match.group(1)}" if match else "other"


def _adapter_owners(model: nn.Module) -> list[str]:
    """Names of the outermost PEFT tuner layers (modules that own adapter weights).

    Found by duck typing (PEFT's `BaseTunerLayer` and `ModulesToSaveWrapper` declare
    ``adapter_layer_names``) rather than a list of suffixes, so every PEFT method, present
    and future, is covered without importing peft.
    """
    owners: list[str] = []
    for name, module in model.named_modules():
        if not name or not isinstance(getattr(module, "adapter_layer_names", None), tuple):
            continue
        if not any(name.startswith(owner + ".") for owner in owners):
            owners.append(name)
    return owners


def _module_key(name: str, owners: list[str]) -> str:
    """Group name for a parameter: its adapted module, else its own module."""
    owner = next((o for o in owners if name.startswith(o + ".")), None)
    key = owner if owner is not None else name.rpartition(".")[0]
    key = key.removeprefix(_PEFT_PREFIX)
    return key or "<root>"


def _match_regex(
    named: list[tuple[str, nn.Parameter]], spec: str
) -> list[tuple[str, nn.Parameter]]:
    try:
        pattern = re.compile(spec)
    except re.error as err:
        raise ForgetlabError(
            f"parameter group spec {spec!r} is neither one of {', '.join(_SPECS)} "
            f"nor a valid regular expression ({err})"
        ) from err
    selected = [(n, p) for n, p in named if pattern.search(n)]
    if not selected:
        examples = ", ".join(n for n, _ in named[:5])
        raise ForgetlabError(
            f"parameter group spec {spec!r} matches no parameter; names look like: {examples}"
        )
    return selected


# ---------------------------------------------------------------------------------------
# Model-level entry point
# ---------------------------------------------------------------------------------------


def largest_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
    params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]],
    *,
    method: str = "lanczos",
    iters: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
) -> EigenResult:
    """Largest Hessian eigenvalue of the mean loss over ``batches`` w.r.t. ``params``.

    ``loss_fn(model, batch)`` returns the mean loss over one batch. Batches are weighted by
    size (``batch["labels"].shape[0]``; equally when a batch has no labels), so the operator
    is the Hessian of the mean loss over all examples, whatever the batch sizes.

    ``params`` is a list of parameters or of ``(name, parameter)`` pairs (one group from
    `parameter_groups`). During the computation the model is in eval mode (dropout would
    make ``H`` random) and exactly ``params`` require grad: frozen ones are enabled, so a
    frozen backbone's layer can be measured, and all others are disabled, so no graph is
    kept for them. Modes and ``requires_grad`` flags are restored afterwards, even on error.
    """
    if method not in ("lanczos", "power"):
        raise ForgetlabError(f"unknown eigenvalue method {method!r} (use 'lanczos' or 'power')")
    if not batches:
        raise ForgetlabError("largest_eigenvalue needs at least one batch")
    selected = _as_parameters(params)
    closures = [
        (lambda b=batch: loss_fn(model, b), weight)
        for batch, weight in zip(batches, _batch_weights(batches))
    ]
    operator = HessianOperator(closures, selected)
    solver = lanczos if method == "lanczos" else power_iteration
    with _only_these_require_grad(model, selected), _eval_mode(model), torch.enable_grad():
        return solver(operator.matvec, operator.dim, iters, tol, seed, device=selected[0].device)


def _as_parameters(
    params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]],
) -> list[nn.Parameter]:
    selected = [p[1] if isinstance(p, tuple) else p for p in params]
    if not selected:
        raise ForgetlabError("largest_eigenvalue needs at least one parameter")
    return selected


def _batch_weights(batches: Sequence[Any]) -> list[float]:
    """``n_i / N`` when every batch has labels (mean over examples), else ``1 / B``."""
    sizes = [
        int(b["labels"].shape[0]) if isinstance(b, Mapping) and "labels" in b else None
        for b in batches
    ]
    if any(s is None for s in sizes):
        return [1.0 / len(batches)] * len(batches)
    total = sum(sizes)
    return [s / total for s in sizes]


@contextmanager
def _only_these_require_grad(model: nn.Module, selected: list[nn.Parameter]) -> Iterator[None]:
    """Exactly ``selected`` require grad inside; every flag restored on exit."""
    params = list(model.parameters())
    known = {id(p) for p in params}
    params += [p for p in selected if id(p) not in known]  # e.g. a head outside the model
    wanted = {id(p) for p in selected}
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside; each submodule's own mode restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in saved:
            module.training = training
