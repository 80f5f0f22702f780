"""Evaluate: one row of the score matrix — every task of the sequence, then every probe —
with the model as it is; and the same row during training (`eval.every`), for the learning
and forgetting curves. The task's kind decides how a task is scored (accuracy, NLL, exact
match, pass@1)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from forgetlab.config import Config
from forgetlab.kinds import KINDS, EvalContext
from forgetlab.recipe.data_parallel import eval_shards
from forgetlab.recipe.prepare import PreparedTask

log = logging.getLogger("forgetlab")


def evaluate_task(model, task: str, kind: str, data, ctx: EvalContext) -> dict:
    """The task's scores: always `score` (higher is better), `metric` (its name) and `n`."""
    model.to(ctx.device)
    return KINDS[kind].evaluate(model, task, data, ctx)


def eval_row(
    model, tasks: list[PreparedTask], config: Config, accelerator, pad_id: int, tokenizer=None
) -> list[dict]:
    """Every task's scores (the sequence's tasks, then the probes) with the model as it is.
    Over a launcher's processes each scores its share of every task's batches and the kinds
    join the outputs (`Shards`), so every rank gets one process's row; generation tasks are
    scored whole on every rank (their batches are not split)."""
    row = []
    shards = eval_shards(accelerator)
    for t in tasks:
        ctx = EvalContext(
            batch_size=config.eval.batch_size,
            accelerator=accelerator,
            pad_id=pad_id,
            tokenizer=tokenizer,
            eval_cfg=config.eval,
            extra_metrics=t.data.extra_metrics,
            shards=shards,
        )
        row.append(evaluate_task(model, t.name, t.kind, t.eval, ctx))
    return row


def eval_interval(every: float | None, total_steps: int) -> int | None:
    """eval.every as a step interval: N steps, or a fraction of the stage's steps."""
    if every is None:
        return None
    return int(every) if every >= 1 else max(1, round(every * total_steps))


# (seed, stage, step, total_steps, scores of every task then probe)
CurveCallback = Callable[[int, int, int, int, list[float]], None]


class CurveHook:
    """Evaluate every task and probe during training (eval.every): the learning and
    forgetting curves over training duration. Points land in state["curves"]; the stage's
    end is the matrix row itself, so it is not repeated here. `eval_s` counts the seconds
    spent evaluating (train_stage leaves them out of its own clock). `on_curve(seed, stage,
    step, total_steps, scores)`, if given, sees every point as it is measured (a sweep's
    pruner); it may raise to stop the run there."""

    def __init__(
        self,
        config: Config,
        state: dict,
        stage: int,
        model,
        scored: list[PreparedTask],
        accelerator,
        pad_id: int,
        tokenizer,
        on_curve: CurveCallback | None = None,
    ) -> None:
        self.config, self.state, self.stage, self.model = config, state, stage, model
        self.scored, self.accelerator, self.pad_id = scored, accelerator, pad_id
        self.tokenizer, self.on_curve = tokenizer, on_curve
        self.eval_s = 0.0
        if config.eval.every is not None:
            state.setdefault("curves", [])
            # a resumed stage starts its curve again
            state["curves"] = [c for c in state["curves"] if c["stage"] != stage]

    def __call__(self, step: int, total_steps: int) -> None:
        interval = eval_interval(self.config.eval.every, total_steps)
        # step 0 is the previous row; the stage's last step is the row after it
        if interval is None or step == 0 or step % interval or step == total_steps:
            return
        start = time.perf_counter()
        row = eval_row(
            self.model, self.scored, self.config, self.accelerator, self.pad_id, self.tokenizer
        )
        self.eval_s += time.perf_counter() - start
        self.state["curves"].append(
            {"stage": self.stage, "step": step, "total_steps": total_steps,
             "scores": [cell["score"] for cell in row]}
        )  # fmt: skip
        log_row(self.state["seed"], f"  step {step}/{total_steps}", self.scored, row)
        if self.on_curve is not None:
            scores = [cell["score"] for cell in row]
            self.on_curve(self.state["seed"], self.stage, step, total_steps, scores)


def log_row(seed: int, label: str, tasks: list[PreparedTask], row: list[dict]) -> None:
    cells = "  ".join(f"{t.name}={_cell_text(c)}" for t, c in zip(tasks, row))
    log.info("seed %d %-14s %s", seed, label, cells)


def _cell_text(cell: dict) -> str:
    if cell.get("metric") == "neg_nll":
        return f"nll {cell['nll']:.3f}"
    return f"{cell['score']:.3f}"
