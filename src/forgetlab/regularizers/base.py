"""The plug-in interface for penalties that keep a model close to what it knew.

The training loop calls the hooks; it never branches on which regulariser is active.
Implementations (L2-to-init, EWC, Laplace/K-FAC) register in `forgetlab.regularizers`.
"""

from __future__ import annotations

import torch

from forgetlab.models.task_model import TaskModel


class Regularizer:
    name = "none"

    def on_stage_start(self, model: TaskModel, stage: int, task: str) -> None:
        """Before the first step of a stage (e.g. snapshot θ₀)."""

    def penalty(self, model: TaskModel) -> torch.Tensor | None:
        """Added to the task loss at every step; None means no penalty."""
        return None

    def on_stage_end(self, model: TaskModel, stage: int, task: str) -> None:
        """After the last step of a stage (e.g. estimate this task's Fisher)."""
