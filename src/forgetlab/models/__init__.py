"""Backbones (hub id, local path, packaged:*) and the task heads on top of them."""

from forgetlab.models.loading import (
    PACKAGED_MODELS,
    load_backbone,
    load_tokenizer,
    resolve_model_path,
)
from forgetlab.models.task_model import TaskModel

__all__ = ["PACKAGED_MODELS", "TaskModel", "load_backbone", "load_tokenizer", "resolve_model_path"]
