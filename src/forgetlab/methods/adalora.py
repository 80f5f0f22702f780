"""AdaLoRA: adaptive budget allocation (Zhang et al., 2023, "Adaptive Budget Allocation for
Parameter-Efficient Fine-Tuning", ICLR 2023, arXiv:2303.10512), through PEFT's `AdaLoraConfig`.

Each adapted W gets an SVD-shaped update P·Λ·Q (`lora_B`, `lora_E`, `lora_A`) of rank
`init_r`; during training the least important singular triplets (sensitivity × uncertainty,
smoothed with beta1/beta2) are masked until the average rank falls to `target_r`, with a
cubic schedule: `tinit` warm-up steps at full rank, budget shrinking until
`total_step - tfinal`, then `tfinal` steps at the final ranks. An orthogonality penalty
(`orth_reg_weight`) keeps P and Q near-orthogonal.

How it runs here without touching the training loop (which knows nothing of methods' hooks):

- PEFT's `update_and_allocate(step)` must run after every `optimizer.step()` and before
  `zero_grad()` (it reads the gradients). `prepare` registers a *global* torch optimizer
  step post-hook that acts only on optimizers holding this model's `lora_E` parameters
  (removed when the model is garbage-collected).
- PEFT adds the orthogonality penalty to `outputs.loss` inside the model's forward, but our
  backbone returns no loss (the heads sit outside it). A global optimizer step *pre*-hook adds
  the penalty's gradient to the A and B gradients instead. The one difference from adding it to
  the loss: it comes after gradient clipping.
- Stacked trials (`forgetlab.recipe.stacked`) train under the stack's own optimizer, which
  fires no torch hooks: `step_hooks` gives each trial a `StackedAllocator` per stage, which
  does the same two things at the same two moments on the trial's slices of the stack (PEFT's
  allocator runs on the trial's plain model, handed those slices and their gradients).
- The schedule counts optimizer steps and restarts with every new optimizer, i.e. every stage:
  each task gets AdaLoRA's full warm-up / prune / fine-tune cycle, ranks pruned for one task may
  regrow for the next, and the sensitivity scores start afresh. So `total_step` is the number
  of optimizer steps of ONE stage: set it to ceil(train examples / batch_size / grad_accum) ×
  epochs (or training.max_steps). The default 1000 only suits stages of about that length: a
  shorter stage ends before the ranks reach `target_r`; a longer one trains its extra steps
  at the final ranks.

Checkpoints are PEFT adapters (pruned triplets dropped, the rank pattern in the config), so
`PeftModel.from_pretrained(base, path)` loads them. For --resume the unpruned tensors are saved
beside them (`forgetlab_adalora_state.safetensors`), which makes the round trip exact.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import MethodConfig
from forgetlab.methods.lora import ADAPTER, Lora, check_targets
from forgetlab.models.task_model import TaskModel

FULL_STATE = "forgetlab_adalora_state.safetensors"


@dataclass
class AdaLoraMethodConfig(MethodConfig):
    init_r: int = 12  # starting rank of every layer
    target_r: int = 8  # average rank after pruning
    lora_alpha: float = 24  # scale = alpha / init_r; alpha = 2·init_r as for LoRA
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    total_step: int = 1000  # optimizer steps per STAGE (see the module docstring)
    tinit: int = 100  # warm-up steps at full rank
    tfinal: int = 200  # final steps at the pruned ranks
    deltaT: int = 10  # steps between two budget re-allocations (PEFT's name)
    beta1: float = 0.85  # EMA of the sensitivity
    beta2: float = 0.85  # EMA of its uncertainty
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        for key in ("init_r", "target_r", "total_step", "deltaT"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be > 0")
        if self.target_r > self.init_r:
            raise ConfigError(
                f"method.target_r={self.target_r} must be <= method.init_r={self.init_r}"
            )
        for key in ("tinit", "tfinal"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be >= 0")
        if self.tinit >= self.total_step - self.tfinal:
            raise ConfigError(
                f"method.total_step={self.total_step} leaves no pruning phase: it must exceed "
                f"tinit + tfinal = {self.tinit} + {self.tfinal}"
            )
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} must be in [0, 1)")
        for key in ("beta1", "beta2"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"method.{key}={getattr(self, key)} must be in (0, 1)")
        if self.orth_reg_weight < 0:
            raise ConfigError(f"method.orth_reg_weight={self.orth_reg_weight} must be >= 0")
        if not self.target_modules:
            raise ConfigError("method.target_modules is empty")

    def peft_kwargs(self) -> dict:
        targets = self.target_modules
        keys = (
            "init_r",
            "target_r",
            "lora_alpha",
            "lora_dropout",
            "total_step",
            "tinit",
            "tfinal",
            "deltaT",
            "beta1",
            "beta2",
            "orth_reg_weight",
        )
        return {
            **{k: getattr(self, k) for k in keys},
            "target_modules": "all-linear" if targets == ["all-linear"] else list(targets),
            "bias": "none",
        }


class _Allocator:
    """Runs AdaLoRA's per-step work from global optimizer hooks, for one PeftModel.

    Holds the model weakly: the hooks must not keep a discarded model alive."""

    def __init__(self, peft_model: nn.Module, orth_reg_weight: float) -> None:
        self.model = weakref.ref(peft_model)
        self.orth_reg_weight = orth_reg_weight
        self.e_ids = {id(p) for n, p in peft_model.named_parameters() if ".lora_E." in n}
        # optimizer -> steps done so far (None: not this model's optimizer)
        self.steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        handles = [
            register_optimizer_step_pre_hook(self.before_step),
            register_optimizer_step_post_hook(self.after_step),
        ]
        weakref.finalize(peft_model, _remove_all, handles)

    def _step_of(self, optimizer) -> int | None:
        if optimizer not in self.steps:
            ours = any(id(p) in self.e_ids for g in optimizer.param_groups for p in g["params"])
            self.steps[optimizer] = 0 if ours else None
            model = self.model()
            if ours and model is not None:  # a new stage: AdaLoRA's schedule starts over
                _restart(model)
        return self.steps[optimizer]

    def before_step(self, optimizer, args, kwargs) -> None:
        model = self.model()
        if model is None or self._step_of(optimizer) is None or self.orth_reg_weight == 0:
            return
        factors = [(n, p) for n, p in model.named_parameters() if p.requires_grad and _factor(n)]
        for (_, p), g in zip(factors, orthogonality_grads(factors, self.orth_reg_weight)):
            p.grad = g if p.grad is None else p.grad + g

    def after_step(self, optimizer, args, kwargs) -> None:
        model = self.model()
        step = self._step_of(optimizer)
        if model is None or step is None:
            return
        model.base_model.update_and_allocate(step)
        self.steps[optimizer] = step + 1


class StackedAllocator:
    """AdaLoRA's per-step work for one stacked trial through one stage (`AdaLora.step_hooks`),
    what `_Allocator` does for a lone run: the orthogonality penalty's gradient added after
    clipping, then PEFT's `update_and_allocate(step)` on the trial's plain model, which holds
    the trial's A, E, B and their gradients for it (copied from its slices of the stack; the
    E it masks is copied back). The copies are the adapter's few tensors, not the model."""

    def __init__(self, model: TaskModel, orth_reg_weight: float) -> None:
        self.model, self.orth_reg_weight, self.step = model, orth_reg_weight, 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
        _restart(model.backbone)  # built at each stage's start: the schedule starts over

    def before_step(
        self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> None:
        if self.orth_reg_weight == 0:
            return
        factors = [(n, params[n]) for n in self.names if _factor(n)]  # the lone run's order
        with torch.no_grad():
            for (n, _), g in zip(factors, orthogonality_grads(factors, self.orth_reg_weight)):
                grads[n].add_(g)

    @torch.no_grad()
    def after_step(
        self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> None:
        own = {n: self.model.get_parameter(n) for n in self.names}
        for n, p in own.items():
            p.copy_(params[n])
            p.grad = grads[n]
        self.model.backbone.base_model.update_and_allocate(self.step)
        for n, p in own.items():
            if ".lora_E." in n:  # the triplets pruned (zeroed) in place
                params[n].copy_(p)
            p.grad = None
        self.step += 1


def _restart(peft_model: nn.Module) -> None:
    """A new stage: no rank pattern, the sensitivity scores start afresh."""
    peft_model.peft_config[ADAPTER].rank_pattern = None
    peft_model.base_model.rankallocator.reset_ipt()


def _remove_all(handles) -> None:
    for h in handles:
        h.remove()


def _factor(name: str) -> bool:
    """Whether the parameter is a P (`lora_B`) or Q (`lora_A`) of the SVD-shaped update."""
    return ".lora_A." in name or ".lora_B." in name


def orthogonality_grads(
    factors: list[tuple[str, torch.Tensor]], weight: float
) -> tuple[torch.Tensor, ...]:
    """The gradient of `weight` x the orthogonality penalty for each (name, tensor) factor."""
    leaves = [p.detach().requires_grad_() for _, p in factors]
    with torch.enable_grad():
        penalty = orthogonality_penalty(
            [(x, ".lora_A." in n) for (n, _), x in zip(factors, leaves)]
        )
        return torch.autograd.grad(weight * penalty, leaves)


def orthogonality_penalty(factors: list[tuple[torch.Tensor, bool]]) -> torch.Tensor:
    """Mean over the factors of ‖P·Pᵀ − I‖_F (A, rows) or ‖Pᵀ·P − I‖_F (B, columns): the
    regulariser of AdaLoRA's forward, unchanged."""
    terms = []
    for p, is_a in factors:
        cov = p @ p.T if is_a else p.T @ p
        terms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=p.device)))
    return torch.stack(terms).mean()


class AdaLora(Lora):
    name = "adalora"
    summary = "SVD-shaped LoRA whose ranks are pruned to a budget during training (AdaLoRA)"
    reference = "Zhang et al. 2023, arXiv:2303.10512"
    config_cls = AdaLoraMethodConfig
    # its SVD layers stack in place (forgetlab.recipe.stacked.in_place); the allocator runs
    # on each trial through `step_hooks`
    stackable = True

    def lora_config(self, cfg: AdaLoraMethodConfig):
        from peft import AdaLoraConfig

        return AdaLoraConfig(**cfg.peft_kwargs())

    def prepare(self, model: TaskModel, cfg: AdaLoraMethodConfig) -> None:
        from peft import get_peft_model

        for name, layer in check_targets(model.backbone, cfg.target_modules).items():
            limit = min(layer.in_features, layer.out_features)
            if cfg.init_r > limit:
                raise ConfigError(
                    f"method.init_r={cfg.init_r} is larger than layer {name} allows "
                    f"({layer.out_features}x{layer.in_features}: rank <= {limit})"
                )
        model.backbone = get_peft_model(model.backbone, self.lora_config(cfg))
        for p in model.heads.parameters():
            p.requires_grad_(True)
        _Allocator(model.backbone, cfg.orth_reg_weight)

    def step_hooks(self, model: TaskModel, cfg: AdaLoraMethodConfig) -> StackedAllocator:
        return StackedAllocator(model, cfg.orth_reg_weight)

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        model.backbone.save_pretrained(path)  # PEFT format: pruned triplets dropped
        full = {
            k: v.detach().contiguous()
            for k, v in model.backbone.state_dict().items()
            if ".lora_" in k
        }
        save_file(full, str(path / FULL_STATE))

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        file, config = path / FULL_STATE, path / "adapter_config.json"
        if not (file.is_file() and config.is_file()):
            raise ForgetlabError(f"AdaLoRA checkpoint {path} lacks {FULL_STATE} or its config")
        state = load_file(str(file))
        own = {k for k in model.backbone.state_dict() if ".lora_" in k}
        if set(state) != own:
            raise ForgetlabError(f"AdaLoRA checkpoint {path} does not match the model")
        model.backbone.load_state_dict(state, strict=False)
        # The rank pattern of the last allocation (the next stage resets it anyway).
        pattern = json.loads(config.read_text()).get("rank_pattern")
        model.backbone.peft_config[ADAPTER].rank_pattern = pattern
