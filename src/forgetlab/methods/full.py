"""Full fine-tuning: every backbone weight trains (the reference study's baseline)."""

from __future__ import annotations

from forgetlab.methods.base import Method, MethodConfig
from forgetlab.models.task_model import TaskModel


class FullFineTuning(Method):
    name = "full"
    summary = "all backbone weights and the head train"
    reference = "Devlin et al. 2019, arXiv:1810.04805 (fine-tuning every weight, as BERT)"
    config_cls = MethodConfig
    stackable = True

    def prepare(self, model: TaskModel, cfg: MethodConfig) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
