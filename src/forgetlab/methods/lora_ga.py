"""LoRA-GA: low-rank adaptation with gradient approximation (Wang, Yu & Li, 2024, "LoRA-GA:
Low-Rank Adaptation with Gradient Approximation", NeurIPS 2024, arXiv:2407.05000).

G = the loss gradient w.r.t. each targeted W (out x in), averaged over a few calibration
batches: the direction full fine-tuning would move W in at its first step. With G ≈ U S Vᵀ
(randomized SVD, q = 4r, 4 iterations, as the authors' code), the adapter starts from G's top
2r singular vectors, `direction: ArB2r` (the paper's): A0 = V[:, :r]ᵀ, B0 = U[:, r:2r], both
times d_out^¼ / √stable_gamma (`scale: stable`, the paper's Algorithm 1), so that the first
steps of LoRA move s·B·A along the best rank-2r approximation of G instead of starting from
B = 0. The base layer keeps W − s·B0·A0, frozen: the model is unchanged at init but its base
weights are rewritten, see `ResidualLora` for how forgetting stays measured against the
pretrained model and how checkpoints become a plain LoRA on the original weights.

PEFT's role: `preprocess_loraga` estimates G (gradients on the targeted weights only, averaged
over backward passes, left on each layer as `_peft_loraga_grad`). Its *init* is not used:
PEFT 0.21's `lora_ga_init` multiplies B0 by G's singular values and scales B0 only, which makes
B0·A0 (and the rewrite of W) vanishingly small — not the paper's init. A0, B0 and W_res are
written here instead, exactly as the authors' reference code does.

The gradient is that of the calibration task's loss (the first task of the run unless
`calibration_task` names another) with its freshly initialised head, on `calibration_batches`
batches of its training split: what stage 1 would compute at step 0. PEFT takes it in train
mode (dropout on); `build_model` seeds torch first, so the same gradient, SVD and init come
back on --resume. A targeted layer the loss does not reach (e.g. the pooler under
`model.pooling: cls`) has no gradient and keeps PEFT's plain LoRA init (B = 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import (
    CalibratedConfig,
    Calibration,
    calibrating,
    missing_peft_feature,
    require_calibration,
)
from forgetlab.methods.lora import (
    ADAPTER,
    LoraMethodConfig,
    ResidualLora,
    base_weight,
    check_rank,
    lora_layers,
    set_residual,
    targeted_linears,
)
from forgetlab.models.task_model import TaskModel

GRAD = "_peft_loraga_grad"  # where preprocess_loraga leaves each layer's averaged gradient
# Which of G's singular vectors (0-based, r of them each) start A and B (the paper's names).
DIRECTIONS = ("ArB2r", "A2rBr", "ArBr")
SCALES = ("stable", "gd", "unit")


@dataclass
class LoraGaMethodConfig(LoraMethodConfig, CalibratedConfig):
    # The adapter holds part of W at init: dropout on its input would drop part of the
    # pretrained layer itself (as for PiSSA), so it is off by default.
    lora_dropout: float = 0.0
    direction: str = "ArB2r"  # A: vectors 1..r, B: r+1..2r (A2rBr: swapped; ArBr: alternate)
    scale: str = "stable"  # stable: x d_out^(1/4)/sqrt(gamma); gd: / s; unit: as is
    stable_gamma: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_calibration()
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"method.direction={self.direction!r} must be one of {', '.join(DIRECTIONS)}"
            )
        if self.scale not in SCALES:
            raise ConfigError(f"method.scale={self.scale!r} must be one of {', '.join(SCALES)}")
        if not self.stable_gamma > 0:
            raise ConfigError(f"method.stable_gamma={self.stable_gamma} must be > 0")


def _preprocess_loraga():
    try:
        from peft import LoraConfig, preprocess_loraga
    except ImportError as e:
        raise missing_peft_feature(
            "lora_ga", "PEFT's LoRA-GA gradient estimate (peft.preprocess_loraga)", e
        ) from e
    return LoraConfig, preprocess_loraga


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Keep `module`'s parameters out of the gradient pass (PEFT only freezes the backbone it is
    given; the heads would otherwise collect stale gradients), then restore them."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None


def gradient_factors(
    grad: torch.Tensor, r: int, scaling: float, direction: str, scale: str, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) from the gradient `grad` (out x in, float32), as the paper's Algorithm 1 and
    the authors' code: singular vectors of G, no singular values."""
    u, _, v = torch.svd_lowrank(grad, q=min(4 * r, *grad.shape), niter=4)
    vh = v.T  # grad ≈ u diag(s) vh
    if direction == "ArB2r":
        a, b = vh[:r], u[:, r : 2 * r]
    elif direction == "A2rBr":
        a, b = vh[r : 2 * r], u[:, :r]
    else:  # ArBr: A vectors 1, 3, 5, ..., B vectors 0, 2, 4, ... (0-based)
        a, b = vh[1 : 2 * r : 2], u[:, 0 : 2 * r : 2]
    if scale == "stable":  # the paper's: update sizes stable across widths and ranks
        factor = grad.shape[0] ** 0.25 / gamma**0.5
        a, b = a * factor, b * factor
    elif scale == "gd":  # one SGD step on A, B moves W by the rank-2r part of G's step
        a, b = a / scaling, b / scaling
    return a.contiguous(), b.contiguous()


class LoraGa(ResidualLora):
    name = "lora_ga"
    stackable = True  # an init: the forward is plain LoRA on the residual base
    summary = "LoRA from the SVD of the first batches' gradient, W - s*B0@A0 frozen (LoRA-GA)"
    reference = "Wang, Yu & Li 2024, arXiv:2407.05000"
    config_cls = LoraGaMethodConfig
    needs_calibration = True

    def prepare(
        self,
        model: TaskModel,
        cfg: LoraGaMethodConfig,
        calibration: Calibration | None = None,
    ) -> None:
        cal = require_calibration(self.name, calibration)
        LoraConfig, preprocess_loraga = _preprocess_loraga()
        check_rank(model.backbone, cfg)
        layers = targeted_linears(model.backbone, cfg.target_modules)
        for layer_name, layer in layers.items():
            if 2 * cfg.r > min(layer.in_features, layer.out_features):
                raise ConfigError(
                    f"method.r={cfg.r}: LoRA-GA uses 2r={2 * cfg.r} singular vectors of each "
                    f"gradient, more than layer {layer_name} ({layer.out_features}x"
                    f"{layer.in_features}) has"
                )
        # Exact module names, so that the gradient pass covers exactly the layers PEFT adapts
        # ("all-linear" is only resolved inside get_peft_model).
        estimate = LoraConfig(
            **{**cfg.peft_kwargs(), "target_modules": sorted(layers)},
            init_lora_weights="lora_ga",  # preprocess_loraga insists on a LoRA-GA config
            lora_ga_config={},
        )

        def train_step() -> None:
            # PEFT averages the accumulated gradient over the backward passes.
            for batch in cal.batches:
                cal.loss(model, cal.task, batch).backward()

        with calibrating(model, cal.device):
            with _frozen(model.heads), warnings.catch_warnings():
                # PEFT counts backward passes with full backward hooks; the embeddings' output
                # needs no gradient, which torch reports for every layer.
                warnings.filterwarnings("ignore", "Full backward hook is firing")
                preprocess_loraga(model.backbone, estimate, train_step)
            # Plain LoRA layers (`lora_config`), then `init_adapter` writes A0, B0 and W_res.
            super().prepare(model, cfg)

    @torch.no_grad()
    def init_adapter(self, model: TaskModel, cfg: LoraGaMethodConfig) -> None:
        from peft.utils.other import transpose

        for layer in lora_layers(model.backbone).values():
            base = layer.get_base_layer()
            grad = getattr(base, GRAD, None)
            if grad is None:  # the loss does not reach this layer: plain LoRA init
                continue
            delattr(base, GRAD)
            a, b = gradient_factors(
                transpose(grad.float(), layer.fan_in_fan_out),  # as out x in
                layer.r[ADAPTER],
                layer.scaling[ADAPTER],
                cfg.direction,
                cfg.scale,
                cfg.stable_gamma,
            )
            set_residual(layer, base_weight(layer), a, b)
        # A gradient left over belongs to a layer PEFT did not adapt: the two target
        # resolutions disagree, and the init would not be the one asked for.
        leftover = [n for n, m in model.backbone.named_modules() if hasattr(m, GRAD)]
        if leftover:
            raise ForgetlabError(
                f"method {self.name}: PEFT did not adapt layers whose gradient was estimated "
                f"({', '.join(leftover[:3])})"
            )
