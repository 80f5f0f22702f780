"""MiLoRA: minor singular component LoRA (Wang et al., 2024, "MiLoRA: Harnessing Minor
Singular Components for Parameter-Efficient LLM Finetuning", arXiv:2406.09044).

PiSSA's mirror image: W = U S Vᵀ, and the adapter starts as the r *smallest* singular
components, A = √(S_r/s) V_rᵀ and B = U_r √(S_r/s) with (U_r, S_r, V_r) the last r triplets
and s the LoRA scale, so that s·B·A is exactly the minor component; the base layer keeps the
principal part W − s·B·A, frozen. The idea: the principal components hold what pretraining
learned, so fine-tuning in the minor subspace should disturb it (forget) less.

PEFT has no MiLoRA init; this builds ordinary PEFT LoRA layers and then overwrites A, B and
the base weight exactly as PEFT's `LoraLayer.pissa_init` does for PiSSA. Checkpoints are
converted to a plain LoRA on the original weights (see `ResidualLora`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from forgetlab.methods.lora import (
    ADAPTER,
    LoraMethodConfig,
    ResidualLora,
    base_weight,
    lora_layers,
    set_residual,
)
from forgetlab.models.task_model import TaskModel


@dataclass
class MiloraConfig(LoraMethodConfig):
    lora_dropout: float = 0.0  # the adapter holds part of W (see pissa.py)


def minor_factors(weight: torch.Tensor, r: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with scale·B·A = the r smallest singular components of `weight` (out x in)."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)  # s is descending
    root = torch.sqrt(s[-r:] / scale)
    a = root[:, None] * vh[-r:]  # r x in
    b = u[:, -r:] * root[None, :]  # out x r
    return a, b


@torch.no_grad()
def milora_init(layer: nn.Module) -> None:
    weight = base_weight(layer)
    a, b = minor_factors(weight, layer.r[ADAPTER], layer.scaling[ADAPTER])
    set_residual(layer, weight, a, b)


class Milora(ResidualLora):
    name = "milora"
    summary = "LoRA initialised with W's r smallest SVD components, rest frozen (MiLoRA)"
    reference = "Wang et al. 2024, arXiv:2406.09044"
    config_cls = MiloraConfig
    stackable = True  # an init: the forward is plain LoRA on the residual base

    def init_adapter(self, model: TaskModel, cfg: MiloraConfig) -> None:
        for layer in lora_layers(model.backbone).values():
            milora_init(layer)
