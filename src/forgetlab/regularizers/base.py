"""The plug-in interface for penalties that keep a model close to what it knew.

The training loop calls the hooks; it never branches on which regulariser is active.
Implementations (L2-to-init, EWC, Laplace/K-FAC) register in `forgetlab.regularizers`.

Per stage, the loop calls

    reg.on_stage_start(ctx)          # before the first step (snapshot θ₀, estimate curvature)
    loss + reg.penalty(model)        # every micro-batch, under autocast
    reg.on_stage_end(ctx)            # after the last step (e.g. this task's Fisher)

where `ctx` is a `StageContext`: what a regulariser may need from the runner (the stage's
data, its kind's batching and loss, the padding id, the device, and earlier tasks' data).
Every penalty is λ/2 · (a quadratic form), with λ the `lambda` key of the config section.

A regulariser's estimates (θ₀, Fishers, curvature) are state that a resumed run cannot
recompute from the current weights; `state_dict` / `load_state_dict` let the runner store them
beside each stage checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models.task_model import TaskModel

FISHER_TYPES = ("empirical", "true")


@dataclass
class StageContext:
    """What the runner hands to `on_stage_start` / `on_stage_end` for one stage.

    `source_data` holds the training data of the tasks trained *before* this stage, in order
    (empty at stage 1); regularisers that need "old" data (Laplace's curvature) read it.
    """

    model: TaskModel
    stage: int  # 1-based, as in train_stage
    task: str  # the task trained in this stage
    kind: str  # its kind, a key of forgetlab.kinds.KINDS
    data: EncodedSplit  # its (subsampled, tokenized) training split
    pad_id: int
    device: torch.device
    source_data: list[tuple[str, EncodedSplit]] = field(default_factory=list)

    @property
    def ops(self) -> Any:
        """The task kind (forgetlab.kinds.base.TaskKind): collate, loss, train_batches, ..."""
        return KINDS[self.kind]


@dataclass
class RegularizerConfig:
    """Keys shared by every regulariser. The YAML key `lambda` maps to `lam` (a keyword)."""

    name: str
    lam: float = 0.0

    def __post_init__(self) -> None:
        if not self.lam >= 0:  # `not >=` also rejects NaN
            raise ConfigError(f"regularizer.lambda={self.lam!r} must be >= 0")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"regularizer.{key}={value!r} is not one of {', '.join(choices)}")


def check_positive_int(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"regularizer.{key}={value!r} must be a positive integer")


class Regularizer:
    """No penalty. Subclasses set `name` and `config_cls` and override the hooks."""

    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no penalty"
    reference: ClassVar[str] = ""  # the paper, e.g. "Kirkpatrick et al. 2017, arXiv:1612.00796"
    config_cls: ClassVar[type[RegularizerConfig]] = RegularizerConfig
    # True when `penalty` reads the model only through `named_parameters()` / `parameters()`:
    # stacked trials (forgetlab.recipe.stacked) then score it on each trial's own slices
    stackable: ClassVar[bool] = False

    def __init__(self, cfg: RegularizerConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.config_cls(name=self.name)

    def check(self, model: TaskModel) -> None:
        """Raise ConfigError early (before any training) if `model` cannot be regularised."""

    def on_stage_start(self, ctx: StageContext) -> None:
        """Before the first step of a stage (e.g. snapshot θ₀)."""

    def penalty(self, model: TaskModel) -> torch.Tensor | None:
        """Added to the task loss at every step; None means no penalty."""
        return None

    def on_stage_end(self, ctx: StageContext) -> None:
        """After the last step of a stage (e.g. estimate this task's Fisher)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Estimates a resumed run needs (θ₀, Fishers, curvature); CPU tensors, flat names."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()`; called before `on_stage_start` of the resumed stage."""


STATE_FILE = "regularizer.safetensors"  # its name inside a stage checkpoint folder


def save_regularizer_state(reg: Regularizer, path: Path) -> None:
    """Write `reg.state_dict()` as safetensors (an empty file for a stateless regulariser)."""
    state = {k: v.detach().cpu().contiguous() for k, v in reg.state_dict().items()}
    save_file(state, str(path))


def load_regularizer_state(reg: Regularizer, path: Path) -> None:
    if not Path(path).is_file():
        raise ForgetlabError(
            f"cannot resume: {path} is missing (the regulariser's θ₀/Fisher/curvature of the "
            "finished stages); rerun without --resume"
        )
    reg.load_state_dict(load_file(str(path)))


# --------------------------------------------------------------------------------------
# helpers shared by the implementations


def selected_parameters(model: nn.Module, include_heads: bool) -> dict[str, nn.Parameter]:
    """The trainable parameters, by name; heads (`heads.*`) only if `include_heads`."""
    return {
        n: p
        for n, p in model.named_parameters()
        if p.requires_grad and (include_heads or not n.startswith("heads."))
    }


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Penalties are small differences of large numbers: compute them in fp32 even when the
    loop runs under bf16/fp16 autocast (matmuls would otherwise drop to half precision)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


@contextlib.contextmanager
def estimation_mode(model: nn.Module) -> Iterator[None]:
    """Curvature is a property of the deterministic network: no dropout (eval mode), grads on,
    no autocast; the training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), full_precision(model_device(model)):
            yield
    finally:
        model.train(was_training)


def sum_nll(
    model: TaskModel,
    task: str,
    batch: dict,
    fisher: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Σ_n −log p(y_n | x_n) over the batch (a sum, so that d/dθ of one row is that example's
    gradient). `empirical`: y_n are the data's labels; `true`: y_n ~ p(·|x_n), the model's own
    predictive distribution (one Monte-Carlo sample per example), which gives the Fisher
    information proper (Kunstner et al. 2019 on why the two differ).

    Classification kinds only: the model returns one row of logits per example.
    """
    logits = model(task, **batch["inputs"]).float()
    if fisher == "empirical":
        labels = batch["labels"]
    else:
        probs = torch.softmax(logits.detach(), dim=-1)
        # Sampled on CPU with a private generator: the training RNG stream stays untouched.
        labels = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1)
        labels = labels.to(logits.device)
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def check_kind(name: str, kind: str) -> None:
    if kind != "classification":
        raise ConfigError(
            f"regularizer {name} estimates a Fisher from class logits; task kind {kind!r} "
            "is not supported"
        )
