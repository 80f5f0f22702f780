"""AdamW per trial over stacked [K, ...] tensors, with each trial's own learning rate (its
warm-up and linear-decay schedule), weight decay, parameter groups and gradient clipping.

The update is torch's own AdamW kernel (`torch.optim.adamw.adamw`, fused where the lone run's
is) called per trial on its slices of the stacked tensors (views: the kernel writes into the
stack), one call per (learning rate, weight decay) group of that trial: the lone run's
arithmetic, in one pass over each tensor instead of the ten that a [K, ...] formula takes. A
trial's clipping norm is over its own slices only, as `clip_grad_norm_` over its lone model's
parameters is. The schedule is
transformers' `get_linear_schedule_with_warmup`, one per trial, driving a dummy optimizer so
that the factor is the very function a lone run uses.
"""

from __future__ import annotations

import torch
from torch.optim.adamw import adamw
from transformers import get_linear_schedule_with_warmup

from forgetlab.recipe.train import FUSED_DTYPES

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
        first = next(iter(params.values()), None)
        # fused where train_stage's AdamW is
        self.fused = (
            first is not None
            and first.device.type in ("cpu", "cuda")
            and all(p.dtype in FUSED_DTYPES for p in params.values())
        )
        device = first.device if first is not None else torch.device("cpu")
        # one step count per trial and tensor: the kernel increments each tensor it is given
        self.counts = {
            n: [torch.zeros((), dtype=torch.float32, device=device) for _ in base_lr[n]]
            for n in params
        }
        # each trial's parameters by its (learning rate, weight decay): one kernel call each
        self.groups: list[dict[tuple[float, float], list[str]]] = [{} for _ in max_grad_norm]
        for name in params:
            for k, group in enumerate(self.groups):
                group.setdefault((base_lr[name][k], decay[name][k]), []).append(name)

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
        # each trial's norm over its slices, reduced in place: `g.pow(2)` would first write a
        # copy of every gradient (the 8 x 30k x 384 embedding's: ~4 ms a tensor on 2 cores)
        sq = sum(
            torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1, dtype=torch.float32) ** 2
            for g in grads
        )
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
        for k in active:
            for (base_lr, decay), names in self.groups[k].items():
                group = [n for n in names if self.params[n].grad is not None]
                if not group:
                    continue
                params = [self.params[n] for n in group]
                adamw(
                    [p[k] for p in params],
                    [p.grad[k] for p in params],
                    [self.state[n][0][k] for n in group],
                    [self.state[n][1][k] for n in group],
                    [],
                    [self.counts[n][k] for n in group],
                    fused=self.fused,
                    foreach=False if not self.fused else None,
                    amsgrad=False,
                    beta1=BETAS[0],
                    beta2=BETAS[1],
                    lr=factors[k] * base_lr,
                    weight_decay=decay,
                    eps=EPS,
                    maximize=False,
                )

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None
