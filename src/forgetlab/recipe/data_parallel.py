"""Data parallelism across the processes of one run (`accelerate launch`, torchrun,
`forgetlab run --processes N`): what the training loop needs and nothing more.

Every rank draws the same global batch (the same seeded rng) and takes its own contiguous
shard of it. A shard's data loss (a mean over the shard) is weighted by
n_shard · world / n_global, so that after the gradients are averaged across ranks they equal
the gradient of the global batch's mean. The gradients are averaged here with one
all-reduce of a flat buffer (no DistributedDataParallel wrapper: parameter names, hooks and
the model object stay as they are), after which every rank clips and steps identically.
Classification losses are means over examples, so the weighting is exact; token-mean losses
(causal LMs) are weighted by examples too, as DistributedDataParallel would.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from forgetlab.kinds.base import ONE_PROCESS, Shards

# The ranks > 0 write into a temporary directory, so they have nothing to resume from.
RESUME_REFUSED = (
    "--resume runs in one process: resume without --processes or a launcher "
    "(a run started over several processes continues in one)"
)


def process_rank() -> int:
    """This process's rank among a launcher's workers (torchrun and `accelerate launch` set
    RANK); 0 without a launcher."""
    return int(os.environ.get("RANK", "0"))


def eval_shards(accelerator) -> Shards:
    """How the accelerator's processes share evaluation: each its part of every eval set."""
    world = accelerator.num_processes
    return DataParallel(accelerator.process_index, world) if world > 1 else ONE_PROCESS


def launched_processes() -> int:
    """How many workers the launcher started (WORLD_SIZE); 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel(Shards):
    """The loop's and the evaluator's view of `world` processes of which this one is `rank`."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def join(self, outputs: dict[int, Any]) -> dict[int, Any]:
        """Every rank's {example index: output}, gathered onto every rank."""
        parts: list[dict[int, Any] | None] = [None] * self.world
        dist.all_gather_object(parts, outputs)
        return {i: out for part in parts for i, out in (part or {}).items()}

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's contiguous part of the global batch (sizes differ by one at most; an
        empty list when the batch is smaller than the world)."""
        n = len(indices)
        return indices[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    def weight(self, n_shard: int, n_global: int) -> float:
        """What a shard's mean loss is multiplied by so that averaged gradients are the
        global batch's mean gradient."""
        return n_shard * self.world / n_global

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of `params` over the ranks. A parameter that got no gradient
        on any rank keeps none (the optimizer then skips it, as with one process); one that
        got a gradient elsewhere counts as zero here (an empty shard)."""
        seen = torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64)
        dist.all_reduce(seen)
        live = [p for p, s in zip(params, seen.tolist()) if s > 0]
        if not live:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in live]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(live, _unflatten_dense_tensors(flat, grads)):
            p.grad = g.view_as(p).clone() if p.grad is None else p.grad.copy_(g)
