"""Spectrum of the weight update ΔW = W_tuned - W_base of every linear layer: how many
directions fine-tuning actually used.

LoRA's ΔW has rank <= r by construction; full fine-tuning's is full rank numerically but may
concentrate its energy in few directions. `rank90` (directions holding 90% of ‖ΔW‖²_F) makes
the two comparable, and `random_reference` gives what an unstructured (Gaussian) update of
the same shape and norm would need, so "low rank" means "well below that reference".

Weights are compared as the forward pass uses them: PEFT adapters (LoRA, DoRA, VeRA, AdaLoRA,
...) are merged on a copy, never on the caller's model, and names are those of the un-wrapped
model, so a PEFT model can be compared with its plain base model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "UpdateSpectra",
    "effective_linear_weights",
    "matrix_spectrum",
    "numerical_rank",
    "random_reference",
    "rank_for_energy",
    "singular_values",
    "stable_rank",
    "update_spectra",
    "weight_deltas",
]

Array = np.ndarray | torch.Tensor

# ---------------------------------------------------------------------------------------------
# Effective weights


def _peft_types() -> tuple[type, ...]:
    """(PeftModel, BaseTuner, BaseTunerLayer, ModulesToSaveWrapper), imported lazily because
    importing PEFT takes a while and the spectrum helpers below do not need it."""
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


# ---------------------------------------------------------------------------------------------
# Spectra


def singular_values(delta: Array) -> np.ndarray:
    """Singular values of a matrix, descending, float64."""
    t = torch.as_tensor(delta).detach().to("cpu", torch.float64)
    return torch.linalg.svdvals(t).numpy()


def _descending(s: Array) -> np.ndarray:
    return np.sort(np.abs(np.asarray(s, dtype=np.float64)))[::-1]


def rank_for_energy(s: Array, energy: float = 0.9) -> int:
    """Smallest k with s_1² + ... + s_k² >= energy · Σ s_i²; 0 for a zero matrix."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must be in (0, 1]")
    cumulative = np.cumsum(_descending(s) ** 2)
    if cumulative.size == 0 or cumulative[-1] == 0:
        return 0
    # The total is the last cumulative sum itself, so energy=1 gives exactly the number of
    # non-zero values rather than depending on summation order.
    return int(np.searchsorted(cumulative, energy * cumulative[-1], side="left") + 1)


def numerical_rank(s: Array, shape: tuple[int, ...], rtol: float | None = None) -> int:
    """Number of singular values above rtol · s_max.

    The default rtol = max(shape) · eps(float32), numpy's `matrix_rank` rule at float32
    precision, because ΔW is a difference of float32 weights: anything smaller is rounding.
    Caveat: that rounding scales with |W|, not |ΔW|, so for an update that is tiny compared
    with the weights (few steps, small learning rate) rounding noise can pass the threshold;
    prefer `rank_for_energy` there or pass a larger rtol.
    """
    s = _descending(s)
    if s.size == 0 or s[0] == 0:
        return 0
    if rtol is None:
        rtol = max(shape) * float(np.finfo(np.float32).eps)
    return int(np.count_nonzero(s > rtol * s[0]))


def stable_rank(s: Array) -> float:
    """Σ s_i² / s_max² (‖ΔW‖²_F / ‖ΔW‖²_2), a smooth rank in [1, rank]; 0 for a zero matrix."""
    s = _descending(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s**2) / s[0] ** 2)


@lru_cache(maxsize=64)
def _unit_gaussian_spectrum(shape: tuple[int, int], seed: int) -> np.ndarray:
    # Cached: a model has few distinct layer shapes, and the SVD of a large one is the cost.
    rng = np.random.default_rng(seed)
    s = singular_values(rng.standard_normal(shape))
    s /= np.sqrt(np.sum(s**2))
    s.flags.writeable = False  # shared by every caller through the cache
    return s


def random_reference(shape: tuple[int, ...], frobenius: float, seed: int = 0) -> np.ndarray:
    """Singular values (descending) of a Gaussian matrix of this shape, rescaled to the given
    Frobenius norm: the spectrum of an unstructured update of the same size."""
    if len(shape) != 2:
        raise ValueError(f"shape must be 2-D, got {tuple(shape)}")
    return _unit_gaussian_spectrum((int(shape[0]), int(shape[1])), seed) * float(frobenius)


def matrix_spectrum(name: str, delta: Array, energy: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """Summary of one ΔW (out × in), with plain Python values so it can be written as JSON.

    `rank90` is the rank for `energy` (named for the default 0.9; `energy` is stored too),
    `random_rank90` the same for `random_reference`, `max_rank` = min(out, in).
    """
    t = torch.as_tensor(delta)
    if t.dim() != 2:
        raise ValueError(f"{name}: ΔW must be 2-D, got shape {tuple(t.shape)}")
    shape = (int(t.shape[0]), int(t.shape[1]))
    s = singular_values(t)
    frobenius = float(np.sqrt(np.sum(s**2)))
    return {
        "name": name,
        "shape": list(shape),
        "frobenius": frobenius,
        "spectral_norm": float(s[0]) if s.size else 0.0,
        "stable_rank": stable_rank(s),
        "rank90": rank_for_energy(s, energy),
        "energy": energy,
        "numerical_rank": numerical_rank(s, shape),
        "max_rank": min(shape),
        "random_rank90": rank_for_energy(random_reference(shape, frobenius, seed), energy),
        "singular_values": [float(v) for v in s],
    }


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
