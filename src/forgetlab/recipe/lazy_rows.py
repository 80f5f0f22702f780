"""AdamW that updates a large embedding table only in the rows a stage has looked up.

Full fine-tuning trains MiniLM's 30,522 × 384 word embedding: half the model's parameters and
about half of fused AdamW's time per step, though a stage of SST-2 looks up a few thousand of
its rows. A row no batch has looked up yet has a zero gradient and zero moments, so AdamW's
whole update of it is the decoupled weight decay θ ← θ·(1 − lr·wd). `LazyRowsAdamW` keeps that
product for the rows not yet seen and applies it once: when a batch first looks a row up (a
forward pre-hook on the embedding) or when the stage ends (`flush`). The rows seen get torch's
own AdamW update, gathered into one contiguous block. The numbers are AdamW's up to the float
rounding of that product (tests/test_lazy_rows.py holds it to torch's AdamW).

It is used only where it is exact and pays (`lazy_tables`): on a CPU (on a GPU the dense
update of a table is a fraction of a millisecond and `nonzero()` would sync the host), in one
process (other ranks' rows would arrive in the averaged gradient unseen), with no penalty that
reaches every weight (a regulariser), and for the weight of an nn.Embedding that nothing else
shares (a tied output layer reads every row). The first step of each stage checks that the
gradient is zero outside the rows seen, and falls back to the dense update if it is not (a
model that reads the table some other way).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.adamw import adamw

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
