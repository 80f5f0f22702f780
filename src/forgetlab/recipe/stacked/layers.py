"""K prepared copies of one model as one batched model, without vmap over the model's code.

Every module whose parameters train (or differ between the trials) is replaced by a stacked
twin holding the K trials' parameters as [K, ...] tensors; the batch is K contiguous blocks of
`rows` rows, block k being trial k's, and a stacked layer applies trial k's slice to block k
(`bmm` over [K, rows * L, in]). Everything else the model computes row by row (attention,
softmax, GELU, the frozen base layers of LoRA) then runs unchanged on the concatenated batch:
a frozen base layer is one GEMM over all K trials' rows, and under PEFT only `lora_A` /
`lora_B` are stacked. PEFT layers that keep their trained tensors in ParameterDicts ((IA)³,
VeRA, AdaLoRA) are stacked in place instead (`forgetlab.recipe.stacked.in_place`). Trials
that left the stack (finished, diverged) are skipped through `Layout.active`: their rows are
no longer in the batch and their slices are not read (`forgetlab.recipe.stacked.layout`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.lora.dora import DoraLinearLayer
from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.recipe.stacked.in_place import IN_PLACE, stack_in_place
from forgetlab.recipe.stacked.layout import (
    Layout,
    autocast_dtype,
    grad_to_add_into,
    stack_params,
)


class StackedLinear(nn.Module):
    """K nn.Linear layers: weight [K, out, in], bias [K, out]."""

    def __init__(self, layers: list[nn.Linear], layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        self.in_features, self.out_features = layers[0].in_features, layers[0].out_features
        self.weight = stack_params([m.weight for m in layers])
        self.bias = stack_params([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        blocks = x.reshape(len(lay.active), -1, x.shape[-1])
        dtype = autocast_dtype(x.device)  # what (b)bmm casts weight and bias to, as F.linear
        weight = lay.take(self.weight, dtype).transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(blocks, weight)
        else:
            out = torch.baddbmm(lay.take(self.bias, dtype).unsqueeze(1), blocks, weight)
        return out.reshape(*x.shape[:-1], self.out_features)


class StackedLayerNorm(nn.Module):
    """K nn.LayerNorm layers over the last dimension: weight and bias [K, D]."""

    def __init__(self, layers: list[nn.LayerNorm], layout: Layout) -> None:
        super().__init__()
        if len(layers[0].normalized_shape) != 1 or layers[0].weight is None:
            raise ConfigError("stacked trials: only LayerNorm over the last dimension stacks")
        self.layout = layout
        self.normalized_shape, self.eps = layers[0].normalized_shape, layers[0].eps
        self.weight = stack_params([m.weight for m in layers])
        self.bias = stack_params([m.bias for m in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        blocks = F.layer_norm(
            x.reshape(len(lay.active), -1, x.shape[-1]), self.normalized_shape, eps=self.eps
        )
        out = blocks * lay.take(self.weight).unsqueeze(1)
        if self.bias is not None:
            out = out + lay.take(self.bias).unsqueeze(1)
        return out.reshape(x.shape)


class _Lookup(torch.autograd.Function):
    """Rows of a [K * V, D] view of the stacked table, whose backward adds the rows' gradients
    into the table's `.grad` in place (`index_add_`) and hands autograd nothing: an embedding's
    own backward writes a fresh dense [K, V, D] gradient every step (zeros, 375 MB for eight
    MiniLMs: a third of a full-FT stack's step in page faults and memset), where this one adds
    into the parameter's kept buffer. What reaches `.grad` is what F.embedding's would give."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, module: StackedEmbedding):
        ctx.save_for_backward(ids)
        ctx.module = module
        return F.embedding(ids, weight.view(-1, weight.shape[-1]))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        module = ctx.module
        weight = module.weight
        if module.padding_idx is not None:  # as padding_idx: pad tokens add no gradient
            pad = (ids % weight.shape[1] == module.padding_idx).unsqueeze(-1)
            grad = grad.masked_fill(pad, 0)
        target = grad_to_add_into(weight)
        width = weight.shape[-1]
        target.view(-1, width).index_add_(
            0, ids.reshape(-1), grad.reshape(-1, width).to(target.dtype)
        )
        return None, None, None


class StackedEmbedding(nn.Module):
    """K nn.Embedding tables: weight [K, V, D]. Ids with a leading dimension of 1 (BERT's
    broadcast position ids) are looked up in every trial's table and repeated over its rows."""

    def __init__(self, layers: list[nn.Embedding], layout: Layout) -> None:
        super().__init__()
        first = layers[0]
        if first.max_norm is not None or first.sparse:
            raise ConfigError("stacked trials: embeddings with max_norm or sparse do not stack")
        self.layout = layout
        self.padding_idx = first.padding_idx
        self.weight = stack_params([m.weight for m in layers])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        trials = len(lay.active)
        broadcast = ids.shape[0] == 1 and trials * lay.rows != 1  # e.g. BERT's position ids
        blocks = ids.expand(trials, -1) if broadcast else ids.reshape(trials, -1)
        # One lookup in the K tables as one [K * V, D] table, each block's ids offset to its
        # trial's table (trials that left are neither read nor copied out).
        flat = blocks + lay.offsets(ids.device, self.weight.shape[1])
        if self.weight.requires_grad and torch.is_grad_enabled():
            out = _Lookup.apply(self.weight, flat, self)
        else:
            out = F.embedding(flat, self.weight.view(-1, self.weight.shape[-1]))
        if broadcast:  # each trial's lookup repeated over its rows
            return out.unsqueeze(1).expand(trials, lay.rows, *out.shape[1:]).flatten(0, 1)
        return out.reshape(*ids.shape, self.weight.shape[-1])


class StackedDora(nn.Module):
    """K of PEFT's DoraLinearLayer: the magnitudes [K, out]. As PEFT's forward (the output
    added to the base layer's), per trial: its norm of W + s·B_k·A_k over each output row
    (detached, as DoRA section 4.3 and PEFT), its magnitude over that norm, applied to its
    block; B_k·A_k from the stacked `lora_A` / `lora_B` weights."""

    def __init__(self, layers: list[nn.Module], layout: Layout) -> None:
        super().__init__()
        if layers[0].fan_in_fan_out:
            raise ConfigError("stacked trials: DoRA with fan_in_fan_out (Conv1D) does not stack")
        self.layout = layout
        self.weight = stack_params([m.weight for m in layers])

    def forward(
        self,
        x: torch.Tensor,
        *,
        lora_A: nn.Module,
        lora_B: nn.Module,
        scaling: float,
        base_layer: nn.Module,
        base_result: torch.Tensor | None = None,
        adapter_name: str = "default",
    ) -> torch.Tensor:
        lay = self.layout
        if not isinstance(lora_A, StackedLinear) or not isinstance(lora_B, StackedLinear):
            raise ConfigError("stacked trials: DoRA needs its lora_A and lora_B stacked")
        lora_weight = torch.bmm(lay.take(lora_B.weight), lay.take(lora_A.weight)).to(x.dtype)
        weight = base_layer.weight
        weight = (lay.take(weight) if weight.dim() == 3 else weight.unsqueeze(0)).to(x.dtype)
        with torch.no_grad():
            norm = torch.linalg.norm(weight + scaling * lora_weight, dim=2).to(weight.dtype)
        scale = (lay.take(self.weight) / norm).unsqueeze(1)  # [trials, 1, out]
        lora_result = lora_B(lora_A(x))
        blocks = len(lay.active), -1, lora_result.shape[-1]
        if base_result is None:  # dropout on x: W x without the bias, as PEFT
            rows = x.reshape(len(lay.active), -1, x.shape[-1])
            base = torch.bmm(rows, weight.transpose(1, 2).expand(len(lay.active), -1, -1))
        else:
            bias = getattr(base_layer, "bias", None)
            if bias is not None:
                base_result = base_result.reshape(blocks) - (
                    lay.take(bias).unsqueeze(1) if bias.dim() == 2 else bias
                )
            base = base_result.reshape(blocks)
        low = lora_result.reshape(blocks)
        return ((scale - 1) * base + scale * low * scaling).reshape(lora_result.shape)


STACKED = {
    nn.Linear: StackedLinear,
    nn.LayerNorm: StackedLayerNorm,
    nn.Embedding: StackedEmbedding,
    DoraLinearLayer: StackedDora,
}


@dataclass
class StackedModel:
    """The batched model (`model`, the first trial's module tree with stacked layers), its
    `layout`, and which stacked modules came from which module name of the trials' models."""

    model: nn.Module
    layout: Layout
    stacked: dict[str, nn.Module]

    def named_stacked_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, module in self.stacked.items():
            for pname, p in module.named_parameters(recurse=False):
                yield f"{name}.{pname}", p

    def slices(self, trial: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Trial `trial`'s slices of the stacked parameters and of their gradients (those that
        have one), by its own model's parameter names: views, for a method's `step_hooks` to
        read and write in place."""
        params, grads = {}, {}
        for name, p in self.named_stacked_parameters():
            params[name] = p.detach()[trial]
            if p.grad is not None:
                grads[name] = p.grad[trial]
        return params, grads

    @torch.no_grad()
    def copy_to(self, trial: int, model: nn.Module) -> None:
        """Write trial `trial`'s slices into its own plain model (to score or save it)."""
        for name, p in self.named_stacked_parameters():
            model.get_parameter(name).copy_(p[trial])


class TrialParameters:
    """Trial `trial`'s parameters as the stack holds them, under the names of its own model:
    its slices of the stacked parameters (views: gradients flow into the stack) and the shared
    ones as they are. What a stackable regulariser's `penalty` reads."""

    def __init__(self, stack: StackedModel, trial: int) -> None:
        self.stack, self.trial = stack, trial
        self._stacked = {name for name, _ in stack.named_stacked_parameters()}

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in self.stack.model.named_parameters():
            yield name, p[self.trial] if name in self._stacked else p

    def parameters(self) -> Iterator[torch.Tensor]:
        return (p for _, p in self.named_parameters())


def _differs(modules: list[nn.Module]) -> bool:
    first = dict(modules[0].named_parameters(recurse=False))
    if any(p.requires_grad for p in first.values()):
        return True
    rest = [dict(m.named_parameters(recurse=False)) for m in modules[1:]]
    return any(not torch.equal(first[n], p) for params in rest for n, p in params.items())


def _check_same_shapes(models: list[nn.Module]) -> None:
    """Refuse trials whose parameters differ in name or shape (EVA's ranks follow the
    calibration batches, which each seed draws anew) with a line naming the first one."""
    first = {n: tuple(p.shape) for n, p in models[0].named_parameters()}
    for model in models[1:]:
        other = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for name in sorted(set(first) | set(other)):
            if first.get(name) != other.get(name):
                shapes = [("absent" if s is None else "x".join(map(str, s)))
                          for s in (first.get(name), other.get(name))]  # fmt: skip
                raise ConfigError(
                    f"stacked trials: parameter {name} is {shapes[0]} in one trial, "
                    f"{shapes[1]} in another (a data-dependent rank?); stack trials of one "
                    "seed, or run them one by one"
                )


def stack_models(models: list[nn.Module]) -> StackedModel:
    """One batched model from K models of the same structure (K prepared trials). The trials'
    models are left untouched; frozen modules equal in every trial are shared, not copied."""
    _check_same_shapes(models)
    layout = Layout(size=len(models))
    skeleton = copy.deepcopy(models[0])
    stacked: dict[str, nn.Module] = {}
    owner: dict[int, str] = {}  # a parameter of trial 0's stacked modules: its module's name
    inside = None  # the prefix of a layer stacked in place: its modules are done
    for name, module in list(skeleton.named_modules()):
        if inside is not None and name.startswith(inside):
            continue
        if type(module) in IN_PLACE and any(p.requires_grad for p in module.parameters()):
            twins = [m.get_submodule(name) for m in models]
            for attr, holder in stack_in_place(module, twins, layout).items():
                stacked[f"{name}.{attr}"] = holder
            inside = f"{name}."
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        twins = [m.get_submodule(name) for m in models]
        if not _differs(twins):
            continue
        if not name:
            raise ConfigError("stacked trials: the model's own parameters cannot be stacked")
        cls = STACKED.get(type(module))
        if cls is None:
            raise ConfigError(
                f"stacked trials: module {name} ({type(module).__name__}) trains but cannot be "
                f"stacked (stackable: {', '.join(t.__name__ for t in [*STACKED, *IN_PLACE])})"
            )
        for p in twins[0].parameters(recurse=False):
            if id(p) in owner:  # stacked apart, the tied copies would train apart
                raise ConfigError(
                    f"stacked trials: {owner[id(p)]} and {name} share a weight that trains "
                    "(tied embeddings); untie them or run these trials one by one"
                )
            owner[id(p)] = name
        stacked[name] = cls(twins, layout)
        parent, _, child = name.rpartition(".")
        skeleton.get_submodule(parent)._modules[child] = stacked[name]
    return StackedModel(model=skeleton, layout=layout, stacked=stacked)
