"""Learning without Forgetting (Li & Hoiem 2016, "Learning without forgetting", ECCV;
arXiv:1606.09282): keep the outputs of the earlier tasks' heads on the *current* task's
inputs close to what the model gave before this stage.

At the start of every stage s > 1 a frozen copy of the model (as it is after stage s − 1,
which `--resume` reloads) is kept in eval mode. Every micro-batch then adds

    weight · T² · Σ_{t < s} mean_x KL( softmax(old_t(x)/T) ‖ softmax(new_t(x)/T) )

over the current batch's inputs x, with old_t / new_t the logits of earlier task t's head
(with the shared head: task t's own logits of it) from the frozen copy and from the model
being trained. T = `temperature` (Li & Hoiem use 2); the T² keeps the gradient's scale
independent of T (Hinton et al. 2015). The previous model's outputs come from eval mode
(no dropout), as Li & Hoiem record them before training; the model being trained runs in
training mode, so with dropout the term is not zero even at the previous weights.

Decoders have one next-token head for every task: there the term distils the previous
model's next-token distribution over the vocabulary at every real (attended) position of
the current batch, once, whatever the number of earlier tasks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.models.task_model import TaskModel
from forgetlab.strategies.base import (
    Strategy,
    StrategyConfig,
    StrategyContext,
    check_positive,
)


@dataclass
class LwFConfig(StrategyConfig):
    name: str = "lwf"
    temperature: float = 2.0  # T; Li & Hoiem's value
    weight: float = 1.0  # λ_o, the weight of the old tasks' term; Li & Hoiem's value

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)
        if not 0 <= self.weight < float("inf"):
            raise ConfigError(f"strategy.weight={self.weight!r} must be a finite number >= 0")


def distillation(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None, t: float):
    """T² · mean over rows (the positions where `mask` is set) of
    KL(softmax(old/T) ‖ softmax(new/T)), in fp32."""
    old, new = old.float(), new.float()
    if mask is not None:  # decoders: (batch, length, vocab) -> the attended positions
        keep = mask.bool()
        old, new = old[keep], new[keep]
    target = F.log_softmax(old / t, dim=-1)
    log_probs = F.log_softmax(new / t, dim=-1)
    kl = F.kl_div(log_probs, target, log_target=True, reduction="sum") / max(len(old), 1)
    return t * t * kl


def frozen_copy(model: nn.Module) -> nn.Module:
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


class LwF(Strategy):
    name = "lwf"
    summary = "distil the previous stage's outputs of earlier tasks' heads on current inputs"
    reference = "Li & Hoiem 2016 (arXiv:1606.09282)"
    config_cls = LwFConfig
    cfg: LwFConfig

    def __init__(self, cfg: LwFConfig | None = None) -> None:
        super().__init__(cfg)
        self.previous: nn.Module | None = None
        self.heads: list[str] = []

    def on_stage_start(self, ctx: StrategyContext) -> None:
        self.previous = None
        names = [t.name for t in ctx.earlier]
        if getattr(ctx.model, "is_causal", False):
            names = names[:1]  # one next-token head serves every task
        self.heads = names
        if names and self.cfg.weight > 0:
            self.previous = frozen_copy(ctx.model)

    def loss(self, model: TaskModel, batch: dict, ctx: StrategyContext) -> torch.Tensor | None:
        if self.previous is None:  # stage 1 (nothing to distil), or weight 0
            return None
        inputs = batch["inputs"]
        causal = getattr(model, "is_causal", False)
        mask = inputs["attention_mask"] if causal else None
        total = None
        for task in self.heads:
            with torch.no_grad():
                old = self.previous(task, **inputs)
            term = distillation(old, model(task, **inputs), mask, self.cfg.temperature)
            total = term if total is None else total + term
        # a mean over this process's rows (positions of decoders): its share of the batch's
        share = ctx.token_share if causal else ctx.share
        return None if total is None else self.cfg.weight * total * share

    def on_stage_end(self, ctx: StrategyContext) -> None:
        self.previous = None  # free the copy: the next stage snapshots the model anew
