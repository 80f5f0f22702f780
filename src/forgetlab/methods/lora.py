"""LoRA (Hu et al., 2021, arXiv:2106.09685) through PEFT's `LoraConfig`.

The backbone's weights stay frozen and bit-identical; each targeted linear layer W gains a
low-rank update (lora_alpha / r) * B @ A with B = 0 at init. The task heads train fully.
Checkpoints are PEFT adapters: `PeftModel.from_pretrained(base_backbone, path)` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import Method, MethodConfig
from forgetlab.models.task_model import TaskModel


@dataclass
class LoraMethodConfig(MethodConfig):
    r: int = 8
    lora_alpha: float = 16  # alpha = 2r: the studies' practical advice
    lora_dropout: float = 0.05
    # BERT-style names; "all-linear" adapts every linear layer (PEFT's shortcut).
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"method.r={self.r} must be a positive rank")
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("method.target_modules is empty")

    def peft_kwargs(self) -> dict:
        targets = self.target_modules
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": "all-linear" if targets == ["all-linear"] else list(targets),
            "bias": "none",
        }


def targeted_linears(backbone: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The linear layers PEFT will adapt: names equal to, or ending in '.' + a target."""
    linears = {n: m for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    if targets == ["all-linear"]:
        return linears
    return {n: m for n, m in linears.items() if any(n == t or n.endswith("." + t) for t in targets)}


def check_rank(backbone: nn.Module, cfg: LoraMethodConfig) -> None:
    layers = targeted_linears(backbone, cfg.target_modules)
    if not layers:
        names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"method.target_modules={cfg.target_modules} match no linear layer "
            f"(this model's linear layer names: {', '.join(names)})"
        )
    for name, layer in layers.items():
        limit = min(layer.in_features, layer.out_features)
        if cfg.r > limit:
            raise ConfigError(
                f"method.r={cfg.r} is larger than layer {name} allows "
                f"({layer.out_features}x{layer.in_features}: rank <= {limit})"
            )


class Lora(Method):
    name = "lora"
    summary = "low-rank update B@A on the target modules; base weights frozen (PEFT)"
    config_cls = LoraMethodConfig

    def lora_config(self, cfg: LoraMethodConfig):
        from peft import LoraConfig

        return LoraConfig(**cfg.peft_kwargs())

    def prepare(self, model: TaskModel, cfg: LoraMethodConfig) -> None:
        from peft import get_peft_model

        check_rank(model.backbone, cfg)
        model.backbone = get_peft_model(model.backbone, self.lora_config(cfg))
        for p in model.heads.parameters():
            p.requires_grad_(True)

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        model.backbone.save_pretrained(path)  # PEFT adapter format (safetensors + JSON)

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        from peft import set_peft_model_state_dict

        file = path / "adapter_model.safetensors"
        if not file.is_file():
            raise ForgetlabError(f"LoRA checkpoint {path} has no adapter_model.safetensors")
        result = set_peft_model_state_dict(model.backbone, load_file(str(file)))
        if getattr(result, "unexpected_keys", None):
            raise ForgetlabError(f"LoRA checkpoint {path} does not match the model")
