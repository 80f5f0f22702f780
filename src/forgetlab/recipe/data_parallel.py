"""Data parallelism across the processes of one run (`accelerate launch`, torchrun,
`forgetlab run --processes N`): what the training loop, the evaluator and --resume need and
nothing more.

Training: every rank draws the same global batch (the same seeded rng) and takes its own
contiguous shard of it. A shard's task loss (a mean over the shard's loss units: examples for
classification, labelled target tokens for causal LMs, `TaskKind.loss_units`) is weighted by
the shard's share of the global batch's units times the world, so that after the gradients
are averaged across ranks they equal the gradient of the global batch's mean, whatever the
shards' token counts; the strategies' losses are their own shares (`StrategyContext.share`).
The gradients are averaged here with one all-reduce of a flat buffer (no
DistributedDataParallel wrapper: parameter names, hooks and the model object stay as they
are), after which every rank clips and steps identically.

Evaluation: each rank scores every world-th eval batch of a task and the kinds join the
per-example outputs with an all-gather (`Shards`), so every rank computes one process's
scores. Resuming: rank 0 reads the run directory and broadcasts the state and checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from forgetlab.errors import ConfigError
from forgetlab.kinds.base import ONE_PROCESS, Shards
from forgetlab.rundir import RunDir

T = TypeVar("T")


def process_rank() -> int:
    """This process's rank among a launcher's workers (torchrun and `accelerate launch` set
    RANK); 0 without a launcher."""
    return int(os.environ.get("RANK", "0"))


def eval_shards(accelerator) -> Shards:
    """How the accelerator's processes share evaluation: each its part of every eval set."""
    world = accelerator.num_processes
    return DataParallel(accelerator.process_index, world) if world > 1 else ONE_PROCESS


def share_resume(out: RunDir, seed: int, state: dict | None, names: list[str], accelerator):
    """--resume over several processes: rank 0 read `seed`'s state.json (the ranks above 0
    write into a temporary directory, which holds none); every rank gets rank 0's state, and
    the stage checkpoint it continues from is copied into every rank's run directory, so that
    all ranks load the same weights and agree on where the seed continues."""
    dp = DataParallel(accelerator.process_index, accelerator.num_processes)
    state = dp.broadcast(state)
    done = len(state["rows"]) - 1 if state else 0
    if 0 < done < len(names):
        dp.share_folder(out.checkpoint_dir(seed, done, names[done - 1]))
    return state


# What `accelerate launch` sets for the FSDP and DeepSpeed configs (configs/accelerate/).
SHARDED_LAUNCH = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed ZeRO"}


def refuse_sharded_launch(environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError under an FSDP or DeepSpeed launch: forgetlab's training does not hand the
    model to Accelerate's sharding yet, so each rank would silently keep a whole replica —
    plain data parallelism under a config that promises sharding (docs/scale.md)."""
    for key, name in SHARDED_LAUNCH.items():
        if environ.get(key, "").strip().lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"launched with {name} ({key}): forgetlab does not shard the model yet, every "
                "process would hold a whole copy; use configs/accelerate/ddp_cpu_2.yaml-style "
                "data parallelism (see docs/scale.md)"
            )


def end_process_group() -> None:
    """A launched worker's last step once its runs are done: wait for the other ranks, then
    destroy the process group. Left to the interpreter's exit, gloo's threads can be torn
    down still joinable and the worker aborts (SIGABRT, "terminate called without an active
    exception") after its work is written, failing the launch: 5 of 12 launches of a 2-rank
    probe on a busy 2-core CPU did, 0 of 12 with this (2026-12-02)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj`, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share_folder(self, folder: Path) -> None:
        """Rank 0's files under `folder` (a stage checkpoint), written into the same place on
        every other rank: each rank then loads its own copy."""
        files = None
        if self.rank == 0:
            files = {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
                     if f.is_file()}  # fmt: skip
        files = self.broadcast(files)
        if self.rank > 0:
            for name, data in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)

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
