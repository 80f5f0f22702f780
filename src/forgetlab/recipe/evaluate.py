"""Evaluate: one row of the score matrix — every task of the sequence, then every probe —
with the model as it is; and the same row during training (`eval.every`), for the learning
and forgetting curves. The task's kind decides how a task is scored (accuracy, NLL, exact
match, pass@1)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from forgetlab.config import Config
from forgetlab.kinds import KINDS, EvalContext
from forgetlab.recipe.prepare import PreparedTask

log = logging.getLogger("forgetlab")


def evaluate_task(model, task: str, kind: str, data, ctx: EvalContext) -> dict:
    """The task's scores: always `score` (higher is better), `metric` (its name) and `n`."""
    model.to(ctx.device)
    return KINDS[kind].evaluate(model, task, data, ctx)


def eval_row(
    model, tasks: list[PreparedTask], config: Config, accelerator, pad_id: int, tokenizer=None
) -> list[dict]:
    """Every task's scores (the sequence's tasks, then the probes) with the model as it is."""
    row = []
    for t in tasks:
        ctx = EvalContext(
            batch_size=config.eval.batch_size,
            accelerator=accelerator,
            pad_id=pad_id,
            tokenizer=tokenizer,
            eval_cfg=config.eval,
            extra_metrics=t.data.extra_metrics,
        )
        row.append(evaluate_task(model, t.name, t.kind, t.eval, ctx))
    return row


def eval_interval(every: float | None, total_steps: int) -> int | None:
    """eval.every as a step interval: N steps, or a fraction of the stage's steps."""
    if every is None:
        return None
    return int(every) if every >= 1 else max(1, round(every * total_steps))


def curve_hook(
    config: Config,
    state: dict,
    stage: int,
    model,
    scored: list[PreparedTask],
    accelerator,
    pad_id: int,
    tokenizer,
) -> Callable[[int, int], None] | None:
    """Evaluate every task and probe during training (eval.every): the learning and
    forgetting curves over training duration. Points land in state["curves"]; the stage's
    end is the matrix row itself, so it is not repeated here."""
    if config.eval.every is None:
        return None
    state.setdefault("curves", [])
    state["curves"] = [c for c in state["curves"] if c["stage"] != stage]  # a resumed stage

    def hook(step: int, total_steps: int) -> None:
        interval = eval_interval(config.eval.every, total_steps)
        if step % interval or step == total_steps:
            return
        row = eval_row(model, scored, config, accelerator, pad_id, tokenizer)
        state["curves"].append(
            {"stage": stage, "step": step, "total_steps": total_steps,
             "scores": [cell["score"] for cell in row]}
        )  # fmt: skip
        log_row(state["seed"], f"  step {step}/{total_steps}", scored, row)

    return hook


def log_row(seed: int, label: str, tasks: list[PreparedTask], row: list[dict]) -> None:
    cells = "  ".join(f"{t.name}={_cell_text(c)}" for t, c in zip(tasks, row))
    log.info("seed %d %-14s %s", seed, label, cells)


def _cell_text(cell: dict) -> str:
    if cell.get("metric") == "neg_nll":
        return f"nll {cell['nll']:.3f}"
    return f"{cell['score']:.3f}"
