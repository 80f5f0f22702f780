"""A causal LM as a task model: no heads to add, its next-token head scores every task.

It exposes the same surface as `TaskModel` (`backbone`, an empty `heads`, `head_name`) so
that every method (which only touches `model.backbone`), regulariser, checkpoint and analysis
works on decoders unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalTaskModel(nn.Module):
    is_causal = True

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.heads = nn.ModuleDict()  # kept empty: checkpoints and methods expect the attribute
        self.num_labels: dict[str, int] = {}
        self.own_heads: set[str] = set()
        self.shared_head = False
        self.pooling = "mean"  # analyses pool hidden states over real tokens

    def head_name(self, task: str) -> str:
        return task

    def pool(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = outputs.hidden_states[-1] if outputs.hidden_states else outputs.logits
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, task: str | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits (batch, length, vocab); `task` is accepted for symmetry."""
        return self.backbone(**inputs).logits
