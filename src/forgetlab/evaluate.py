"""Score a model on one task's eval split: the kind decides how (accuracy, NLL, exact match)."""

from __future__ import annotations

from forgetlab.kinds import KINDS, EvalContext


def evaluate_task(model, task: str, kind: str, data, ctx: EvalContext) -> dict:
    """The task's scores: always `score` (higher is better), `metric` (its name) and `n`."""
    model.to(ctx.device)
    return KINDS[kind].evaluate(model, task, data, ctx)
