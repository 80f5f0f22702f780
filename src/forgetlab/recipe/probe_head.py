"""Linear probes: fit a source task's head on the frozen pretrained features.

A regulariser that estimates curvature on a task outside the trained sequence
(`source_tasks` + `regularizer.source`) needs a sensible read-out for that task's loss: the
pretrained solution for it is the best linear head on the pretrained features. Features are
computed once (no dropout), then the head is fitted full-batch, which takes seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models.task_model import TaskModel


@torch.no_grad()
def pooled_features(
    model: TaskModel, kind: str, data: EncodedSplit, pad_id: int, device, batch_size: int = 64
) -> torch.Tensor:
    ops = KINDS[kind]
    was_training = model.training
    model.to(device).eval()
    feats = torch.empty(len(data), model.heads[next(iter(model.heads))].in_features)
    for indices in ops.eval_batches(data.lengths, batch_size):
        batch = ops.collate(data, indices, pad_id, device)
        outputs = model.backbone(**batch["inputs"])
        feats[indices] = model.pool(outputs, batch["inputs"]["attention_mask"]).float().cpu()
    model.train(was_training)
    return feats


def fit_probe_head(
    model: TaskModel,
    task: str,
    kind: str,
    data: EncodedSplit,
    pad_id: int,
    device,
    seed: int,
    steps: int = 300,
    lr: float = 1e-2,
) -> float:
    """Fit model.heads[task] by full-batch AdamW on frozen features; returns the final loss."""
    feats = pooled_features(model, kind, data, pad_id, device)
    labels = torch.tensor(data.labels)
    head = model.heads[model.head_name(task)]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh, seeded init: the probe depends on the seed only
        bound = 1 / feats.shape[1] ** 0.5
        head.weight.copy_(
            torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator)
        )
        head.bias.zero_()
    weight = head.weight.detach().cpu().clone().requires_grad_(True)
    bias = head.bias.detach().cpu().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(feats @ weight.T + bias, labels)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    return float(loss.detach())
