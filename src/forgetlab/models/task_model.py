"""A pretrained backbone plus classification heads, one per task or one shared.

Heads live outside the backbone so that methods (LoRA, freezing, ...) only ever touch the
backbone, and a head is always trainable. With `per_task` heads each task keeps its own head
and old tasks are evaluated with their own head; with `shared` heads all tasks use one head
of size max(num_labels) and task j reads its first num_labels_j logits (the reference study's
"shared 2-way head" over binary GLUE tasks). Source tasks that are not trained (curvature
data for a regulariser) always have their own head, fitted as a linear probe and frozen.

`head_init` says how the sequence's heads start: `torch` is nn.Linear's own init
(kaiming-uniform weights, uniform bias in ±1/sqrt(hidden)); `hf` is what
AutoModelForSequenceClassification gives its new classifier: weights drawn from
normal(0, init_std) straight after the seed is set, zero bias. Under the same
`torch.manual_seed`, an `hf` head (the first, or the shared one) is bit-identical to HF's.
"""

from __future__ import annotations

import torch
from torch import nn

from forgetlab.config import HEAD_INITS

SHARED = "shared"


def new_head(hidden_size: int, n: int, init: str = "torch", init_std: float = 0.02) -> nn.Linear:
    """One classification head; see the module docstring for `init`."""
    if init == "torch":
        return nn.Linear(hidden_size, n)
    if init != "hf":
        raise ValueError(f"head init {init!r} is not one of {', '.join(HEAD_INITS)}")
    # skip_init draws nothing: the normal draw is then the first after the seed, as in HF
    head = torch.nn.utils.skip_init(nn.Linear, hidden_size, n)
    with torch.no_grad():
        head.weight.normal_(0.0, init_std)
        head.bias.zero_()
    return head


class TaskModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        hidden_size: int,
        num_labels: dict[str, int],
        pooling: str = "auto",
        head_dropout: float = 0.1,
        shared_head: bool = False,
        probe_heads: dict[str, int] | None = None,
        head_init: str = "torch",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_labels = dict(num_labels)
        self.shared_head = shared_head
        self.pooling = pooling
        self.dropout = nn.Dropout(head_dropout)
        sizes = {SHARED: max(num_labels.values())} if shared_head else dict(num_labels)
        self.heads = nn.ModuleDict(
            {k: new_head(hidden_size, n, head_init, init_std) for k, n in sizes.items()}
        )
        # Source tasks outside the sequence (regularizer.source) get their own heads, created
        # after the sequence's heads so that those keep the same init with or without them.
        self.own_heads = set(probe_heads or {})
        for name, n in (probe_heads or {}).items():
            self.heads[name] = nn.Linear(hidden_size, n)
            self.num_labels[name] = n

    def head_name(self, task: str) -> str:
        return SHARED if self.shared_head and task not in self.own_heads else task

    def pool(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        pooler = getattr(outputs, "pooler_output", None)
        if self.pooling in ("auto", "pooler") and pooler is not None:
            return pooler
        hidden = outputs.last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone(**inputs)
        pooled = self.dropout(self.pool(outputs, inputs["attention_mask"]))
        logits = self.heads[self.head_name(task)](pooled)
        return logits[:, : self.num_labels[task]]
