"""Full fine-tuning's AdamW step: every embedding row updated (torch's fused AdamW, what
train_stage uses) vs only the rows looked up so far (`LazyRowsAdamW` below). Tried for issue
14's goal 1 and not adopted: it did not pay here (docs/benchmarks.md).

The idea: MiniLM's 30,522 × 384 word embedding is half its parameters, yet a stage of SST-2
looks up a few thousand rows. A row no batch has looked up has a zero gradient and zero
moments, so AdamW's whole update of it is the decoupled decay θ ← θ·(1 − lr·wd):
`LazyRowsAdamW` keeps that product for the unseen rows and applies it once, when a batch
first looks a row up (a forward pre-hook) or at `flush()`; the rows seen get torch's own
AdamW update, gathered. Its numbers equalled torch.optim.AdamW's within 1e-6 (weights and
moments, fused and not, with a model that reads the table outside its lookups falling back to
the dense update; the tests are in git history, commit 366c43c).

The measurement: the packaged MiniLM, real SST-2 batches of 16 in a length-grouped order, one
optimizer step after each forward + backward. Both sides train from the same weights over the
same batches, alternating `--repeats` times; the table gives the median seconds of the
optimizer step and of the whole step (the first `WARM` steps of each run left out) and the
ratios dense / lazy, and how many of the 30,522 rows the lazy side updated at the end.

    python benchmarks/lazy_rows.py [--steps 50] [--repeats 3] [--bf16] [--threads T]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from collections.abc import Iterable

import torch
from common import machine, quiet
from torch import nn
from torch.optim.adamw import adamw

from forgetlab import load_config
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method, method_config
from forgetlab.models import load_tokenizer
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import pad_token_id, prepare_tasks

WARM = 5  # steps left out of each median: allocator and cache warm-up
log = logging.getLogger("forgetlab")

# Tables with fewer rows update densely: the gather and scatter cost more than they save.
MIN_ROWS = 4096


def lazy_tables(model: nn.Module) -> list[nn.Embedding]:
    """The trainable nn.Embedding tables of `model` with at least MIN_ROWS rows whose weight
    no other module shares."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding)
        and m.weight.requires_grad
        and not m.sparse
        and m.max_norm is None  # max_norm renormalises the rows it looks up, in place
        and m.num_embeddings >= MIN_ROWS
        and uses.get(id(m.weight)) == 1
    ]


class _Table:
    """One lazily updated table: the rows seen this stage and the decay the others owe."""

    def __init__(self, module: nn.Embedding) -> None:
        self.weight = module.weight
        rows, device = module.num_embeddings, module.weight.device
        self.seen = torch.zeros(rows, dtype=torch.bool, device=device)
        self.pending = 1.0  # Π (1 − lr·wd) over the steps since the unseen rows were exact
        self.checked = False
        self.hook = module.register_forward_pre_hook(self._before_lookup)

    @torch.no_grad()
    def _before_lookup(self, module: nn.Module, args: tuple) -> None:
        rows = args[0].reshape(-1).unique()
        self.catch_up(rows[~self.seen[rows]])

    @torch.no_grad()
    def catch_up(self, rows: torch.Tensor) -> None:
        """Give `rows` (not seen yet) the decay they owe; from now on AdamW updates them."""
        if rows.numel() == 0:
            return
        if self.pending != 1.0:
            w = self.weight
            w.index_copy_(0, rows, w.index_select(0, rows) * self.pending)
        self.seen[rows] = True

    @torch.no_grad()
    def flush(self) -> None:
        """Every row exact again (the unseen ones decayed); they stay unseen."""
        if self.pending != 1.0:
            unseen = (~self.seen).nonzero().squeeze(1)
            w = self.weight
            w.index_copy_(0, unseen, w.index_select(0, unseen) * self.pending)
        self.pending = 1.0


class LazyRowsAdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose `tables` (nn.Embedding modules among its parameters) update
    only the rows looked up so far. Call `flush()` before reading the tables' weights while
    training (evaluation mid-stage) and `close()` at the stage's end (flush, hooks removed)."""

    def __init__(self, params: Iterable, tables: list[nn.Embedding], **kwargs) -> None:
        super().__init__(params, **kwargs)
        if self.defaults.get("amsgrad") or self.defaults.get("maximize"):
            raise ValueError("LazyRowsAdamW: amsgrad and maximize are not supported")
        self._tables = {id(m.weight): _Table(m) for m in tables}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        held = []  # the tables' gradients, hidden from AdamW's own step, which skips them
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self._tables and p.grad is not None:
                    held.append((group, p, p.grad))
                    p.grad = None
        try:
            loss = super().step(closure)
        finally:
            for _, p, grad in held:
                p.grad = grad
        for group, p, grad in held:
            self._step_table(group, p, grad, self._tables[id(p)])
        return loss

    def _step_table(self, group: dict, p: torch.Tensor, grad: torch.Tensor, table: _Table) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if not table.checked:
            table.checked = True
            if bool(grad[~table.seen].any()):
                log.debug("lazy embedding rows: gradient outside the rows looked up; dense")
                table.catch_up((~table.seen).nonzero().squeeze(1))
        moments = (state["exp_avg"], state["exp_avg_sq"])
        rows = table.seen.nonzero().squeeze(1)
        dense = rows.numel() == p.shape[0]
        tensors = [p, grad, *moments]
        block = tensors if dense else [t.index_select(0, rows) for t in tensors]
        beta1, beta2 = group["betas"]
        adamw(
            [block[0]], [block[1]], [block[2]], [block[3]], [], [state["step"]],
            foreach=group["foreach"], fused=group["fused"], amsgrad=False, beta1=beta1,
            beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False,
        )  # fmt: skip
        if not dense:
            for target, value in zip((p, *moments), (block[0], block[2], block[3])):
                target.index_copy_(0, rows, value)
        table.pending *= 1.0 - group["lr"] * group["weight_decay"]

    def flush(self) -> None:
        for table in self._tables.values():
            table.flush()

    def close(self) -> None:
        self.flush()
        for table in self._tables.values():
            table.hook.remove()


def setup(steps: int):
    config = load_config(
        raw={
            "tasks": ["sst2"],
            "model": {"max_length": 128},
            "data": {"max_train_examples": 16 * steps, "max_eval_examples": 16},
            "method": {"name": "full"},
        }
    )
    tokenizer = load_tokenizer(config.model)
    (task,) = prepare_tasks(config, tokenizer)
    pad_id = pad_token_id(tokenizer)
    ops = KINDS[task.kind]
    order = ops.train_batches(task.train.lengths, 16, random.Random(1), True)
    batches = [ops.collate(task.train, b, pad_id, torch.device("cpu")) for b in order][:steps]
    return config, task, ops, batches


def one_run(config, task, ops, batches, lazy: bool, bf16: bool) -> tuple[list, list, int]:
    method, mcfg = get_method("full"), method_config(config.method)
    model = build_model(config, [task], method, mcfg, seed=1)
    groups = method.optimizer_groups(model, mcfg, 2e-5, 0.01)
    groups = [g for g in groups if g["params"]]
    tables = lazy_tables(model) if lazy else []
    if lazy:
        opt = LazyRowsAdamW(groups, tables, fused=True)
    else:
        opt = torch.optim.AdamW(groups, fused=True)
    model.train()
    step_s, total_s = [], []
    for batch in batches:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ops.loss(model, task.name, batch)
        loss.backward()
        mid = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end = time.perf_counter()
        step_s.append(end - mid)
        total_s.append(end - start)
    seen = int(next(iter(opt._tables.values())).seen.sum()) if lazy else 0
    if lazy:
        opt.close()
    return step_s[WARM:], total_s[WARM:], seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (where the CPU has it)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    config, task, ops, batches = setup(args.steps)
    print(
        f"full fine-tuning, sst2, {len(batches)} batches of 16, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.repeats} repeats alternating"
    )
    runs: dict[str, list] = {"dense": [], "lazy": []}
    seen = 0
    for _ in range(args.repeats):
        for side in runs:
            step, total, n = one_run(config, task, ops, batches, side == "lazy", args.bf16)
            runs[side].append((statistics.median(step), statistics.median(total)))
            seen = n or seen
    med = {s: [statistics.median(r[i] for r in runs[s]) for i in (0, 1)] for s in runs}
    for side in runs:
        step, whole = med[side][0] * 1e3, med[side][1] * 1e3
        print(f"{side:5s}  optimizer step {step:6.1f} ms   whole step {whole:6.1f} ms")
    print(
        f"dense / lazy: optimizer step {med['dense'][0] / med['lazy'][0]:.2f}x, "
        f"whole step {med['dense'][1] / med['lazy'][1]:.2f}x; rows updated by the lazy side at "
        f"the end: {seen} of 30522"
    )


if __name__ == "__main__":
    main()
