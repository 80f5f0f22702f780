"""Train one stage: one task, one method, from the model's current weights.

A short loop on Accelerate (device placement, bf16/fp16 autocast, loss scaling, trackers):
AdamW, linear warmup then linear decay, gradient accumulation, gradient clipping, dynamic
padding and length-grouped batches; the regularisers' penalties and the strategies' extra
losses join the task loss through their hooks. Every stage reseeds from (seed, stage), so a
run resumed from a stage checkpoint continues exactly as an uninterrupted one would. Over
several processes (a launcher's), each rank trains on its shard of every global batch and the
gradients are averaged (`forgetlab.recipe.data_parallel`). On a CPU shared with other
processes, torch's thread count follows the cores they leave (`forgetlab.thread_governor`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from forgetlab.config import TrainingConfig
from forgetlab.errors import ConfigError, TrainingDiverged
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.malloc import keep_freed_memory
from forgetlab.methods import Method, MethodConfig
from forgetlab.models.device import native_bf16, resolve_precision
from forgetlab.models.task_model import TaskModel
from forgetlab.recipe.data_parallel import DataParallel, launched_processes, refuse_sharded_launch
from forgetlab.recipe.dropout_masks import dropout_masks
from forgetlab.regularizers.base import Regularizer, StageContext
from forgetlab.strategies.base import EarlierTask, Strategy, StrategyContext
from forgetlab.threads import pacer

log = logging.getLogger("forgetlab")

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class StageStats:
    task: str
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    first_loss: float | None = None  # mean task loss over the first logging window
    final_loss: float | None = None  # mean task loss over the last logging window
    wall_s: float = 0.0
    examples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    # [step, loss, penalty]; penalty: all that is added to the task loss (the regularisers'
    # penalties and the strategies' losses)
    loss_curve: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def record(self, step: int, window: list[tuple[float, float]]) -> tuple[float, float]:
        """Log the micro-batches' (task loss, penalty) since the last point as one point of
        the loss curve at `step`; empties `window` and returns the point's means."""
        mean_loss = sum(w[0] for w in window) / len(window)
        mean_pen = sum(w[1] for w in window) / len(window)
        window.clear()
        self.loss_curve.append([step, mean_loss, mean_pen])
        if self.first_loss is None:
            self.first_loss = mean_loss
        self.final_loss = mean_loss
        return mean_loss, mean_pen


def stage_seed(seed: int, stage: int) -> int:
    return seed * 1000 + stage


def stage_steps(cfg: TrainingConfig, n_examples: int) -> tuple[int, int, int]:
    """A stage's (micro-batches, optimizer steps, warm-up steps) on `n_examples` examples."""
    batches_per_epoch = math.ceil(n_examples / cfg.batch_size)
    micro_batches = max(1, math.ceil(batches_per_epoch * cfg.epochs))
    total_steps = math.ceil(micro_batches / cfg.grad_accum)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
        micro_batches = min(micro_batches, total_steps * cfg.grad_accum)
    return micro_batches, total_steps, cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)


def batch_stream(
    kind: str, data: EncodedSplit, cfg: TrainingConfig, rng: random.Random
) -> Iterator[list[int]]:
    """A stage's training batches (example indices), epoch after epoch, in `rng`'s order;
    fractional epochs stop mid-way through the last one."""
    while True:
        yield from KINDS[kind].train_batches(data.lengths, cfg.batch_size, rng, cfg.group_by_length)


def diverged(stage: int, task: str, loss: float, step: int, lr: float) -> TrainingDiverged:
    """The error of a stage whose loss became non-finite at optimizer step `step`."""
    return TrainingDiverged(
        f"stage {stage} ({task}): loss became {loss} at step {step} "
        f"(lr {lr:.2e}); try a lower training.lr"
    )


def make_accelerator(cfg: TrainingConfig, project_dir: str | None = None) -> Accelerator:
    refuse_sharded_launch()
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    device = torch.device("cpu" if cpu else "cuda")
    if cfg.mixed_precision == "bf16" and not native_bf16(device):
        _warn_emulated_bf16()
    precision = resolve_precision(cfg.mixed_precision, device)
    _one_precision_at_a_time(precision)
    return Accelerator(
        mixed_precision=precision,
        cpu=cpu,
        log_with=cfg.trackers or None,
        project_dir=project_dir,
    )


def _one_precision_at_a_time(precision: str) -> None:
    """Accelerate keeps one AcceleratorState per process and refuses a second precision in it
    ("restart your runtime"). A process that runs configs one after another (the Python API,
    a sweep worker, `variants:` that differ in precision, an fp32 run and then an `auto` one on
    a bf16 CPU) needs a fresh state for each; the previous run's accelerator is finished by
    then. Under a launcher the precision is the launch's, the same for every run: refused."""
    state = AcceleratorState._shared_state  # the class's shared dict; {} before any Accelerator
    held = state.get("_mixed_precision")
    if held is None or held == precision:
        return
    if launched_processes() > 1:
        raise ConfigError(
            f"training.mixed_precision={precision} but this launched process already runs "
            f"{held}: the launch fixes one precision for all its runs"
        )
    AcceleratorState._reset_state()


@functools.cache
def _warn_emulated_bf16() -> None:  # once a process: make_accelerator runs once a seed
    log.warning(
        "training.mixed_precision=bf16 on a device without native bf16 (no AVX512-BF16 or "
        "AMX on this CPU): autocast emulates it, up to ~12x slower than fp32; "
        "mixed_precision: auto uses bf16 only where it is native"
    )


def _optimizer(model: TaskModel, method: Method, mcfg: MethodConfig, cfg: TrainingConfig, device):
    groups = [
        g for g in method.optimizer_groups(model, mcfg, cfg.lr, cfg.weight_decay) if g["params"]
    ]
    # Fused AdamW: on CPU the unfused update over MiniLM's 22.7M parameters takes ~0.26 s of a
    # ~0.45 s full-FT step (0.05 s fused; benchmarks/throughput.py). It needs float params.
    params = [p for g in groups for p in g["params"]]
    fused = device.type in ("cpu", "cuda") and all(p.dtype in FUSED_DTYPES for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def _shard_total(
    dp: DataParallel,
    task_loss: torch.Tensor,
    penalties: list[torch.Tensor],
    fixed: int,
    share: float,
) -> tuple[torch.Tensor, tuple[float, float]]:
    """A rank's loss to backpropagate: its part of the global batch's data loss (the task
    loss, a mean over the shard, times the shard's `share` of the batch's loss units; the
    strategies' losses, already their own shares) times the world, since the gradients are
    averaged; plus the penalties that are the same on every rank (`penalties[:fixed]`). And,
    over the global batch, the (task loss, penalty) to log."""
    own = penalties[fixed:]
    data = task_loss * share
    if own:
        data = data + torch.stack(own).sum()
    shared = torch.stack(penalties[:fixed]).sum() if fixed else None
    total = data * dp.world
    if shared is not None:
        total = total + shared
    loss, extra = dp.sum([task_loss.item() * share, sum(p.item() for p in own)])
    return total, (loss, extra + (0.0 if shared is None else shared.item()))


def train_stage(
    model: TaskModel,
    method: Method,
    method_cfg: MethodConfig,
    task: str,
    kind: str,
    data: EncodedSplit,
    cfg: TrainingConfig,
    accelerator: Accelerator,
    seed: int,
    stage: int,
    pad_id: int,
    regularizers: Sequence[Regularizer] = (),
    source_data: list[tuple[str, EncodedSplit]] | None = None,
    strategies: Sequence[Strategy] = (),
    earlier_tasks: Sequence[EarlierTask] = (),
    on_step: Callable[[int, int], bool | None] | None = None,
) -> StageStats:
    """Train `model` on one task's data; `source_data` (earlier tasks' training splits) is
    what regularisers may estimate old-task curvature from; `earlier_tasks` (the sequence's
    tasks before this stage) what strategies replay or distil. `on_step(step, total_steps)`
    runs at the stage's start (step 0) and after every optimizer step (evaluation during
    training, the forgetting guard); its time is not training time, and a true return value
    ends the stage there (`stats.steps` counts the steps taken)."""
    keep_freed_memory()  # once a process: large tensors reused, not faulted in every step
    set_seed(stage_seed(seed, stage))  # dropout, heads' RNG state
    rng = random.Random(stage_seed(seed, stage))  # batch order
    ops = KINDS[kind]
    device = accelerator.device
    # Before the optimizer is built: parameters a method adds for this stage must be in it.
    method.on_stage_start(model, method_cfg, stage, task)
    model.to(device).train()

    micro_batches, total_steps, warmup = stage_steps(cfg, len(data))

    optimizer = _optimizer(model, method, method_cfg, cfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    world = accelerator.num_processes
    dp = DataParallel(accelerator.process_index, world) if world > 1 else None
    if dp is None:
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    else:  # Accelerate's scheduler would step `world` times a step (it assumes sharded loaders)
        optimizer = accelerator.prepare(optimizer)
    ctx = StageContext(
        model=model,
        stage=stage,
        task=task,
        kind=kind,
        data=data,
        pad_id=pad_id,
        device=device,
        source_data=list(source_data or []),
    )
    for reg in regularizers:
        reg.on_stage_start(ctx)
    sctx = StrategyContext(
        model, stage, task, kind, pad_id, device, seed, cfg.batch_size, list(earlier_tasks)
    )
    for strategy in strategies:
        strategy.on_stage_start(sctx)

    stats = StageStats(task=task)
    window: list[tuple[float, float]] = []
    bar = tqdm(
        total=total_steps, desc=f"stage {stage} {task}", disable=not cfg.progress_bar, leave=False
    )
    start = time.perf_counter()

    def hook(step: int) -> bool:
        nonlocal start
        if on_step is None:
            return False
        paused = time.perf_counter()
        stop = bool(on_step(step, total_steps))
        start += time.perf_counter() - paused
        return stop

    stream = batch_stream(kind, data, cfg, rng)
    if dp is not None:  # own dropout masks per rank; what the ranks share was drawn above
        torch.manual_seed(stage_seed(seed, stage) * 1009 + 1 + dp.rank)
    lengths = data.lengths  # attended tokens per example
    step = 0
    stop = hook(0)
    # On a CPU shared with other processes: torch's threads fitted to the cores they leave,
    # checked at most once a second (forgetlab.thread_governor; None: the user chose them)
    pace = pacer() if device.type == "cpu" and world == 1 else None
    for micro in range(micro_batches):
        if stop:
            break
        if pace is not None:
            pace()
        indices = next(stream)
        mine = dp.shard(indices) if dp else indices
        tokens = sum(lengths[i] for i in indices)
        # An empty shard (a batch smaller than the world) scores a stand-in example with
        # weight 0, so that every rank runs the same hooks (the strategies' draws stay in step).
        sctx.batch_examples, sctx.share = len(indices), len(mine) / len(indices)
        sctx.token_share = sum(lengths[i] for i in mine) / tokens
        batch = ops.collate(data, mine or indices[:1], pad_id, device)
        # the forward's dropout masks: torch's, or bits (forgetlab.recipe.dropout_masks)
        with accelerator.autocast(), dropout_masks(cfg.dropout_masks):
            task_loss = ops.loss(model, task, batch)
            penalties = [p for r in regularizers if (p := r.penalty(model)) is not None]
            if (own := method.penalty(model, method_cfg)) is not None:  # e.g. O-LoRA's overlap
                penalties.append(own)
            fixed = len(penalties)  # the same on every rank; what follows is the shard's
            penalties += [x for s in strategies if (x := s.loss(model, batch, sctx)) is not None]
            penalty = torch.stack(penalties).sum() if penalties else None
        if dp is None:
            total = task_loss if penalty is None else task_loss + penalty
            logged = task_loss.item(), 0.0 if penalty is None else penalty.item()
        else:  # the shard's part of the batch's loss units (examples, labelled tokens)
            units = ops.loss_units(data, mine) / max(ops.loss_units(data, indices), 1)
            total, logged = _shard_total(dp, task_loss, penalties, fixed, units)
        # with several ranks: the global loss, so that every rank stops together
        if not (torch.isfinite(total) if dp is None else math.isfinite(sum(logged))):
            bar.close()
            value = total.item() if dp is None else sum(logged)
            raise diverged(stage, task, value, step + 1, scheduler.get_last_lr()[0])
        accelerator.backward(total / cfg.grad_accum)
        stats.examples += len(indices)
        stats.tokens += tokens
        window.append(logged)
        last_of_step = (micro + 1) % cfg.grad_accum == 0 or micro + 1 == micro_batches
        if not last_of_step:
            continue
        if dp is not None:
            dp.average_gradients([p for p in model.parameters() if p.requires_grad])
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            mean_loss, mean_pen = stats.record(step, window)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            log.debug(
                "stage %d %s step %d/%d loss %.4f penalty %.4g lr %.2e %.1f ex/s %.0f tok/s",
                stage,
                task,
                step,
                total_steps,
                mean_loss,
                mean_pen,
                scheduler.get_last_lr()[0],
                stats.examples / elapsed,
                stats.tokens / elapsed,
            )
            accelerator.log({f"{task}/loss": mean_loss, f"{task}/penalty": mean_pen}, step=step)
        stop = hook(step)
    bar.close()
    for reg in regularizers:
        reg.on_stage_end(ctx)
    for strategy in strategies:
        strategy.on_stage_end(sctx)
    stats.steps = step
    stats.wall_s = time.perf_counter() - start
    stats.examples_per_s = stats.examples / max(stats.wall_s, 1e-9)
    stats.tokens_per_s = stats.tokens / max(stats.wall_s, 1e-9)
    model.eval()
    return stats
