"""The weights of a model's linear layers as its forward pass applies them, and the spectra
of their updates between two models.

PEFT adapters (LoRA, DoRA, VeRA, AdaLoRA, ...) are merged on a copy, never on the caller's
model, and names are those of the un-wrapped model, so a PEFT model can be compared with its
plain base model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from forgetlab.analyses.maths.spectrum import matrix_spectrum

__all__ = ["UpdateSpectra", "effective_linear_weights", "update_spectra", "weight_deltas"]


def _peft_types() -> tuple[type, ...]:
    """(PeftModel, BaseTuner, BaseTunerLayer, ModulesToSaveWrapper), imported lazily because
    importing PEFT takes a while and `weight_deltas` and the spectra do not need it."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    return PeftModel, BaseTuner, BaseTunerLayer, ModulesToSaveWrapper


def _merged_weight(layer: nn.Module, base_tuner_layer: type) -> torch.Tensor | None:
    """The weight an adapter layer's forward effectively applies, from a merged copy.

    Only one layer is copied at a time, so memory stays at one layer, not one model. The copy
    is upcast to float32 first, so merging adds no rounding beyond the float32 weights'.
    Disabled adapters and adapters that are already merged contribute nothing more, as in
    the forward pass.
    """
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):
        return None  # an adapted embedding or convolution
    merged = copy.deepcopy(layer).to("cpu", torch.float32)
    # A tuner layer may wrap another one (base_layer chains): merge all of them.
    for module in merged.modules():
        if isinstance(module, base_tuner_layer) and not (module.disable_adapters or module.merged):
            module.merge()
    return merged.get_base_layer().weight.detach()


def _saved_module(wrapper: nn.Module) -> nn.Module:
    """The module a ModulesToSaveWrapper forwards to (mirrors its `forward`)."""
    active = list(wrapper.active_adapters)
    missing = any(a not in wrapper.modules_to_save for a in active)
    if wrapper.disable_adapters or not active or missing:
        return wrapper.original_module
    return wrapper.modules_to_save[active[0]]


def _walk(
    module: nn.Module, prefix: str, types: tuple[type, ...], seen: set[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name in the un-wrapped model, effective weight) of every linear layer under module."""
    peft_model, base_tuner, tuner_layer, saved_wrapper = types
    if id(module) in seen:  # shared modules are listed once, as by `named_modules`
        return
    seen.add(id(module))
    # PEFT wrappers add name components (`base_model.model.`, `.base_layer`, ...) that the
    # plain model does not have: step through them without extending the prefix.
    if isinstance(module, peft_model):
        yield from _walk(module.base_model, prefix, types, seen)
    elif isinstance(module, base_tuner):
        yield from _walk(module.model, prefix, types, seen)
    elif isinstance(module, saved_wrapper):
        yield from _walk(_saved_module(module), prefix, types, seen)
    elif isinstance(module, tuner_layer):
        weight = _merged_weight(module, tuner_layer)
        if weight is not None:
            yield prefix, weight
    elif isinstance(module, nn.Linear):
        # copy=True: without it a float32 CPU weight would come back as the model's own storage
        yield prefix, module.weight.detach().to("cpu", torch.float32, copy=True)
    else:
        for name, child in module.named_children():
            yield from _walk(child, f"{prefix}.{name}" if prefix else name, types, seen)


@torch.no_grad()
def effective_linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weight of every `nn.Linear` as the forward pass applies it, keyed by its name in the
    un-wrapped model (the one `get_peft_model` was given). Detached float32 CPU tensors
    (copies: changing them does not change the model).

    PEFT adapter layers, at any depth (a PeftModel inside a task model too), are merged on a
    copy of that layer; the caller's model is not modified. Biases are not included.
    """
    return dict(_walk(model, "", _peft_types(), set()))


def weight_deltas(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """ΔW = tuned - base in float64, for names in both with the same 2-D shape (others are
    skipped: new heads, resized embeddings), in `tuned`'s order."""
    deltas = {}
    for name, w in tuned.items():
        b = base.get(name)
        if b is not None and w.dim() == 2 and b.shape == w.shape:
            deltas[name] = w.detach().to("cpu", torch.float64) - b.detach().to("cpu", torch.float64)
    return deltas


@dataclass
class UpdateSpectra:
    """What `update_spectra` returns.

    spectra: one `matrix_spectrum` dict per linear layer whose ΔW is not exactly zero.
    unchanged: names of layers whose ΔW is exactly zero (frozen or never updated).
    unmatched: names in only one model or with different shapes (not compared).
    """

    spectra: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    @property
    def n_unchanged(self) -> int:
        return len(self.unchanged)


def update_spectra(
    base_model: nn.Module, tuned_model: nn.Module, energy: float = 0.9, seed: int = 0
) -> UpdateSpectra:
    """Spectrum of ΔW for every linear layer fine-tuning changed (see `UpdateSpectra`).

    Either model may carry PEFT adapters; layers are matched by their un-wrapped names.
    """
    base = effective_linear_weights(base_model)
    tuned = effective_linear_weights(tuned_model)
    result = UpdateSpectra(unmatched=sorted(set(base).symmetric_difference(tuned)))
    for name, w in tuned.items():
        if name not in base:
            continue
        # One layer at a time: all float64 deltas at once would double the memory again.
        delta = weight_deltas({name: base[name]}, {name: w}).get(name)
        if delta is None:
            result.unmatched.append(name)
        elif not torch.any(delta):
            result.unchanged.append(name)
        else:
            result.spectra.append(matrix_spectrum(name, delta, energy, seed))
    return result
