"""Init[AB]: LoRA with *both* A and B non-zero at init, the base weight compensating.

Plain LoRA starts with B = 0 ("Init[A]"); Hayou, Ghosh & Yu (2024, "The Impact of
Initialization on LoRA Finetuning Dynamics", arXiv:2406.08447) show that which factor starts
at zero shapes the finetuning dynamics. With both factors random the adapter's product is not
zero, so, as in PiSSA, it is subtracted from the base weight: W_res = W − s·B0·A0, and the
model is unchanged at init. A ~ N(0, a_std²), B ~ N(0, b_std²); with a zero gradient on
neither factor, both learn from the first step.

The base weights are rewritten: see `ResidualLora` for how forgetting stays measured against
the pretrained model and how checkpoints become a plain LoRA on the original weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.errors import ConfigError
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
class InitABConfig(LoraMethodConfig):
    lora_dropout: float = 0.0  # the adapter holds part of W at init (see pissa.py)
    a_std: float | None = None  # null: 1/r, PEFT's "gaussian" std for A
    # Small, so the adapter starts close to a standard LoRA while B's gradient is not zero.
    b_std: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.a_std is not None and not self.a_std > 0:
            raise ConfigError(f"method.a_std={self.a_std} must be > 0 (or null for 1/r)")
        if not self.b_std > 0:
            raise ConfigError(f"method.b_std={self.b_std} must be > 0 (b_std = 0 is plain LoRA)")


class InitAB(ResidualLora):
    name = "init_ab"
    stackable = True  # an init: the forward is plain LoRA on the residual base
    summary = "LoRA with A and B both random at init, s*B0@A0 subtracted from W (Init[AB])"
    reference = "Hayou, Ghosh & Yu 2024, arXiv:2406.08447 (Init[AB])"
    config_cls = InitABConfig

    @torch.no_grad()
    def init_adapter(self, model: TaskModel, cfg: InitABConfig) -> None:
        # The RNG is seeded by build_model, so the init (and W_res) is the same on --resume.
        a_std = cfg.a_std if cfg.a_std is not None else 1.0 / cfg.r
        for layer in lora_layers(model.backbone).values():
            weight = base_weight(layer)
            a = torch.randn_like(layer.lora_A[ADAPTER].weight, dtype=torch.float32) * a_std
            b = torch.randn_like(layer.lora_B[ADAPTER].weight, dtype=torch.float32) * cfg.b_std
            set_residual(layer, weight, a, b)
