"""L2-SP: pull the weights towards their starting point (Li, Grandvalet & Davoine, 2018,
"Explicit inductive bias for transfer learning with convolutional networks", arXiv:1802.01483).

    penalty(θ) = λ/2 · Σ_i ‖θ_i − θ₀_i‖²

over the trainable parameters. θ₀ is snapshotted once, at the start of the *first* stage: the
pretrained (or, for LoRA, the freshly initialised adapter) solution. It is deliberately not
re-snapshotted at later stages: the anchor is what the model knew before any task, so the
penalty grows with the total drift over the whole sequence (re-anchoring every stage would
make it a per-stage trust region instead, which lets the drift accumulate).

Heads are left out by default (`include_heads: false`), as in L2-SP: a head has no pretrained
value to return to, and Li et al. put plain L2 (weight decay, `training.weight_decay`) on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.models.task_model import TaskModel
from forgetlab.regularizers.base import (
    Regularizer,
    RegularizerConfig,
    StageContext,
    full_precision,
    model_device,
    selected_parameters,
)


@dataclass
class L2InitConfig(RegularizerConfig):
    name: str = "l2_init"
    lam: float = 0.01  # α in L2-SP; their grid was {0.001, 0.01, 0.1, 1}: tune it
    include_heads: bool = False


class L2Init(Regularizer):
    name = "l2_init"
    summary = "λ/2·‖θ − θ₀‖², θ₀ = the weights before the first stage (L2-SP)"
    reference = "Li, Grandvalet & Davoine 2018, arXiv:1802.01483 (L2-SP)"
    config_cls = L2InitConfig
    stackable = True  # the penalty reads named_parameters() only
    cfg: L2InitConfig

    def __init__(self, cfg: L2InitConfig | None = None) -> None:
        super().__init__(cfg)
        self.theta0: dict[str, torch.Tensor] = {}

    def on_stage_start(self, ctx: StageContext) -> None:
        params = selected_parameters(ctx.model, self.cfg.include_heads)
        if not self.theta0:  # the first stage (or a resumed run whose state was not loaded)
            self.theta0 = {n: p.detach().clone() for n, p in params.items()}
        # Parameters created after the snapshot have nothing to return to; they are skipped.
        self.theta0 = {n: t.to(ctx.device) for n, t in self.theta0.items()}

    def penalty(self, model: TaskModel) -> torch.Tensor | None:
        device = model_device(model)
        if self.cfg.lam == 0:
            return torch.zeros((), device=device)
        if not self.theta0:  # before the first on_stage_start
            return None
        params = dict(model.named_parameters())
        with full_precision(device):
            total = torch.zeros((), device=device)
            for name, ref in self.theta0.items():
                p = params[name]
                total = total + (p.float() - ref.float()).pow(2).sum()
            return 0.5 * self.cfg.lam * total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"theta0.{n}": t.detach().cpu() for n, t in self.theta0.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "theta0."
        self.theta0 = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
