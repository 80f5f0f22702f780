"""PiSSA: principal singular values and singular vectors adaptation (Meng, Wang & Zhang,
2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language
Models", arXiv:2404.02948), through PEFT's `init_lora_weights="pissa"`.

W = U S Vᵀ; the adapter starts as the r principal components (A = √S_r V_rᵀ, B = U_r √S_r,
divided by √scale) and the base layer keeps the residual W − s·B·A, which is frozen. The model
is unchanged at init, but the base weights are rewritten: see `ResidualLora` for how forgetting
stays measured against the pretrained model and how checkpoints become a plain LoRA on the
original weights. `pissa_niter: n` uses a randomized SVD with n subspace iterations (PEFT's
"pissa_niter_n", fast on big layers) instead of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.errors import ConfigError
from forgetlab.methods.lora import LoraMethodConfig, ResidualLora


@dataclass
class PissaConfig(LoraMethodConfig):
    # The adapter holds W's largest components: dropout on its input would drop part of the
    # pretrained layer itself, so it is off by default (as in the paper).
    lora_dropout: float = 0.0
    pissa_niter: int | None = None  # null: exact SVD; n >= 1: randomized SVD, n iterations

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pissa_niter is not None and self.pissa_niter < 1:
            raise ConfigError(
                f"method.pissa_niter={self.pissa_niter} must be a number of subspace "
                "iterations >= 1 (e.g. 4), or null for the exact SVD"
            )

    @property
    def init_lora_weights(self) -> str:
        return "pissa" if self.pissa_niter is None else f"pissa_niter_{self.pissa_niter}"


class Pissa(ResidualLora):
    name = "pissa"
    summary = "LoRA initialised with W's r principal SVD components, residual frozen (PiSSA)"
    reference = "Meng, Wang & Zhang 2024, arXiv:2404.02948"
    config_cls = PissaConfig
    stackable = True  # an init: the forward is plain LoRA on the residual base

    def lora_config(self, cfg: PissaConfig):
        from peft import LoraConfig

        return LoraConfig(**cfg.peft_kwargs(), init_lora_weights=cfg.init_lora_weights)
