"""What an adaptation method is: a validated config plus four hooks.

A method decides which backbone weights train and how they are saved. Adding one is a file
with a config dataclass (validated in `__post_init__`) and a `Method` subclass, plus one line
in `forgetlab/methods/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file
from torch import nn

from forgetlab.errors import ForgetlabError
from forgetlab.models.task_model import TaskModel

# Weight decay is not applied to biases and norms (the usual BERT recipe).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class MethodConfig:
    name: str


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `forgetlab methods`
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig

    def prepare(self, model: TaskModel, cfg: MethodConfig) -> None:
        """Called once on the freshly loaded model, before stage 1: set what trains."""

    def optimizer_groups(
        self, model: TaskModel, cfg: MethodConfig, lr: float, weight_decay: float
    ) -> list[dict]:
        """AdamW parameter groups; override for per-group learning rates (e.g. LoRA+)."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if any(k in name for k in NO_DECAY) else decay).append(p)
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        """Write the trained backbone state (full weights) into folder `path`."""
        model.backbone.save_pretrained(path, safe_serialization=True)

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise ForgetlabError(f"checkpoint {path} does not match the model")


def save_heads(model: TaskModel, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()}, str(path))


def load_heads(model: TaskModel, path: Path) -> None:
    model.heads.load_state_dict(load_file(str(path)))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
