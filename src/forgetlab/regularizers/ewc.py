"""Elastic weight consolidation (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting
in neural networks", PNAS 114(13), arXiv:1612.00796).

After each task t the diagonal of its Fisher information at the trained weights θ*_t is
estimated from N of its training examples,

    F_t = 1/N · Σ_n (∇_θ log p(y_n | x_n; θ*_t))²        (elementwise, per-example gradients)

with y_n the true labels (`fisher: empirical`, the usual EWC practice) or a sample of the
model's predictive distribution (`fisher: true`). Later stages pay

    penalty(θ) = λ/2 · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²

over the trainable parameters (heads included by default: with a shared head the head is what
old tasks depend on most).

Storage does not grow with the number of tasks: a sum of quadratics is one quadratic,

    Σ_t F_t (θ − θ*_t)² = F (θ − μ)² + c,   F = Σ_t F_t,  μ = Σ_t F_t θ*_t / F,
    c = Σ_t F_t (θ*_t − μ)²  (a constant),

so only F, μ (one tensor each per parameter) and the scalar c are kept. Merging one more task
(F', θ*') uses F_new = F + F', μ_new = (F μ + F' θ*')/F_new, c += F F'/F_new · (μ − θ*')²,
computed in float64 (no cancellation: the θ-dependent part stays a single square).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from forgetlab.models.task_model import TaskModel
from forgetlab.regularizers.base import (
    FISHER_TYPES,
    Regularizer,
    RegularizerConfig,
    StageContext,
    check_choice,
    check_kind,
    check_positive_int,
    estimation_mode,
    full_precision,
    model_device,
    selected_parameters,
    sum_nll,
)


@dataclass
class EWCConfig(RegularizerConfig):
    name: str = "ewc"
    lam: float = 5000.0  # the reference study's λ
    fisher_samples: int = 500  # N: examples of the finished task (all of them if fewer)
    fisher: str = "empirical"  # empirical (true labels) | true (labels sampled from the model)
    include_heads: bool = True
    seed: int = 0  # which examples are drawn (and the label samples for fisher: true)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("fisher_samples", self.fisher_samples)
        check_choice("fisher", self.fisher, FISHER_TYPES)


def diagonal_fisher(
    model: TaskModel,
    ctx: StageContext,
    params: dict[str, torch.nn.Parameter],
    samples: int,
    fisher: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """1/N Σ_n (∂ log p(y_n|x_n) / ∂θ)², one example at a time (batch size 1: each backward
    gives that example's own gradient exactly, with no padding)."""
    rng = random.Random(seed * 1000 + ctx.stage)
    indices = sorted(rng.sample(range(len(ctx.data)), min(samples, len(ctx.data))))
    generator = torch.Generator().manual_seed(seed * 1000 + ctx.stage)
    names = list(params)
    tensors = [params[n] for n in names]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    with estimation_mode(model):
        for i in indices:
            batch = ctx.ops.collate(ctx.data, [i], ctx.pad_id, ctx.device)
            nll = sum_nll(model, ctx.task, batch, fisher, generator)
            # allow_unused: other tasks' heads take no part in this task's forward.
            grads = torch.autograd.grad(nll, tensors, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s.add_(g.float().pow(2))
    return {n: s / len(indices) for n, s in zip(names, sums)}


class EWC(Regularizer):
    name = "ewc"
    summary = "λ/2·Σ_t F_t(θ − θ*_t)², diagonal empirical Fisher of each finished task"
    reference = "Kirkpatrick et al. 2017, arXiv:1612.00796"
    config_cls = EWCConfig
    stackable = True  # the penalty reads named_parameters() only
    cfg: EWCConfig

    def __init__(self, cfg: EWCConfig | None = None) -> None:
        super().__init__(cfg)
        self.fisher: dict[str, torch.Tensor] = {}  # F = Σ_t F_t
        self.mean: dict[str, torch.Tensor] = {}  # μ = Σ_t F_t θ*_t / F
        self.const = 0.0  # c = Σ_t F_t (θ*_t − μ)², summed over all parameters
        self.tasks = 0

    def on_stage_start(self, ctx: StageContext) -> None:
        check_kind(self.name, ctx.kind)
        self.fisher = {n: f.to(ctx.device) for n, f in self.fisher.items()}
        self.mean = {n: m.to(ctx.device) for n, m in self.mean.items()}

    def on_stage_end(self, ctx: StageContext) -> None:
        if self.cfg.lam == 0:  # the penalty is zero whatever F is: skip N backward passes
            return
        params = selected_parameters(ctx.model, self.cfg.include_heads)
        fisher = diagonal_fisher(
            ctx.model, ctx, params, self.cfg.fisher_samples, self.cfg.fisher, self.cfg.seed
        )
        self.add_task(fisher, {n: p.detach() for n, p in params.items()})

    def add_task(self, fisher: dict[str, torch.Tensor], theta: dict[str, torch.Tensor]) -> None:
        """Merge one task's (F_t, θ*_t) into (F, μ, c); see the module docstring."""
        const = 0.0
        for name, f_new in fisher.items():
            f_new = f_new.double()
            t_new = theta[name].double()
            if name not in self.fisher:
                self.fisher[name] = f_new.float()
                self.mean[name] = t_new.float().clone()
                continue
            f_old = self.fisher[name].double()
            m_old = self.mean[name].double()
            f_sum = f_old + f_new
            safe = torch.where(f_sum > 0, f_sum, torch.ones_like(f_sum))
            # Where no task has curvature, μ is irrelevant (F = 0); keep the newest θ*.
            mean = torch.where(f_sum > 0, (f_old * m_old + f_new * t_new) / safe, t_new)
            const += float((f_old * f_new / safe * (m_old - t_new).pow(2)).sum())
            self.fisher[name] = f_sum.float()
            self.mean[name] = mean.float()
        self.const += const
        self.tasks += 1

    def penalty(self, model: TaskModel) -> torch.Tensor | None:
        device = model_device(model)
        if self.cfg.lam == 0:
            return torch.zeros((), device=device)
        if not self.fisher:  # stage 1: no finished task yet
            return None
        params = dict(model.named_parameters())
        with full_precision(device):
            total = torch.tensor(self.const, device=device)
            for name, f in self.fisher.items():
                total = total + (f * (params[name].float() - self.mean[name]).pow(2)).sum()
            return 0.5 * self.cfg.lam * total

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"fisher.{n}": f.cpu() for n, f in self.fisher.items()}
        state.update({f"mean.{n}": m.cpu() for n, m in self.mean.items()})
        state["const"] = torch.tensor(self.const, dtype=torch.float64)
        state["tasks"] = torch.tensor(self.tasks)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.fisher = {k[7:]: v for k, v in state.items() if k.startswith("fisher.")}
        self.mean = {k[5:]: v for k, v in state.items() if k.startswith("mean.")}
        self.const = float(state.get("const", torch.tensor(0.0)))
        self.tasks = int(state.get("tasks", torch.tensor(0)))
