"""The plug-in interface for continual-learning strategies: extra training signal drawn from
what earlier stages saw (replayed examples, the previous model's outputs).

A strategy combines with any method and any regulariser. The training loop calls the hooks;
it never branches on which strategies are active. Per stage it calls

    strategy.on_stage_start(ctx)              # before the first step (fill a buffer, snapshot)
    loss + strategy.loss(model, batch, ctx)   # every micro-batch, under autocast
    strategy.on_stage_end(ctx)                # after the last step (free what it held)

where `ctx` is a `StrategyContext`: the stage, the run's seed, the training batch size and the
earlier tasks of the sequence with their kinds and training splits.

Strategies keep no state across stages that the run cannot rebuild: what they use at stage s
is recomputed at its start from the seed, the earlier tasks' data and the model as it is
after stage s − 1 (which `--resume` reloads). So a resumed stage repeats exactly, and no
state is stored beside the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from forgetlab.errors import ConfigError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models.task_model import TaskModel


@dataclass(frozen=True)
class EarlierTask:
    """A task trained before the current stage: its name, kind and training split."""

    name: str
    kind: str  # a key of forgetlab.kinds.KINDS
    data: EncodedSplit

    @property
    def ops(self) -> Any:
        return KINDS[self.kind]


@dataclass
class StrategyContext:
    """What the training loop hands to every hook of one stage."""

    model: TaskModel
    stage: int  # 1-based, as in train_stage
    task: str  # the task trained in this stage
    kind: str
    pad_id: int
    device: torch.device
    seed: int  # the run's seed: what every random draw of a strategy derives from
    batch_size: int  # training.batch_size, the size of the loop's own batches
    earlier: list[EarlierTask] = field(default_factory=list)  # in sequence order
    # Set before every micro-batch. Over several processes (data parallel) each gets its
    # shard of the loop's global batch, and a strategy's loss must be this process's share
    # of the global batch's term, so that the shares add up to one process's term:
    batch_examples: int = 0  # examples of the global batch (all processes)
    share: float = 1.0  # fraction of them in this process's batch (1 in one process)
    token_share: float = 1.0  # fraction of the global batch's attended tokens in it


@dataclass
class StrategyConfig:
    """Keys shared by every strategy."""

    name: str


def check_fraction(key: str, value: float) -> None:
    if not 0 < value < 1:  # also rejects NaN
        raise ConfigError(f"strategy.{key}={value!r} must be in (0, 1)")


def check_positive(key: str, value: float) -> None:
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"strategy.{key}={value!r} must be a finite number > 0")


class Strategy:
    """No extra signal. Subclasses set `name`, `summary` and `config_cls` and override the
    hooks."""

    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no strategy"
    reference: ClassVar[str] = ""
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, cfg: StrategyConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.config_cls(name=self.name)

    def on_stage_start(self, ctx: StrategyContext) -> None:
        """Before the first step of a stage."""

    def loss(self, model: TaskModel, batch: dict, ctx: StrategyContext) -> torch.Tensor | None:
        """Added to the task loss of every micro-batch (`batch`: the loop's collated batch of
        the current task, this process's shard of it); None adds nothing. Over several
        processes, this process's share of the term (`ctx.share`, `ctx.token_share`)."""
        return None

    def on_stage_end(self, ctx: StrategyContext) -> None:
        """After the last step of a stage."""


def batch_size_of(batch: dict) -> int:
    """The number of examples in a collated batch (of any kind)."""
    return int(batch["inputs"]["input_ids"].shape[0])
