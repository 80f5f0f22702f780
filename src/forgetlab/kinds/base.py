"""The interface every task kind implements, and what scoring is given beside the model.

A kind is one module (`forgetlab/kinds/<kind>.py`) holding one object that satisfies
`TaskKind`; the registry in `forgetlab/kinds/__init__.py` lists them. The training loop, the
evaluator, regularisers and analyses talk to a task only through its kind's object.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from forgetlab.errors import ForgetlabError

T = TypeVar("T")


class Shards:
    """The processes that score one split together (data parallel) as a kind sees them:
    which of its eval batches this process scores, and how the per-example outputs of all
    processes are joined. Every process scores whole batches, the same batches one process
    would form, so the joined outputs are those of one process and so are the scores. This
    base class is one process: every batch, nothing to join (`forgetlab.recipe.data_parallel`
    joins across processes)."""

    rank, world = 0, 1

    def own(self, batches: list[T]) -> list[T]:
        """This process's batches: every world-th one from its rank (eval batches are sorted
        by length, so each process gets long and short ones alike)."""
        return batches[self.rank :: self.world]

    def join(self, outputs: dict[int, Any]) -> dict[int, Any]:
        """{example index: output} of every process's batches, from this process's part."""
        return outputs


ONE_PROCESS = Shards()


@dataclass(frozen=True)
class EvalContext:
    """What scoring a task may need beyond the model and the split."""

    batch_size: int
    accelerator: object
    pad_id: int
    tokenizer: object = None
    eval_cfg: object = None  # forgetlab.config.EvalConfig
    extra_metrics: tuple[str, ...] = ()
    shards: Shards = ONE_PROCESS  # several processes: each scores its share of the batches

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """The precision scoring runs in: `eval.dtype` — `auto` follows the training's
        (`training.mixed_precision`, through the accelerator), `fp32` turns autocast off,
        `bf16` autocasts to bfloat16 whatever the training used."""
        dtype = getattr(self.eval_cfg, "dtype", "auto")
        if dtype == "auto":
            return self.accelerator.autocast()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


@runtime_checkable
class TaskKind(Protocol):
    """How examples of one kind are encoded, batched, trained and scored."""

    name: str  # the key of the kind in the registry (a task's `kind`)
    trainable: bool  # False: scored only (listed under probes), e.g. multiple choice
    packs: bool  # documents become fixed-length blocks: max_*_examples count blocks
    from_files: bool  # a user's own file can hold tasks of this kind (`type: file`)

    def encode(
        self, examples: list, tokenizer: Any, max_length: int, pair_encoding: str, **options: Any
    ) -> Any:
        """The examples as a split (token ids, labels; `len(split)` examples and, for the
        batchers, `split.lengths`). Options a kind does not use (long_prompts) are ignored."""
        ...

    def train_batches(
        self, lengths: list[int], batch_size: int, rng: random.Random, group: bool = True
    ) -> list[list[int]]:
        """One epoch's batches of example indices, shuffled with `rng` (grouped by length)."""
        ...

    def eval_batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Batches of example indices for scoring (order does not matter, padding does)."""
        ...

    def collate(self, split: Any, indices: list[int], pad_id: int, device: Any) -> dict:
        """The padded batch of `indices` on `device`: {"inputs": {...}, "labels": tensor}.
        Kinds without a token loss raise ForgetlabError."""
        ...

    def loss(self, model: Any, task: str, batch: dict) -> torch.Tensor:
        """The scalar training loss of a collated batch (raises for kinds without one)."""
        ...

    def loss_units(self, split: Any, indices: list[int]) -> int:
        """How many terms `loss` of these examples is the mean of (examples, labelled target
        tokens): what a data-parallel shard's loss is weighted by (raises like `loss`)."""
        ...

    def evaluate(self, model: Any, task: str, split: Any, ctx: EvalContext) -> dict:
        """Scores of the eval split: {"score" (higher is better), "metric", "n", ...}. Kinds
        that can score their batches apart let `ctx.shards` pick and join them."""
        ...

    def baseline(self, split: Any) -> float | None:
        """The score of a model that learned nothing (majority class, chance level), or None
        when the score has no such floor (the learned test then compares with the base)."""
        ...


class ScoredOnly:
    """collate, loss and loss_units of a kind that is scored, not trained, and has no token
    loss to take a Fisher from (multiple choice, generation): calling them raises."""

    name: str
    trainable = False

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise ForgetlabError(
            f"tasks of kind {self.name!r} are scored, not trained: list them in probes"
        )

    collate = loss = loss_units = _refuse


def no_baseline(split: Any) -> None:
    """No floor: the learned test is paired against the base model's scores."""
    return None
