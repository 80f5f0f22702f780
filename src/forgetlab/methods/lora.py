"""LoRA (Hu et al., 2021, arXiv:2106.09685) through PEFT's `LoraConfig`.

The backbone's weights stay frozen and bit-identical; each targeted linear layer W gains a
low-rank update (lora_alpha / r) * B @ A with B = 0 at init. The task heads train fully.
Checkpoints are PEFT adapters: `PeftModel.from_pretrained(base_backbone, path)` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
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
    reference = "Hu et al. 2021, arXiv:2106.09685"
    config_cls = LoraMethodConfig
    stackable = True
    # Extra LoraConfig arguments that make a variant (use_dora, init_lora_weights, ...).
    peft_extra: ClassVar[dict[str, Any]] = {}

    def lora_config(self, cfg: LoraMethodConfig):
        from peft import LoraConfig

        return LoraConfig(**cfg.peft_kwargs(), **self.peft_extra)

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


# --------------------------------------------------------------------------------------
# Helpers for the LoRA variants (rslora, dora, loraplus, pissa, olora, milora, init_ab, ...).

ADAPTER = "default"  # the one adapter `get_peft_model` creates
INITIAL_ADAPTER = "_forgetlab_initial_adapter"  # attribute holding A0/B0 on the PeftModel


def check_targets(backbone: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The layers `targets` adapt, or ConfigError when there are none. For methods whose rank
    is not `method.r` or may exceed a layer's size (VeRA, AdaLoRA)."""
    check_rank(backbone, LoraMethodConfig(name="lora", r=1, target_modules=list(targets)))
    return targeted_linears(backbone, targets)


def lora_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """PEFT's LoRA layers (name -> LoraLayer) that hold the default adapter."""
    from peft.tuners.lora import LoraLayer

    modules = backbone.named_modules()
    return {n: m for n, m in modules if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The base layer's weight as out x in, float32 (PEFT's `transpose` for fan_in_fan_out)."""
    from peft.utils.other import transpose

    return transpose(layer.get_base_layer().weight.detach().float(), layer.fan_in_fan_out)


@torch.no_grad()
def set_residual(layer: nn.Module, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """Write A, B into the adapter and W - scale*B@A into the base layer (`weight` is the
    float32 out x in W), so that base + adapter still computes W: the residual-init recipe of
    PEFT's `LoraLayer.pissa_init`, for inits PEFT does not have."""
    from peft.utils.other import transpose

    base = layer.get_base_layer()
    layer.lora_A[ADAPTER].weight.copy_(a)
    layer.lora_B[ADAPTER].weight.copy_(b)
    residual = weight - layer.scaling[ADAPTER] * (b @ a)
    base.weight.copy_(transpose(residual.to(base.weight.dtype), layer.fan_in_fan_out))


class ResidualLora(Lora):
    """LoRA whose init moves part of W into the adapter: W = W_res + s·B0·A0 (PiSSA, OLoRA,
    MiLoRA, Init[AB]). The base layers then hold W_res, not the pretrained W.

    - Step 0: base + adapter computes W exactly (to fp32 rounding), so the runner's row 0 is
      still the pretrained model and forgetting is measured against it.
    - Saving converts to a plain LoRA on the *original* W: the trained model computes
      W_res + s·B·A = W + s·(B·A − B0·A0) = W + s·[B, −B0]·[A; A0], a rank-2r LoRA with
      alpha 2α (same scale). PEFT does it: `save_pretrained(...,
      path_initial_model_for_weight_conversion=...)` (the adapter config it writes says
      `init_lora_weights: true`, so loading it never re-decomposes the weights).
    - Loading (--resume) targets a freshly *prepared* model, which holds W_res, A0, B0 again
      (the init is deterministic given the seed): the first r rows of A' / columns of B' are
      the trained A, B, restored bit for bit; the other halves must match this model's A0, B0.

    Subclasses set the init through `lora_config` (PEFT's own inits) or `init_adapter`.
    """

    def init_adapter(self, model: TaskModel, cfg: LoraMethodConfig) -> None:
        """Overwrite A, B and W after PEFT built the layers (see `set_residual`)."""

    def prepare(self, model: TaskModel, cfg: LoraMethodConfig) -> None:
        from peft import get_peft_model_state_dict

        super().prepare(model, cfg)
        self.init_adapter(model, cfg)
        # A0, B0 kept in memory (the adapter's size) for the conversion at save time.
        initial = get_peft_model_state_dict(model.backbone)
        setattr(
            model.backbone,
            INITIAL_ADAPTER,
            {k: v.detach().to("cpu", copy=True).contiguous() for k, v in initial.items()},
        )

    def _initial(self, model: TaskModel) -> dict[str, torch.Tensor]:
        initial = getattr(model.backbone, INITIAL_ADAPTER, None)
        if initial is None:
            raise ForgetlabError(f"method {self.name}: the model was not prepared by it")
        return initial

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        import tempfile
        import warnings

        from safetensors.torch import save_file

        initial = self._initial(model)
        with tempfile.TemporaryDirectory(prefix="forgetlab-init-") as tmp:
            # PEFT loads this folder as a temporary adapter named after it, then deletes it.
            folder = Path(tmp) / "initial_adapter"
            folder.mkdir()
            save_file(initial, str(folder / "adapter_model.safetensors"))
            with warnings.catch_warnings():
                # "PiSSA/OLoRA changes the base weights ... consider converting": we are.
                warnings.filterwarnings("ignore", "(PiSSA|OLoRA) changes the base weights")
                model.backbone.save_pretrained(
                    path, path_initial_model_for_weight_conversion=str(folder)
                )

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        from peft import set_peft_model_state_dict

        file = path / "adapter_model.safetensors"
        if not file.is_file():
            raise ForgetlabError(f"{self.name} checkpoint {path} has no adapter_model.safetensors")
        saved, initial = load_file(str(file)), self._initial(model)
        if set(saved) != set(initial):
            raise ForgetlabError(f"{self.name} checkpoint {path} does not match the model")
        trained = {}
        for key, value in saved.items():
            init = initial[key]
            if "lora_A" in key:  # [A; A0]
                r = init.shape[0]
                trained[key], rest = value[:r], value[r:]
            else:  # [B, -B0]
                r = init.shape[1]
                trained[key], rest = value[:, :r], -value[:, r:]
            # The init is deterministic given the seed; a mismatch means another seed/config.
            if rest.shape != init.shape or not torch.allclose(rest, init, rtol=1e-5, atol=1e-6):
                raise ForgetlabError(
                    f"{self.name} checkpoint {path} was saved from a different initialisation "
                    "(seed, model or method settings differ)"
                )
            trained[key] = trained[key].contiguous()
        result = set_peft_model_state_dict(model.backbone, trained)
        if getattr(result, "unexpected_keys", None):
            raise ForgetlabError(f"{self.name} checkpoint {path} does not match the model")
