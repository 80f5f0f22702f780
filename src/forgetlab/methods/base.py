"""What an adaptation method is: a validated config plus its hooks (prepare, the per-stage
`on_stage_start` and `penalty`, a stacked trial's `step_hooks`, the optimizer groups, save
and load).

A method decides which backbone weights train and how they are saved. Adding one is a file
with a config dataclass (validated in `__post_init__`) and a `Method` subclass, plus one line
in `forgetlab/methods/__init__.py`.

Data-driven inits (LoRA-GA, CorDA, EVA) compute the adapter from a few batches of real data:
such a method sets `needs_calibration = True`, its config inherits `CalibratedConfig`, and
`runner.build_model` hands its `prepare` a `Calibration`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models.task_model import TaskModel

# Weight decay is not applied to biases and norms (the usual BERT recipe).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class MethodConfig:
    name: str


@dataclass
class CalibratedConfig(MethodConfig):
    """The keys of a method that initialises from data (`needs_calibration`); a config mixes it
    in beside its own base, e.g. `class EvaMethodConfig(LoraMethodConfig, CalibratedConfig)`, and
    calls `check_calibration()` from its `__post_init__`."""

    calibration_batches: int = 8
    calibration_batch_size: int | None = None  # null: training.batch_size
    # null: the first task of the run, i.e. the data stage 1 is about to train on
    calibration_task: str | None = None

    def check_calibration(self) -> None:
        if self.calibration_batches < 1:
            raise ConfigError(f"method.calibration_batches={self.calibration_batches} must be >= 1")
        if self.calibration_batch_size is not None and self.calibration_batch_size < 1:
            raise ConfigError(
                f"method.calibration_batch_size={self.calibration_batch_size} must be >= 1 "
                "(or null for training.batch_size)"
            )


@dataclass(frozen=True)
class Calibration:
    """A few batches of one task's training data, for the inits computed from data.

    `runner.build_model` draws them from a fixed sample (`random.Random(seed)`) of the task's
    training split, so that --resume, which builds the model again, rebuilds the same init.
    """

    task: str  # the task the batches come from (its head is the one `loss` uses)
    kind: str
    # `collate` output: {"inputs": {input_ids, attention_mask, ...}, "labels": ...} on `device`
    batches: list[dict]
    loss: Callable[[nn.Module, str, dict], torch.Tensor]  # the kind's loss(model, task, batch)
    device: torch.device  # where the init is computed (the run's training device)


def sample_calibration(
    split: EncodedSplit,
    kind: str,
    task: str,
    n_batches: int,
    batch_size: int,
    seed: int,
    pad_id: int,
    device: torch.device | str = "cpu",
) -> Calibration:
    """`n_batches` batches of `batch_size` examples of `split` (an EncodedSplit of kind `kind`),
    drawn without replacement with `random.Random(seed)`: the same examples in the same order
    for the same seed. A split smaller than n_batches * batch_size is used whole."""
    ops = KINDS[kind]
    n = min(len(split), n_batches * batch_size)
    # Its own generator: neither torch's RNG (heads, adapters) nor training's batch order moves.
    indices = random.Random(seed).sample(range(len(split)), n)
    batches = [
        ops.collate(split, indices[i : i + batch_size], pad_id, device)
        for i in range(0, n, batch_size)
    ]
    return Calibration(
        task=task, kind=kind, batches=batches, loss=ops.loss, device=torch.device(device)
    )


def require_calibration(method: str, calibration: Calibration | None) -> Calibration:
    if calibration is None or not calibration.batches:
        raise ForgetlabError(
            f"method {method} initialises its adapter from data and needs calibration batches: "
            "build the model with forgetlab.recipe.build.build_model (or pass a "
            "forgetlab.methods.base.Calibration to prepare)"
        )
    return calibration


def missing_peft_feature(method: str, feature: str, error: Exception) -> ForgetlabError:
    """The error for a PEFT that lacks (or cannot import) what a method is built on."""
    import peft

    return ForgetlabError(
        f"method {method} needs {feature}, which the installed PEFT {peft.__version__} does not "
        f"provide ({type(error).__name__}: {error}); it was written against PEFT 0.21.2"
    )


@contextmanager
def calibrating(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Compute an init on `device` (the calibration's), then put the model back where it was
    and in the mode it was in: PEFT's calibration passes switch train/eval mode (EVA restores
    the mode of the PeftModel wrapper, which starts in train mode, onto the whole backbone),
    and `build_model` hands the model on to the runner as it got it."""
    first = next(model.parameters(), None)
    origin = first.device if first is not None else torch.device("cpu")
    training = model.training
    model.to(device)
    try:
        yield
    finally:
        model.to(origin)
        model.train(training)


class StepHooks(Protocol):
    """What a method runs around each optimizer step of one stacked trial (AdaLoRA's rank
    allocation). `params` and `grads` map the trial's parameter names (its plain model's) to
    its slices of the stack's parameters and gradients: views, so what a hook writes into them
    (in place, under no_grad) is the stack's."""

    def before_step(
        self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> None:
        """After the gradients are clipped, before the update."""

    def after_step(
        self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]
    ) -> None:
        """After the update, before the gradients are cleared."""


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `forgetlab methods`
    reference: ClassVar[str] = ""  # the paper, e.g. "Hu et al. 2021, arXiv:2106.09685"
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # True: `prepare` computes the init from data and must get a `Calibration`.
    needs_calibration: ClassVar[bool] = False
    # True: K trials of this method that differ only in values (lr, seed, warm-up, weight
    # decay) can train as one stacked model (`forgetlab.recipe.stacked`): every weight that
    # trains lives in an nn.Linear, nn.LayerNorm or nn.Embedding used as a plain layer, or in
    # a layer with a stacked twin (PEFT's DoRA, (IA)³, VeRA, AdaLoRA). A per-stage hook
    # (`on_stage_start`) makes the stack be built anew at each stage; a `penalty` must then
    # also be given as `penalty_of` (a stacked trial's weights are its slices of the stack),
    # and torch optimizer hooks as `step_hooks` (the stack's optimizer is not torch's).
    # Read from the class itself, never inherited (see `is_stackable`): a variant that
    # changes the forward must not become stackable unseen.
    stackable: ClassVar[bool] = False

    def prepare(
        self, model: TaskModel, cfg: MethodConfig, calibration: Calibration | None = None
    ) -> None:
        """Called once on the freshly loaded model, before stage 1: set what trains.
        `calibration` is given only to methods with `needs_calibration`."""

    def on_stage_start(self, model: TaskModel, cfg: MethodConfig, stage: int, task: str) -> None:
        """Called by `train_stage` at the start of every stage (1-based) on `task`, after the
        stage's seed is set and before the optimizer is built: a method that grows per stage
        (O-LoRA's new adapter) adds and unfreezes its parameters here. Its random draws are
        then fixed by (seed, stage), so a resumed run builds the same ones."""

    def penalty(self, model: TaskModel, cfg: MethodConfig) -> torch.Tensor | None:
        """A term `train_stage` adds to every training loss (beside the regularisers'
        penalties, and logged with them as the penalty); None: nothing to add."""
        return None

    def penalty_of(
        self, params: Mapping[str, torch.Tensor], model: TaskModel, cfg: MethodConfig
    ) -> torch.Tensor | None:
        """`penalty` over `params` (the model's parameter names -> tensors) instead of the
        model's own parameters: what a stacked trial's penalty is computed from (its slices
        of the stack; `model`, its plain model, gives only the structure). A stackable
        method with a `penalty` must give it here too."""
        if type(self).penalty is Method.penalty:
            return None
        raise NotImplementedError(f"method {self.name} has a penalty but no penalty_of")

    def step_hooks(self, model: TaskModel, cfg: MethodConfig) -> StepHooks | None:
        """What runs around each optimizer step of a stacked trial in one stage (asked at the
        stage's start; `model`: the trial's plain model); None: nothing. A lone run's
        optimizer is torch's, whose step hooks a method registers itself in `prepare`
        (AdaLoRA's); the stack's optimizer is its own and calls these instead."""
        return None

    def optimizer_groups(
        self, model: TaskModel, cfg: MethodConfig, lr: float, weight_decay: float
    ) -> list[dict]:
        """AdamW parameter groups; override for per-group learning rates (e.g. LoRA+)."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if any(k in name for k in NO_DECAY) else decay).append(p)
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        """Write the trained backbone state (full weights) into folder `path`."""
        model.backbone.save_pretrained(path, safe_serialization=True)

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise ForgetlabError(f"checkpoint {path} does not match the model")


def is_stackable(method: Method) -> bool:
    """Whether `method`'s own class declares `stackable = True`."""
    return bool(vars(type(method)).get("stackable", False))


def save_heads(model: TaskModel, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()}, str(path))


def load_heads(model: TaskModel, path: Path) -> None:
    model.heads.load_state_dict(load_file(str(path)))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
