"""AdamW per trial over stacked [K, ...] tensors, with each trial's own learning rate (its
warm-up and linear-decay schedule), weight decay, parameter groups and gradient clipping.

The update is torch.optim.AdamW's (decoupled decay, bias-corrected moments, eps outside the
square root) computed for all K slices at once; a trial's clipping norm is over its own
slices only, as `clip_grad_norm_` over its lone model's parameters is. The schedule is
transformers' `get_linear_schedule_with_warmup`, one per trial, driving a dummy optimizer so
that the factor is the very function a lone run uses.
"""

from __future__ import annotations

import math

import torch
from transformers import get_linear_schedule_with_warmup

BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which train_stage uses
EPS = 1e-8


class Schedule:
    """One trial's learning-rate factor: `factor` for the next optimizer step."""

    def __init__(self, warmup: int, total_steps: int) -> None:
        self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self._sched = get_linear_schedule_with_warmup(self._opt, warmup, total_steps)

    @property
    def factor(self) -> float:
        return self._sched.get_last_lr()[0]

    def step(self) -> None:
        self._opt.step()  # no gradients: a no-op that keeps the scheduler's order check happy
        self._sched.step()


class StackedAdamW:
    """`params`: stacked parameters; `base_lr[name]` and `decay[name]`: [K] lists of each
    trial's group learning rate and weight decay for that parameter (from the method's
    `optimizer_groups` on the trial's own model)."""

    def __init__(
        self,
        params: dict[str, torch.nn.Parameter],
        base_lr: dict[str, list[float]],
        decay: dict[str, list[float]],
        max_grad_norm: list[float | None],
    ) -> None:
        self.params = params
        self.base_lr, self.decay, self.max_grad_norm = base_lr, decay, max_grad_norm
        self.state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
        self.steps = 0

    def _per_trial(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(
            -1, *([1] * (like.dim() - 1))
        )

    @torch.no_grad()
    def clip(self, active: list[int]) -> None:
        """Scale each active trial's gradients so that their norm is at most its max norm."""
        if all(self.max_grad_norm[k] is None for k in active):
            return
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        sq = sum(g.float().pow(2).flatten(1).sum(1) for g in grads)
        norms = sq.sqrt().tolist()
        coef = [1.0] * len(self.max_grad_norm)
        for k in active:
            limit = self.max_grad_norm[k]
            if limit is not None:
                coef[k] = min(1.0, limit / (norms[k] + 1e-6))  # clip_grad_norm_'s formula
        for g in grads:
            g.mul_(self._per_trial(coef, g))

    @torch.no_grad()
    def step(self, factors: list[float], active: list[int]) -> None:
        """One AdamW step of the active trials (the others' slices are left as they are);
        `factors[k]`: trial k's schedule factor for this step."""
        self.steps += 1
        b1, b2 = BETAS
        bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
        on = [1.0 if k in active else 0.0 for k in range(len(factors))]
        for name, p in self.params.items():
            if p.grad is None:
                continue
            lr = [f * base * a for f, base, a in zip(factors, self.base_lr[name], on)]
            m, v = self.state[name]
            mask = self._per_trial(on, p)
            grad = p.grad * mask  # inactive trials: moments frozen (zero gradient, no decay)
            p.mul_(1 - self._per_trial(lr, p) * self._per_trial(self.decay[name], p))
            m.lerp_(grad, (1 - b1) * mask)
            v.mul_(1 - (1 - b2) * mask).addcmul_(grad, grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(EPS)
            p.sub_(self._per_trial(lr, p) / bc1 * m / denom)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None
