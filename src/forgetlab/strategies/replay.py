"""Experience replay: a buffer of earlier tasks' training examples mixed into every batch of
later stages (Rolnick et al. 2019, "Experience replay for continual learning", NeurIPS;
Chaudhry et al. 2019, "On tiny episodic memories in continual learning", arXiv:1902.10486).

The buffer, rebuilt at the start of every stage s > 1 from the run's seed (so a resumed stage
repeats it exactly), holds only examples of the tasks trained before stage s:

- `selection: random`: each earlier task keeps `examples_per_task` of its training examples,
  drawn uniformly without replacement (all of them if it has fewer). The draw depends on the
  seed and the task's position only: task 1 keeps the same examples at every later stage.
- `selection: reservoir`: one memory of `examples_per_task × (s − 1)` slots filled by
  reservoir sampling (Vitter's Algorithm R) over the stream of every earlier task's training
  examples in sequence order: a uniform sample of all examples seen, so a task holds slots in
  proportion to its training-set size (the count is `examples_per_task` per task only on
  average; the total is exact while the earlier tasks have that many examples).

Batch size. The loop's own batches of the current task are unchanged: B =
`training.batch_size` examples (fewer in an epoch's last batch), so a stage has as many steps
with replay as without. Each micro-batch adds R replayed examples, drawn uniformly without
replacement from the buffer,

    R = max(1, round(training.batch_size · ratio / (1 − ratio)))   (at most the buffer's size)

so that replayed examples are the fraction `ratio` of the combined batch (batch_size 16:
ratio 0.2 gives R = 4 of 20, ratio 0.5 gives R = 16 of 32). Every replayed example trains
with its own task's kind, head and loss (`kind.loss(model, task, batch)`: with per-task heads
its own head, with the shared head its own logits of it), grouped into one batch per task.
Each example weighs as much as a current one: the replayed loss added to the task loss is

    Σ_t (n_t / B) · loss_t      (n_t of the R examples from task t, loss_t their mean loss)

with B the current batch's size, i.e. the loop's total is the sum of per-example losses over
the combined batch divided by B, which is (B + R)/B times the combined batch's mean loss.

Over several processes (data parallel) B is the global batch's size; every process draws the
same R examples (the same seeded draws) and scores all of them, and counts the term by its
share of the current batch, so that the processes' terms add up to one process's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch

from forgetlab.errors import ConfigError
from forgetlab.models.task_model import TaskModel
from forgetlab.strategies.base import (
    EarlierTask,
    Strategy,
    StrategyConfig,
    StrategyContext,
    batch_size_of,
    check_fraction,
)

SELECTIONS = ("random", "reservoir")

T = TypeVar("T")


@dataclass
class ReplayConfig(StrategyConfig):
    name: str = "replay"
    examples_per_task: int = 50
    selection: str = "random"  # random (per task) | reservoir (one memory over all)
    ratio: float = 0.2  # fraction of each combined batch that is replayed

    def __post_init__(self) -> None:
        if self.examples_per_task <= 0:
            raise ConfigError(
                f"strategy.examples_per_task={self.examples_per_task!r} must be a positive integer"
            )
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"strategy.selection={self.selection!r} is not one of {', '.join(SELECTIONS)}"
            )
        check_fraction("ratio", self.ratio)


def replay_size(batch_size: int, ratio: float) -> int:
    """R replayed examples beside B current ones, so that R / (B + R) ≈ ratio."""
    return max(1, round(batch_size * ratio / (1 - ratio)))


def reservoir_sample(stream: Iterable[T], capacity: int, rng: random.Random) -> list[T]:
    """Vitter's Algorithm R: after n items, each is in the memory with probability
    capacity / n."""
    memory: list[T] = []
    for n, item in enumerate(stream):
        if n < capacity:
            memory.append(item)
        else:
            j = rng.randrange(n + 1)
            if j < capacity:
                memory[j] = item
    return memory


def build_buffer(
    earlier: list[EarlierTask], per_task: int, selection: str, seed: int, stage: int
) -> list[tuple[int, int]]:
    """The buffer as (position of the task in `earlier`, index in its training split)."""
    if selection == "random":
        out = []
        for pos, task in enumerate(earlier):
            rng = random.Random(f"replay/{seed}/task-{pos}")
            chosen = rng.sample(range(len(task.data)), min(per_task, len(task.data)))
            out += [(pos, i) for i in sorted(chosen)]
        return out
    stream = ((pos, i) for pos, task in enumerate(earlier) for i in range(len(task.data)))
    rng = random.Random(f"replay/{seed}/reservoir-{stage}")
    return sorted(reservoir_sample(stream, per_task * len(earlier), rng))


class Replay(Strategy):
    name = "replay"
    summary = "mix a buffer of earlier tasks' examples into every batch, each on its own head"
    reference = "Rolnick et al. 2019; Chaudhry et al. 2019 (reservoir)"
    config_cls = ReplayConfig
    cfg: ReplayConfig

    def __init__(self, cfg: ReplayConfig | None = None) -> None:
        super().__init__(cfg)
        self.buffer: list[tuple[int, int]] = []
        self.earlier: list[EarlierTask] = []
        self.rng = random.Random(0)

    def on_stage_start(self, ctx: StrategyContext) -> None:
        self.earlier = list(ctx.earlier)
        self.buffer = build_buffer(
            self.earlier, self.cfg.examples_per_task, self.cfg.selection, ctx.seed, ctx.stage
        )
        # The draws of a stage start from (seed, stage): a resumed stage draws the same.
        self.rng = random.Random(f"replay/{ctx.seed}/draws-{ctx.stage}")

    def draw(self, n: int) -> dict[int, list[int]]:
        """n buffer entries, uniformly without replacement, grouped by task position."""
        picked = self.rng.sample(self.buffer, min(n, len(self.buffer)))
        groups: dict[int, list[int]] = {}
        for pos, i in sorted(picked):
            groups.setdefault(pos, []).append(i)
        return groups

    def loss(self, model: TaskModel, batch: dict, ctx: StrategyContext) -> torch.Tensor | None:
        if not self.buffer:  # stage 1: nothing to replay
            return None
        current = ctx.batch_examples or batch_size_of(batch)  # B: the global batch
        total = None
        for pos, indices in self.draw(replay_size(ctx.batch_size, self.cfg.ratio)).items():
            task = self.earlier[pos]
            replayed = task.ops.collate(task.data, indices, ctx.pad_id, ctx.device)
            term = task.ops.loss(model, task.name, replayed) * (len(indices) / current)
            total = term if total is None else total + term
        # Every process draws and scores the same replayed examples; each counts its share.
        return None if total is None else total * ctx.share

    def on_stage_end(self, ctx: StrategyContext) -> None:
        self.buffer, self.earlier = [], []
