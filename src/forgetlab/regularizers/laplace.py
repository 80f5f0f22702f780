"""Laplace regularisation of LoRA updates, in the spirit of LaLoRA (Sliwa, Schneider, Hennig &
Hernández-Lobato, 2025, "Mitigating forgetting in low rank adaptation", arXiv:2512.17720) and
of the Kronecker-factored Laplace prior of Ritter, Botev & Barber (2018, "Online structured
Laplace approximations for overcoming catastrophic forgetting", NeurIPS, arXiv:1805.07810).

A Laplace approximation around the pretrained solution W turns "stay close to what the model
knew" into a Gaussian prior with the loss curvature as precision. For each LoRA-adapted linear
layer the update is ΔW = s·B·A (B: out×r, A: r×in, s = lora_alpha/r) and

    diag:  penalty = λ/2 · Σ_layers Σ_ij F_W,ij · ΔW_ij²,     F_W = E_n[(∂L_n/∂W)²]
    kfac:  penalty = λ/2 · Σ_layers tr(ΔWᵀ G ΔW A_in)
                   = λ/2 · Σ_layers s² · tr((Bᵀ G B)(A A_in Aᵀ))

with the K-FAC factors (Martens & Grosse, 2015, "Optimizing neural networks with
Kronecker-factored approximate curvature", ICML, arXiv:1503.05671) A_in = E[x xᵀ] over the
layer's input tokens and G = E_n[Σ_t g_t g_tᵀ] over its output gradients g = ∂L_n/∂y (the
"expand" convention for weight sharing over a sequence, Eschenhagen et al., 2023,
arXiv:2311.00636), so that F_W ≈ A_in ⊗ G and tr(ΔWᵀ G ΔW A_in) = vec(ΔW)ᵀ (A_in ⊗ G) vec(ΔW).
The second form costs only r×r products per layer: never an out×in or (out·in)² matrix.

Adapters that start non-zero with the base weight compensating (PiSSA, OLoRA, MiLoRA,
Init[AB]: W_res = W − s·B0·A0) are measured from their start: ΔW = s·(B·A − B0·A0) =
[s·B, −s·B0]·[A; A0], a rank-2r product that the same r×r formulas take as it is. The
curvature is that of the effective weight W_res + s·B·A, which at the start computes W.

Why the curvature of W and not of (A, B): at the usual init B = 0, ∂L/∂A = Bᵀ(...) = 0, so a
Fisher over the trainable LoRA parameters is identically zero for A and the regulariser would
see no curvature at all. The curvature of the pretrained weight itself is not zero, and the
effective update ΔW is what moves the function. The curvature is estimated once, at the first
`on_stage_start` (while ΔW = 0), from `source_examples` examples of the source data: the
training data of the tasks before this stage (`StageContext.source_data`) or, when there are
none (stage 1), the stage's own task data.

L_n is −log p(y_n|x_n) with y_n the data's label (`fisher: empirical`) or a sample from the
model's predictive distribution (`fisher: true`). Gradients at the layer outputs are taken
with `torch.autograd.grad` on the base layers' outputs (captured by forward hooks), one batch
at a time; per-example gradients of W for `diag` come from ∂L_n/∂W = Σ_t g_t x_tᵀ exactly.
λ plays the role of the number of source examples the prior is worth (the Laplace posterior
precision is N·F̄): sweep it to trade learning against forgetting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from forgetlab.errors import ConfigError
from forgetlab.kinds import EncodedSplit
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
    sum_nll,
)

CURVATURES = ("diag", "kfac")


@dataclass
class LaplaceConfig(RegularizerConfig):
    name: str = "laplace"
    lam: float = 1000.0  # ~ the source-data size the prior counts as; sweep it
    curvature: str = "kfac"  # diag | kfac
    fisher: str = "empirical"  # empirical (true labels) | true (labels sampled from the model)
    source_examples: int = 256  # examples drawn from the source data for the curvature
    # Tasks of this run whose training data is the source; default (null): the tasks before
    # the current stage (the stage's own task at stage 1). Their heads score the source loss.
    source: list[str] | None = None
    batch_size: int = 16  # for the curvature pass only
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("curvature", self.curvature, CURVATURES)
        check_choice("fisher", self.fisher, FISHER_TYPES)
        check_positive_int("source_examples", self.source_examples)
        check_positive_int("batch_size", self.batch_size)
        if self.source is not None and not self.source:
            raise ConfigError("regularizer.source is empty: name tasks of the run, or omit it")


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA layers by module name. The update must be s·B·A on an nn.Linear: plain LoRA,
    rsLoRA, LoRA+, and the residual inits (PiSSA, OLoRA, MiLoRA, ...); not DoRA (a magnitude
    vector rescales W + ΔW) nor AdaLoRA (ΔW = B·(E⊙A))."""
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, layer in layers.items():
        if not isinstance(layer.base_layer, nn.Linear):
            raise ConfigError(
                f"regularizer laplace supports LoRA on linear layers only; {name} wraps "
                f"{type(layer.base_layer).__name__}"
            )
        if getattr(layer, "lora_variant", None) or hasattr(layer, "lora_E"):
            raise ConfigError(
                f"regularizer laplace needs updates of the form s·B·A; {name} is a "
                f"{type(layer).__name__} with a different parametrisation (DoRA, AdaLoRA)"
            )
    return layers


def factor_names(name: str, layer: nn.Module) -> list[tuple[str, str, float]]:
    """The active adapters of LoRA layer `name`: (B's parameter name, A's, s) each, as the
    model's `named_parameters()` names them; none where the adapters are off or merged."""
    if layer.disable_adapters or layer.merged:
        return []
    at = f"{name}." if name else ""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    return [(f"{at}lora_B.{a}.weight", f"{at}lora_A.{a}.weight", layer.scaling[a]) for a in active]


def factors_from(
    params: dict[str, torch.Tensor], names: list[tuple[str, str, float]]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(S_B, A_cat) with ΔW = S_B @ A_cat summed over the adapters `names`: S_B stacks s_a·B_a
    side by side (out×Σr), A_cat stacks A_a (Σr×in). None when no adapter is active."""
    if not names:
        return None
    b = torch.cat([params[b].float() * s for b, _, s in names], dim=1)
    a = torch.cat([params[a].float() for _, a, _ in names], dim=0)
    return b, a


def lora_factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`factors_from` one LoRA layer's own parameters."""
    return factors_from(dict(layer.named_parameters()), factor_names("", layer))


class _Capture:
    """Forward hooks on the base layers that keep (input, output) of the current batch."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [
            layer.base_layer.register_forward_hook(self._hook(name))
            for name, layer in layers.items()
        ]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.seen[name] = (args[0].detach(), output)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Sums:
    """Running sums for one layer: Σ x xᵀ over real tokens and Σ g gᵀ (kfac), or
    Σ_n (∂L_n/∂W)² (diag), with the counts that turn them into means."""

    def __init__(self, weight: torch.Tensor, kfac: bool) -> None:
        out_f, in_f = weight.shape
        zeros = weight.detach().new_zeros
        self.kfac = kfac
        self.xx = zeros(in_f, in_f, dtype=torch.float32) if kfac else None
        self.gg = zeros(out_f, out_f, dtype=torch.float32) if kfac else None
        self.sq = None if kfac else zeros(out_f, in_f, dtype=torch.float32)
        self.examples = 0
        self.tokens = 0

    def add(self, x: torch.Tensor, g: torch.Tensor | None, mask: torch.Tensor) -> None:
        b = x.shape[0]
        x = x.float().reshape(b, -1, x.shape[-1])  # (batch, tokens, in); pooled: 1 token
        if g is None:  # the layer does not reach this loss: ∂L/∂y = 0
            g = x.new_zeros(b, x.shape[1], (self.gg if self.kfac else self.sq).shape[0])
        g = g.float().reshape(b, -1, g.shape[-1])
        if x.shape[1] == mask.shape[1]:
            # Padding tokens carry activations but no information (and ∂L/∂y = 0 there):
            # they must not count in E[x xᵀ].
            keep = mask.to(x.dtype).unsqueeze(-1)
            x, g = x * keep, g * keep
            self.tokens += int(mask.sum())
        else:
            self.tokens += b * x.shape[1]
        self.examples += b
        if self.kfac:
            self.xx += torch.einsum("bti,btj->ij", x, x)
            self.gg += torch.einsum("bto,btp->op", g, g)
        else:
            per_example = torch.einsum("bto,bti->boi", g, x)  # ∂L_n/∂W = Σ_t g_t x_tᵀ, exactly
            self.sq += per_example.pow(2).sum(0)

    def result(self) -> tuple[torch.Tensor, ...]:
        """A_in = Σ x xᵀ / #tokens, G = Σ g gᵀ / #examples; or F_W = Σ (∂L_n/∂W)² / N."""
        if self.kfac:
            return self.xx / max(self.tokens, 1), self.gg / max(self.examples, 1)
        return (self.sq / max(self.examples, 1),)


class Laplace(Regularizer):
    name = "laplace"
    summary = "λ/2·curvature-weighted ‖s·B·A‖² on LoRA layers; diag or K-FAC curvature of W"
    reference = "Sliwa et al. 2025, arXiv:2512.17720; Ritter, Botev & Barber 2018, arXiv:1805.07810"
    config_cls = LaplaceConfig
    cfg: LaplaceConfig
    stackable = True  # the penalty reads named_parameters() only (factor names kept per stage)

    def __init__(self, cfg: LaplaceConfig | None = None) -> None:
        super().__init__(cfg)
        # kfac: {layer: (A_in, G)}; diag: {layer: (F_W,)}
        self.curv: dict[str, tuple[torch.Tensor, ...]] = {}
        # (s·B0, A0) of adapters that start non-zero (PiSSA, OLoRA, Init[AB], ...): ΔW is
        # measured from the starting point, s·(B·A − B0·A0); plain LoRA (B0 = 0) has none.
        self.anchor: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._layers: dict[str, nn.Module] = {}  # the stage's model's LoRA layers, by name
        self._factors: dict[str, list[tuple[str, str, float]]] = {}  # layer: (B, A, s) names

    def check(self, model: TaskModel) -> None:
        if not lora_layers(model):
            raise ConfigError("regularizer laplace needs a LoRA-family method")

    def on_stage_start(self, ctx: StageContext) -> None:
        self.check(ctx.model)
        self._layers = lora_layers(ctx.model)  # each stage: the model may be a new object
        if not self.curv and self.cfg.lam > 0:  # estimated once, before any LoRA update
            check_kind(self.name, ctx.kind)
            sources = ctx.source_data or [(ctx.task, ctx.data)]
            self.curv = self.estimate(ctx, sources)
            self.anchor = {}
            for name, layer in self._layers.items():
                factors = lora_factors(layer)
                if factors is not None and bool(factors[0].any()):
                    self.anchor[name] = tuple(t.detach().clone() for t in factors)
        self.curv = {n: tuple(t.to(ctx.device) for t in c) for n, c in self.curv.items()}
        self.anchor = {n: tuple(t.to(ctx.device) for t in c) for n, c in self.anchor.items()}
        # what the penalty reads, by parameter name: a stack's trial has its parameters but
        # not its module tree
        self._factors = {n: factor_names(n, layer) for n, layer in self._layers.items()}

    def estimate(
        self, ctx: StageContext, sources: list[tuple[str, EncodedSplit]]
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        """Curvature of every LoRA layer's base weight W from `source_examples` examples."""
        model, cfg, layers = ctx.model, self.cfg, self._layers
        pool = [(t, i) for t, (task, split) in enumerate(sources) for i in range(len(split))]
        rng = random.Random(cfg.seed)
        picks = rng.sample(pool, min(cfg.source_examples, len(pool)))
        generator = torch.Generator().manual_seed(cfg.seed)

        kfac = cfg.curvature == "kfac"
        acc = {name: _Sums(layer.base_layer.weight, kfac) for name, layer in layers.items()}
        capture = _Capture(layers)
        # The base weights are frozen; making them require grad for the pass puts each base
        # layer's output y into the graph, so that ∂L/∂y can be asked for directly.
        weights = [layer.base_layer.weight for layer in layers.values()]
        frozen = [w.requires_grad for w in weights]
        try:
            for w in weights:
                w.requires_grad_(True)
            with estimation_mode(model):
                for t, (task, split) in enumerate(sources):
                    # Similar lengths together: less padding in the curvature pass.
                    idx = sorted(
                        (i for s, i in picks if s == t), key=lambda i: len(split.input_ids[i])
                    )
                    for start in range(0, len(idx), cfg.batch_size):
                        chunk = idx[start : start + cfg.batch_size]
                        batch = ctx.ops.collate(split, chunk, ctx.pad_id, ctx.device)
                        capture.seen.clear()
                        nll = sum_nll(model, task, batch, cfg.fisher, generator)
                        names = [n for n in layers if n in capture.seen]
                        outs = [capture.seen[n][1] for n in names]
                        grads = torch.autograd.grad(nll, outs, allow_unused=True)
                        mask = batch["inputs"]["attention_mask"]
                        for name, g in zip(names, grads):
                            acc[name].add(capture.seen[name][0], g, mask)
        finally:
            capture.remove()
            for w, req in zip(weights, frozen):
                w.requires_grad_(req)
        return {name: sums.result() for name, sums in acc.items()}

    def penalty(self, model: TaskModel) -> torch.Tensor | None:
        device = model_device(model)
        if self.cfg.lam == 0:
            return torch.zeros((), device=device)
        if not self.curv:  # before the first on_stage_start
            return None
        params = dict(model.named_parameters())  # a stack's trial: its slices (stackable)
        with full_precision(device):
            total = torch.zeros((), device=device)
            for name, curv in self.curv.items():
                factors = factors_from(params, self._factors.get(name, []))
                if factors is None:
                    continue
                b, a = factors
                if name in self.anchor:  # ΔW = s·B·A − s·B0·A0 = [s·B, −s·B0]·[A; A0]
                    b0, a0 = self.anchor[name]
                    b, a = torch.cat([b, -b0], dim=1), torch.cat([a, a0], dim=0)
                if self.cfg.curvature == "kfac":
                    a_in, g = curv
                    # tr((BᵀGB)(A A_in Aᵀ)): both r×r and symmetric, so the trace of their
                    # product is the sum of their elementwise product.
                    total = total + ((b.T @ g @ b) * (a @ a_in @ a.T)).sum()
                else:
                    (f,) = curv
                    total = total + (f * (b @ a).pow(2)).sum()
            return 0.5 * self.cfg.lam * total

    def _keys(self) -> tuple[str, ...]:
        return ("A_in", "G") if self.cfg.curvature == "kfac" else ("F",)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            f"{k}.{name}": t.cpu()
            for name, curv in self.curv.items()
            for k, t in zip(self._keys(), curv)
        }
        for name, (b0, a0) in self.anchor.items():
            state[f"sB0.{name}"], state[f"A0.{name}"] = b0.cpu(), a0.cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        keys = self._keys()
        names = {k.split(".", 1)[1] for k in state if k.split(".", 1)[0] in keys}
        self.curv = {n: tuple(state[f"{k}.{n}"] for k in keys) for n in names}
        anchored = {k.split(".", 1)[1] for k in state if k.startswith("sB0.")}
        self.anchor = {n: (state[f"sB0.{n}"], state[f"A0.{n}"]) for n in anchored}
