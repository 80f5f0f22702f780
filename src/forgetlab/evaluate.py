"""Score a model on one task's eval split (accuracy plus the task's extra metrics)."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.metrics import classification_scores
from forgetlab.models.task_model import TaskModel


@torch.no_grad()
def evaluate_task(
    model: TaskModel,
    task: str,
    kind: str,
    data: EncodedSplit,
    extra_metrics: tuple[str, ...],
    batch_size: int,
    accelerator: Accelerator,
    pad_id: int,
) -> dict:
    ops = KINDS[kind]
    was_training = model.training
    model.to(accelerator.device).eval()
    preds = [0] * len(data)
    for indices in ops.eval_batches(data.lengths, batch_size):
        batch = ops.collate(data, indices, pad_id, accelerator.device)
        with accelerator.autocast():
            out = ops.predict(model, task, batch).tolist()
        for i, p in zip(indices, out):
            preds[i] = p
    model.train(was_training)
    scores = classification_scores(preds, data.labels, extra_metrics)
    scores["n"] = len(data)
    return scores
