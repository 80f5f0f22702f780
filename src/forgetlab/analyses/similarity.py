"""`forgetlab analyze --similarity`, inter-task similarity in the pretrained model, to relate
forgetting to how alike tasks are.

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
from typing import TYPE_CHECKING

import numpy as np
import torch

from forgetlab.analyses.features import layer_features
from forgetlab.analyses.maths.cka import covariance_alignment
from forgetlab.analyses.maths.similarity import cosine_matrix, interference
from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spec import AnalysisFigure, CliOption, FigureContext
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.models import CausalTaskModel, TaskModel
from forgetlab.plotting import annotate, literal, new_figure, png
from forgetlab.recipe.probe_head import fit_probe_head

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "similarity"
FLAG = "task × task similarity"  # help of `forgetlab analyze --similarity`
REPORT_ORDER = 2
# probe_examples: training examples each task's linear probe is fitted on (features of all
# 2,000 quickstart examples per task would cost more than the rest of the analysis)
DEFAULTS = {"examples_per_task": 64, "batch_size": 32, "probe_examples": 512}
CLI = (CliOption("--examples", "examples_per_task", int, "probe examples per task"),)


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
        "gradient_cosine": cosine_matrix(grads),
        "interference": interference(run.metrics["accuracy_matrix"]),
        # forgetting_j = R[j][j] − R[T][j] (mean matrix over seeds); none for the last task
        "forgetting": [float(R[j + 1, j] - R[T, j]) if j < T - 1 else None for j in range(T)],
    }


def _matrix(title: str, tasks: list[str], M: list[list[float]]) -> list[str]:
    width = max(8, *(len(t) + 2 for t in tasks))
    lines = [title, " " * 10 + "".join(f"{t:>{width}}" for t in tasks)]
    for t, row in zip(tasks, M):
        lines.append(f"{t:<10}" + "".join(f"{v:>{width}.3f}" for v in row))
    return lines


def format_text(r: dict) -> list[str]:
    return [
        *_matrix(
            "Task similarity (pretrained model): feature-covariance alignment, last layer",
            r["tasks"],
            r["representation"],
        ),
        *_matrix(
            "Task similarity: cosine of loss gradients (linear-probe heads)",
            r["tasks"],
            r["gradient_cosine"],
        ),
    ]


def figure(data: dict, about: FigureContext) -> AnalysisFigure:
    return AnalysisFigure(
        f"Task similarity matrices of run {about.run_name}",
        f"Task × task similarity (seed {data.get('seed')}, {data.get('layer', 'last')} layer): "
        "of the representations (left) and cosine of the task gradients (middle; negative = "
        "conflicting updates)"
        + (
            "; right: how each stage changed each task's "
            + ("accuracy" if about.all_accuracy else "score")
            + ", R[i][j] − R[i−1][j]."
            if data.get("interference") is not None
            else "."
        ),
        draw(data, about.all_accuracy),
    )


def _task_heatmap(fig: Figure, ax, M: np.ndarray, tasks: list[str], title: str, signed: bool):
    if signed:  # cosines: diverging around 0, blue = aligned, as in the accuracy heatmaps
        im = ax.imshow(M, cmap="RdBu", vmin=-1, vmax=1)
        dark = np.abs(M) > 0.6
    else:
        lo = min(0.0, float(np.nanmin(M)))
        im = ax.imshow(M, cmap="viridis", vmin=lo, vmax=1)
        dark = (M - lo) < 0.5 * (1 - lo)  # lower half of the scale
    annotate(ax, M, ".2f", dark)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


def draw(sim: dict, accuracy: bool = True) -> bytes:
    """Representation similarity, gradient cosine and the interference (R[i] − R[i−1]);
    `accuracy` False: the tasks' scores are not all accuracy (−NLL...)."""
    tasks = [literal(t) for t in sim["tasks"]]
    T = len(tasks)
    rep = np.asarray(sim["representation"], float)
    grad = np.asarray(sim["gradient_cosine"], float)
    if rep.shape != (T, T) or grad.shape != (T, T):
        raise ValueError(f"similarity matrices must be {T}×{T}")
    inter = sim.get("interference")
    inter = None if inter is None else np.asarray(inter, float)
    if inter is not None and inter.shape != (T, T):
        raise ValueError(f"interference must be {T}×{T} (stage × task)")
    panels = 2 if inter is None else 3
    fig = new_figure(figsize=(1 + (1.6 + 0.75 * T) * panels, 2.6 + 0.45 * T), layout="constrained")
    axes = fig.subplots(1, panels)
    _task_heatmap(fig, axes[0], rep, tasks, "Representation similarity", signed=False)
    _task_heatmap(fig, axes[1], grad, tasks, "Gradient cosine", signed=True)
    if inter is not None:
        _interference_heatmap(fig, axes[2], inter, tasks, accuracy)
    return png(fig)


def _interference_heatmap(
    fig: Figure, ax, inter: np.ndarray, tasks: list[str], accuracy: bool = True
) -> None:
    """Row i: how training stage i changed the accuracy on each task, R[i] − R[i−1]."""
    span = max(0.05, float(np.nanmax(np.abs(inter))))
    im = ax.imshow(inter, cmap="RdBu", vmin=-span, vmax=span)
    annotate(ax, inter, "+.2f", np.abs(inter) > 0.6 * span)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), [f"stage {i + 1}" for i in range(len(tasks))])
    title = "Accuracy change per stage, R[i] − R[i−1]"
    ax.set_title(title if accuracy else "Score change per stage\nR[i] − R[i−1]", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
