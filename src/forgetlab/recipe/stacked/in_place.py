"""(IA)³, VeRA and AdaLoRA layers stacked in place: PEFT layers that train tensors kept in
ParameterDicts, one entry per adapter ((IA)³'s and VeRA's vectors, AdaLoRA's P, Λ, Q).

Their forward reads a whole entry (`ia3_l[name].flatten()`, `lambda_b * ...`,
`lora_A * lora_E`), so no stacked twin of a parameter holder can hand it one trial's tensor
per block. Instead the skeleton's layer itself becomes the twin: each trained ParameterDict
entry is replaced by the K trials' [K, ...] stack under the same name (so the stack's
optimizer, `copy_to` and `TrialParameters` find it as any stacked parameter), and the layer's
class by a subclass whose forward is PEFT's, step for step, with trial k's tensors applied to
block k (the batch's rows in `Layout` order). The frozen base layer (and VeRA's shared random
A, B; AdaLoRA's current rank) stays one, run over every trial's rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.ia3.layer import Linear as Ia3Linear
from peft.tuners.vera.layer import Linear as VeraLinear
from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.recipe.stacked.layout import Layout, stack_params


def _blocks(t: torch.Tensor, trials: int) -> torch.Tensor:
    return t.reshape(trials, -1, t.shape[-1])


def _trained_unmerged(layer: Any) -> None:
    if layer.disable_adapters or layer.merged:
        raise ConfigError(
            f"stacked trials: {type(layer).__name__} layers stack only unmerged, adapters on"
        )


class StackedIa3Linear(Ia3Linear):
    """PEFT's (IA)³ Linear, `ia3_l` [K, ...]: trial k's vector rescales block k's input
    (feed-forward layers) or output."""

    dicts = ("ia3_l",)  # the ParameterDicts whose entries are stacked
    layout: Layout

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _trained_unmerged(self)
        trials = len(self.layout.active)
        dtype = previous_dtype = x.dtype
        scaling: torch.Tensor | int = 1
        for adapter in self.active_adapters:
            if adapter not in self.ia3_l:
                continue
            vectors = self.ia3_l[adapter]
            dtype = vectors.dtype
            scaling = scaling * self.layout.take(vectors).reshape(trials, 1, -1)
        if self.is_feedforward:
            interm = (_blocks(x.to(dtype), trials) * scaling).to(previous_dtype)
            return self.base_layer(interm.reshape(x.shape), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (_blocks(result, trials) * scaling).to(result.dtype).reshape(result.shape)


class StackedVeraLinear(VeraLinear):
    """PEFT's VeRA Linear, `vera_lambda_d` [K, r] and `vera_lambda_b` [K, out]: block k's
    update is Λ_b,k B Λ_d,k A x with the shared frozen A, B. (PEFT's forward also clones a
    quantized base's result first; forgetlab loads no quantized base.)"""

    dicts = ("vera_lambda_d", "vera_lambda_b")
    layout: Layout

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _trained_unmerged(self)
        trials = len(self.layout.active)
        previous_dtype = x.dtype
        result = self.base_layer(x, *args, **kwargs)
        orig_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.vera_lambda_d:
                continue
            lambda_d = self.layout.take(self.vera_lambda_d[adapter]).unsqueeze(1)
            lambda_b = self.layout.take(self.vera_lambda_b[adapter]).unsqueeze(1)
            sliced_A = self.vera_A[adapter][:, : self.in_features].to(x.device)
            sliced_B = self.vera_B[adapter][: self.out_features, :].to(x.device)
            dropout = self.vera_dropout[adapter]
            x = self._cast_input_dtype(x, lambda_d.dtype)
            down = _blocks(F.linear(dropout(x), sliced_A), trials)
            update = lambda_b * F.linear(lambda_d * down, sliced_B)
            result = result + update.reshape(result.shape)
        return result.to(orig_dtype).to(previous_dtype)


class StackedSvdLinear(SVDLinear):
    """PEFT's AdaLoRA SVDLinear, `lora_A` [K, r, in], `lora_E` [K, r, 1] and `lora_B`
    [K, out, r]: block k's update is B_k (A_k ⊙ E_k) x, scaled by alpha / rank as PEFT's. The
    current rank (`ranknum`, frozen, init_r in every trial) stays one. Each trial's pruning
    writes zeros into its slice of `lora_E` (`forgetlab.methods.adalora.StackedAllocator`)."""

    dicts = ("lora_A", "lora_B", "lora_E")
    layout: Layout

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        _trained_unmerged(self)
        trials = len(self.layout.active)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_a = self.layout.take(self.lora_A[adapter])
            lora_e = self.layout.take(self.lora_E[adapter])
            lora_b = self.layout.take(self.lora_B[adapter])
            dropout = self.lora_dropout[adapter]
            ranknum = self.ranknum[adapter] + 1e-5
            x = self._cast_input_dtype(x, lora_a.dtype)
            down = _blocks(dropout(x), trials) @ (lora_a * lora_e).transpose(1, 2)
            update = down @ lora_b.transpose(1, 2) * self.scaling[adapter] / ranknum
            result += update.reshape(result.shape)
        return result


# A PEFT layer type -> the subclass the skeleton's layer of that type becomes.
IN_PLACE: dict[type, type] = {
    Ia3Linear: StackedIa3Linear,
    VeraLinear: StackedVeraLinear,
    SVDLinear: StackedSvdLinear,
}


def stack_in_place(
    layer: nn.Module, twins: list[nn.Module], layout: Layout
) -> dict[str, nn.Module]:
    """Stack the trials' entries of the layer's ParameterDicts into `layer` (the skeleton's)
    and make it its `IN_PLACE` subclass; returns those ParameterDicts by attribute name."""
    cls = IN_PLACE[type(layer)]
    held = {}
    for attr in cls.dicts:
        holder = getattr(layer, attr)
        for key in list(holder.keys()):
            holder[key] = stack_params([getattr(t, attr)[key] for t in twins])
        held[attr] = holder
    layer.__class__ = cls
    layer.layout = layout
    return held
