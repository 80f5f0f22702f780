"""Backbones (hub id, local path, packaged:*; `loading`), GGUF files converted to a cache
(`gguf`), tokenizer settings (`tokenizer`), the task heads on top of encoders (`task_model`)
and causal LMs that are their own task model (`causal_model`)."""

from forgetlab.models.causal_model import CausalTaskModel
from forgetlab.models.loading import (
    PACKAGED_MODELS,
    load_backbone,
    load_causal_backbone,
    load_tokenizer,
    model_type,
    resolve_model_path,
)
from forgetlab.models.task_model import TaskModel

__all__ = [
    "PACKAGED_MODELS",
    "CausalTaskModel",
    "TaskModel",
    "load_backbone",
    "load_causal_backbone",
    "load_tokenizer",
    "model_type",
    "resolve_model_path",
]
