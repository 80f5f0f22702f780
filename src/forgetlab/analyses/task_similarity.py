"""Inter-task similarity in the pretrained model, to relate forgetting to how alike tasks are.

Two task × task matrices, both computed on the pretrained backbone (a property of the tasks
and the model, not of the method that later trains):
- `representation`: alignment of the tasks' feature covariances at the last layer
  (tr(C_a C_b) / ‖C_a‖‖C_b‖; examples of different tasks are not paired, so CKA's
  example-by-example form does not apply);
- `gradient_cosine`: cosine between the tasks' loss gradients w.r.t. every backbone weight,
  each task read out by a linear probe fitted on the pretrained features (a random head would
  make the gradient direction arbitrary); a decoder's tasks are read out by its own LM head.
Beside them, `interference[j][i]` = R[j][i] − R[j−1][i]: how training task j moved task i.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from forgetlab.analyses.cka import covariance_alignment
from forgetlab.analyses.features import layer_features
from forgetlab.analyses.runs import OpenRun
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models import CausalTaskModel, TaskModel
from forgetlab.recipe.probe_head import fit_probe_head

NAME = "similarity"
# probe_examples: training examples each task's linear probe is fitted on (features of all
# 2,000 quickstart examples per task would cost more than the rest of the analysis)
DEFAULTS = {"examples_per_task": 64, "batch_size": 32, "probe_examples": 512}


def check(run: OpenRun, seed: int, params: dict) -> None:
    if params["probe_examples"] < 2:
        raise ForgetlabError("probe_examples must be at least 2")
    if params["examples_per_task"] < 2:
        raise ForgetlabError("examples_per_task must be at least 2 for task similarity")


def _subset(split: EncodedSplit, n: int, seed: int) -> EncodedSplit:
    keep = sorted(random.Random(seed).sample(range(len(split)), min(n, len(split))))
    types = split.token_type_ids
    return EncodedSplit(
        input_ids=[split.input_ids[i] for i in keep],
        token_type_ids=None if types is None else [types[i] for i in keep],
        labels=[split.labels[i] for i in keep],
    )


def _probe_model(run: OpenRun, seed: int, n_probe: int) -> TaskModel | CausalTaskModel:
    backbone = run.pretrained_backbone()
    if run.is_causal:  # a decoder scores every task with its own next-token head
        return CausalTaskModel(backbone, backbone.config.hidden_size).to(run.device).eval()
    torch.manual_seed(seed)
    model = TaskModel(
        backbone,
        backbone.config.hidden_size,
        {t.name: t.data.num_labels for t in run.tasks},
        pooling=run.config.model.pooling,
        head_dropout=0.0,
    )
    for t in run.tasks:
        train = _subset(t.train, n_probe, seed)
        fit_probe_head(model, t.name, t.kind, train, run.pad_id, run.device, seed)
    return model.to(run.device).eval()


def _gradient(model: TaskModel, task, batches: list[dict]) -> torch.Tensor:
    params = list(model.backbone.parameters())
    for p in params:
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    n = sum(len(b["labels"]) for b in batches)
    for batch in batches:  # gradient of the mean loss over all probe examples
        loss = KINDS[task.kind].loss(model, task.name, batch) * (len(batch["labels"]) / n)
        loss.backward()
    return torch.cat([p.grad.reshape(-1).float().cpu() for p in params if p.grad is not None])


def _cosine_matrix(vectors: list[torch.Tensor]) -> list[list[float]]:
    unit = [v.double() / v.double().norm().clamp(min=1e-30) for v in vectors]  # 22M terms
    return [[float(a @ b) for b in unit] for a in unit]


def _interference(R: list[list[float]]) -> list[list[float]]:
    R = np.asarray(R)
    return (R[1:] - R[:-1]).tolist()


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    model = _probe_model(run, seed, params["probe_examples"])
    feats, grads = [], []
    for t in run.tasks:
        batches = run.probe_batches(t, params["examples_per_task"], params["batch_size"], seed=seed)
        feats.append(layer_features(model, batches)[-1])
        grads.append(_gradient(model, t, batches))
    R = np.asarray(run.metrics["accuracy_matrix"])
    T = len(run.tasks)
    return {
        "seed": seed,
        "tasks": run.task_names,
        "layer": "last",
        "representation": [[covariance_alignment(a, b) for b in feats] for a in feats],
        "gradient_cosine": _cosine_matrix(grads),
        "interference": _interference(run.metrics["accuracy_matrix"]),
        # forgetting_j = R[j][j] − R[T][j] (mean matrix over seeds); none for the last task
        "forgetting": [float(R[j + 1, j] - R[T, j]) if j < T - 1 else None for j in range(T)],
    }
