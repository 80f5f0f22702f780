"""Train one stage of every trial of a stack, as `train_stage` trains it for a lone run.

Each trial keeps what makes its numbers its own: its batch order (`random.Random` seeded by
`stage_seed(seed, stage)`, as a lone run), its schedule, weight decay and clipping
(`StackedAdamW`), its loss (the kind's loss over its own rows only), its regulariser (its
own λ and estimates: the hooks run on its plain model, the penalty on its slices of the
stack, `TrialParameters`), its method's work around each step (`Method.step_hooks`: AdaLoRA
prunes each trial's ranks by its own scores) and its stop: a trial
whose loss becomes non-finite leaves the stack alone, with the error a lone run would raise,
and its rows are no longer computed. At each micro-batch the trials' batches run in groups of
similar length (`width_groups`, on CPU; one group on a GPU), a forward each, and one backward
over all of them; within a group they are padded to a common number of rows and length
(padding rows hold one unmasked pad token, so that every row's attention stays finite, and no
loss reads them).

Dropout: the stack draws its masks from one generator, seeded as the first active trial's
lone run; with dropout > 0 a stacked trial is therefore equal to its lone run in
distribution, not bit for bit (with dropout 0, as the tests run, the numbers agree to float
rounding). `training.dropout_masks` is the stack's, as a lone run's
(forgetlab.recipe.dropout_masks).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from forgetlab.config import TrainingConfig
from forgetlab.errors import ConfigError, TrainingDiverged
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.kinds.classification import loss as classification_loss
from forgetlab.kinds.next_token import lm_loss
from forgetlab.malloc import keep_freed_memory
from forgetlab.methods import Method, MethodConfig
from forgetlab.models.task_model import TaskModel
from forgetlab.recipe.dropout_masks import dropout_masks
from forgetlab.recipe.stacked.layers import StackedModel, TrialParameters, stack_models
from forgetlab.recipe.stacked.optimizer import Schedule, StackedAdamW
from forgetlab.recipe.train import StageStats, batch_stream, diverged, stage_seed, stage_steps
from forgetlab.regularizers.base import Regularizer, StageContext

log = logging.getLogger("forgetlab")

# Losses that are a mean over the rows of one forward's output, and which forward: "task"
# (`model(task, **inputs)`, the task head's logits) or "backbone" (a decoder's token logits,
# `model.backbone(**inputs).logits`, right-padded: a trial's block is cut to its own length,
# and causal attention makes the padding after it change nothing before it). A kind stacks
# when its loss is one of these (classification; text, instruction, perplexity).
STACKED_FORWARD = {classification_loss: "task", lm_loss: "backbone"}


def stack_forward(kind: str) -> str | None:
    """How a stack runs the forward of `kind`'s loss; None: it cannot stack."""
    return STACKED_FORWARD.get(KINDS[kind].loss)


@dataclass
class Trial:
    """One trial of a stack: its own plain model (scored and saved after each stage), its
    training values, its seed and its method config (whose values may differ between the
    trials, O-LoRA's lambda_orth: what its penalty reads; None: the stack's)."""

    model: TaskModel
    training: TrainingConfig
    seed: int
    method_cfg: MethodConfig | None = None


class _Output:
    """Stands in for the model in the kind's loss: returns one trial's block of the stacked
    forward, already computed, as the task's logits or as the backbone's output."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        return self.logits

    def backbone(self, **inputs: torch.Tensor) -> _Output:
        return self


def check_stackable_kind(kind: str) -> None:
    if stack_forward(kind) is None:
        stackable = [name for name in KINDS if stack_forward(name) is not None]
        raise ConfigError(
            f"stacked trials: task kind {kind!r} cannot be stacked yet "
            f"(stackable: {', '.join(stackable)}); run these trials one by one"
        )


# What one more forward of the stack costs, in row-tokens (rows x padded length) it could have
# computed instead: on 2 CPU cores a MiniLM LoRA forward + backward took 18 ms plus 0.245 ms a
# row-token (bf16, 16 rows of 8 to 48 tokens), so a group that saves more than ~75 row-tokens of
# padding pays. On a GPU a MiniLM step is launch-bound (25-30 ms whatever its size): one group.
GROUP_OVERHEAD = {"cpu": 75.0}


def width_groups(widths: list[int], rows: list[int], overhead: float | None) -> list[list[int]]:
    """The trials' batches (each one's padded length and rows) split into groups, each run as
    one forward padded to its own longest: the split that computes the fewest row-tokens
    counting `overhead` for each forward (None: one group). Trials of different seeds draw
    batches of unrelated lengths, and one forward padded to the longest of eight computed 2.3x
    the tokens of their own batches (SST-2). Exact over the trials sorted by length, where
    an optimal split is contiguous; each group keeps the trials' order."""
    n = len(widths)
    if overhead is None or n < 2:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: widths[i])
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the cheapest split of the j shortest
        most_rows = 0
        for i in range(j - 1, -1, -1):  # the last group: order[i:j], padded to widths[order[j-1]]
            most_rows = max(most_rows, rows[order[i]])
            cost = best[i] + overhead + (j - i) * most_rows * widths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return sorted(groups)


def merge_batches(batches: list[dict], pad_id: int) -> tuple[dict, int]:
    """The trials' collated batches as one: each padded to the longest length and the most
    rows; returns the merged inputs and the rows per trial."""
    rows = max(len(b["labels"]) for b in batches)
    width = max(b["inputs"]["input_ids"].shape[1] for b in batches)
    merged: dict[str, list[torch.Tensor]] = {k: [] for k in batches[0]["inputs"]}
    for b in batches:
        n = len(b["labels"])
        for key, value in b["inputs"].items():
            fill = pad_id if key == "input_ids" else 0
            block = value.new_full((rows, width), fill)
            block[:n, : value.shape[1]] = value
            if key == "attention_mask":
                block[n:, 0] = 1  # a padding row: one visible token, so attention stays finite
            merged[key].append(block)
    return {k: torch.cat(v) for k, v in merged.items()}, rows


def _optimizer(
    stack: StackedModel, trials: list[Trial], method: Method, mcfg: MethodConfig
) -> StackedAdamW:
    """Each trial's AdamW groups (the method's `optimizer_groups` on its own model) mapped
    onto the stacked parameters."""
    groups = []
    for t in trials:
        by_param = {}
        for g in method.optimizer_groups(t.model, mcfg, t.training.lr, t.training.weight_decay):
            for p in g["params"]:
                by_param[id(p)] = (g["lr"], g["weight_decay"])
        groups.append(by_param)
    params, base_lr, decay = {}, {}, {}
    for name, p in stack.named_stacked_parameters():
        if not p.requires_grad:
            continue
        per_trial = [
            g.get(id(t.model.get_parameter(name)), (0.0, 0.0)) for g, t in zip(groups, trials)
        ]
        params[name] = p
        base_lr[name] = [lr for lr, _ in per_trial]
        decay[name] = [wd for _, wd in per_trial]
    return StackedAdamW(params, base_lr, decay, [t.training.max_grad_norm for t in trials])


def grows_per_stage(method: Method) -> bool:
    """Whether the method changes the model at each stage's start (`on_stage_start`: O-LoRA's
    new adapter); its stack is then built anew at every stage (`stack_for_stage`)."""
    return type(method).on_stage_start is not Method.on_stage_start


def stack_for_stage(
    trials: list[Trial], method: Method, method_cfg: MethodConfig, stage: int, task: str
) -> StackedModel:
    """Each trial's `on_stage_start` on its plain model, under the seed `train_stage` sets
    for it (the method's draws, a new adapter's init, are then a lone run's), and one stack
    of the results."""
    for t in trials:
        set_seed(stage_seed(t.seed, stage))
        method.on_stage_start(t.model, method_cfg, stage, task)
    return stack_models([t.model for t in trials])


def _penalty(
    reg: Regularizer | None,
    method: Method | None,
    method_cfg: MethodConfig,
    view: TrialParameters | None,
    model: TaskModel,
) -> torch.Tensor | None:
    """One trial's penalty, as `train_stage` adds it: its regulariser's, then its method's
    (`method`: None where it has none; computed from the trial's slices of the stack),
    summed; None: neither has one."""
    terms = []
    if reg is not None and (x := reg.penalty(view)) is not None:
        terms.append(x)
    if method is not None and view is not None:
        own = method.penalty_of(dict(view.named_parameters()), model, method_cfg)
        if own is not None:
            terms.append(own)
    return torch.stack(terms).sum() if terms else None


def train_stacked_stage(
    stack: StackedModel,
    trials: list[Trial],
    alive: list[int],
    method: Method,
    method_cfg: MethodConfig,
    task: str,
    kind: str,
    data: EncodedSplit,
    accelerator: Accelerator,
    stage: int,
    pad_id: int,
    regularizers: dict[int, Regularizer] | None = None,
    source_data: list[tuple[str, EncodedSplit]] | None = None,
) -> dict[int, StageStats | TrainingDiverged]:
    """Train the trials `alive` (indices into `trials`, the stack's slices) on one task; each
    gets its StageStats, or the TrainingDiverged a lone run of it would have raised.
    `regularizers`: each regularised trial's own (stackable) regulariser, by trial index;
    `source_data`: the earlier tasks' data they may estimate from, as `train_stage`'s."""
    check_stackable_kind(kind)
    keep_freed_memory()  # once a process, as train_stage
    ops = KINDS[kind]
    device = accelerator.device
    regs = {k: r for k, r in (regularizers or {}).items() if k in alive}
    contexts = {
        k: StageContext(
            trials[k].model, stage, task, kind, data, pad_id, device, list(source_data or [])
        )
        for k in regs
    }
    own_penalty = type(method).penalty is not Method.penalty  # e.g. O-LoRA's overlap
    views = {k: TrialParameters(stack, k) for k in (alive if own_penalty else regs)}
    for k, reg in regs.items():  # on the trial's plain model, which holds its weights now
        reg.on_stage_start(contexts[k])
    set_seed(stage_seed(trials[alive[0]].seed, stage))  # the stack's dropout generator
    model = stack.model.to(device).train()
    plan = {k: stage_steps(trials[k].training, len(data)) for k in alive}
    streams = {
        k: batch_stream(
            kind, data, trials[k].training, random.Random(stage_seed(trials[k].seed, stage))
        )
        for k in alive
    }
    schedules = {k: Schedule(plan[k][2], plan[k][1]) for k in alive}
    optimizer = _optimizer(stack, trials, method, method_cfg)
    # a method's work around each trial's step (AdaLoRA's rank allocation), built per stage
    asked = {
        k: method.step_hooks(trials[k].model, trials[k].method_cfg or method_cfg) for k in alive
    }
    hooks = {k: h for k, h in asked.items() if h is not None}
    stats = {k: StageStats(task=task) for k in alive}
    windows: dict[int, list[tuple[float, float]]] = {k: [] for k in alive}
    out: dict[int, StageStats | TrainingDiverged] = {}
    cfg = trials[alive[0]].training  # grad_accum, log_every: the same in every trial
    active, step = list(alive), 0
    overhead = GROUP_OVERHEAD.get(device.type)
    forward = stack_forward(kind)
    zero = torch.zeros((), device=device)
    start = time.perf_counter()
    for micro in range(max(p[0] for p in plan.values())):
        active = [k for k in active if micro < plan[k][0]]
        if not active:
            break
        own = [ops.collate(data, next(streams[k]), pad_id, device) for k in active]
        widths = [b["inputs"]["input_ids"].shape[1] for b in own]
        groups = width_groups(widths, [len(b["labels"]) for b in own], overhead)
        losses: list[torch.Tensor] = [zero] * len(own)
        with accelerator.autocast(), dropout_masks(cfg.dropout_masks):  # the stack's masks
            for group in groups:  # one forward each; a single backward below
                inputs, rows = merge_batches([own[i] for i in group], pad_id)
                stack.layout.set([active[i] for i in group], rows)
                if forward == "task":
                    logits = model(task, **inputs)
                else:
                    logits = model.backbone(**inputs).logits
                for j, i in enumerate(group):
                    block = logits[j * rows : j * rows + len(own[i]["labels"])]
                    if forward == "backbone":  # its own length
                        block = block[:, : widths[i]]
                    losses[i] = ops.loss(_Output(block), task, own[i])
            penalties = [
                _penalty(
                    regs.get(k),
                    method if own_penalty else None,
                    trials[k].method_cfg or method_cfg,  # its own values (lambda_orth)
                    views.get(k),
                    trials[k].model,
                )
                for k in active
            ]
        n = len(active)
        tokens = [b["inputs"]["attention_mask"].sum() for b in own]
        pens = [zero if x is None else x.detach().float() for x in penalties]
        parts = [*(x.detach().float() for x in losses), *pens]
        values = torch.stack([*parts, *tokens]).tolist()
        finite = []
        for i, k in enumerate(active):
            loss, pen = values[i], values[n + i]
            if not math.isfinite(loss + pen):  # as a lone run: the task loss plus the penalty
                lr = trials[k].training.lr * schedules[k].factor
                out[k] = diverged(stage, task, loss + pen, step + 1, lr)
                log.info("stacked trial %d (seed %d): %s", k, trials[k].seed, out[k])
                continue
            finite.append(losses[i] if penalties[i] is None else losses[i] + penalties[i])
            stats[k].examples += len(own[i]["labels"])
            stats[k].tokens += int(values[2 * n + i])
            windows[k].append((loss, pen))
        active = [k for k in active if k not in out]
        if finite:
            accelerator.backward(torch.stack(finite).sum() / cfg.grad_accum)
        last_of_step = (micro + 1) % cfg.grad_accum == 0 or micro + 1 == plan[alive[0]][0]
        if not last_of_step or not active:
            continue
        optimizer.clip(active)
        # Taken once for both calls; not `views` (the trials' penalty views, used next step).
        hooked = {k: stack.slices(k) for k in active if k in hooks}
        for k, (params, grads) in hooked.items():
            hooks[k].before_step(params, grads)
        optimizer.step(
            [schedules[k].factor if k in schedules else 0.0 for k in range(len(trials))], active
        )
        for k, (params, grads) in hooked.items():
            hooks[k].after_step(params, grads)
        optimizer.zero_grad()
        step += 1
        for k in active:
            schedules[k].step()
            stats[k].steps = step
            if step % cfg.log_every == 0 or step == plan[k][1]:
                stats[k].record(step, windows[k])
    wall = time.perf_counter() - start
    for k in alive:
        if k in out:
            continue
        s = stats[k]
        s.wall_s = wall  # the stack's time: every trial trained in it together
        s.examples_per_s = s.examples / max(wall, 1e-9)
        s.tokens_per_s = s.tokens / max(wall, 1e-9)
        stack.copy_to(k, trials[k].model)
        if k in regs:  # e.g. EWC's Fisher, estimated on the trial's trained model
            regs[k].on_stage_end(contexts[k])
        out[k] = s
    model.eval()
    return out
