"""VeRA: vector-based random matrix adaptation (Kopiczko, Blankevoort & Asano, 2023, "VeRA:
Vector-based Random Matrix Adaptation", arXiv:2310.11454), through PEFT's `VeraConfig`.

One pair of random low-rank matrices A, B is shared by all adapted layers and frozen; each
layer trains only two scaling vectors, ΔW = Λ_b B Λ_d A (Λ_b = diag(b), zero at init, so the
model is unchanged; Λ_d = diag(d), d starts at `d_initial`). Far fewer trainable parameters
than LoRA, so it usually wants a higher learning rate (the paper: 1e-2 to 4e-3 on GLUE) and a
large r (it costs no trainable parameters: 256 here, 1024 in the paper's RoBERTa runs; r may
exceed a layer's size). The frozen A, B are regenerated from `projection_prng_key` and also
saved in the checkpoint, so `PeftModel.from_pretrained(base, path)` needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetlab.errors import ConfigError
from forgetlab.methods.base import MethodConfig
from forgetlab.methods.lora import Lora, check_targets
from forgetlab.models.task_model import TaskModel


@dataclass
class VeraMethodConfig(MethodConfig):
    r: int = 256  # rank of the shared random projections
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    vera_dropout: float = 0.0
    d_initial: float = 0.1  # initial value of every d entry (the paper's choice)
    projection_prng_key: int = 0  # seed of the shared frozen A, B

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"method.r={self.r} must be a positive rank")
        if not self.target_modules:
            raise ConfigError("method.target_modules is empty")
        if not 0 <= self.vera_dropout < 1:
            raise ConfigError(f"method.vera_dropout={self.vera_dropout} must be in [0, 1)")
        if not self.d_initial > 0:
            raise ConfigError(f"method.d_initial={self.d_initial} must be > 0")

    def peft_kwargs(self) -> dict:
        targets = self.target_modules
        return {
            "r": self.r,
            "target_modules": "all-linear" if targets == ["all-linear"] else list(targets),
            "vera_dropout": self.vera_dropout,
            "d_initial": self.d_initial,
            "projection_prng_key": self.projection_prng_key,
            "save_projection": True,  # checkpoints load without regenerating A, B
            "bias": "none",
        }


class Vera(Lora):
    """Reuses LoRA's PEFT-adapter saving and loading; only the config differs."""

    name = "vera"
    summary = "shared frozen random A, B; each layer trains two scaling vectors (VeRA)"
    reference = "Kopiczko, Blankevoort & Asano 2023, arXiv:2310.11454"
    config_cls = VeraMethodConfig
    stackable = True  # its layers stack in place: forgetlab.recipe.stacked.in_place

    def lora_config(self, cfg: VeraMethodConfig):
        from peft import VeraConfig

        return VeraConfig(**cfg.peft_kwargs())

    def prepare(self, model: TaskModel, cfg: VeraMethodConfig) -> None:
        from peft import get_peft_model

        check_targets(model.backbone, cfg.target_modules)  # no rank limit: see the docstring
        model.backbone = get_peft_model(model.backbone, self.lora_config(cfg))
        for p in model.heads.parameters():
            p.requires_grad_(True)
