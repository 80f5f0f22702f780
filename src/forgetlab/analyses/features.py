"""Per-layer representations of a fixed probe set: what CKA compares between models.

Layer 0 is the embedding output, layer i the output of transformer block i (HF's
`hidden_states`). Two views:
- `mean`: one vector per example, the mean over its real (non-pad) tokens;
- `tokens`: one vector per real token, a fixed random subset of at most `max_tokens` of them
  (the same positions for every model, since the inputs and the seed are the same), because
  the debiased CKA needs an n × n Gram matrix.
"""

from __future__ import annotations

import torch

from forgetlab.models.task_model import TaskModel

POOLINGS = ("mean", "tokens")


def layer_names(n_hidden_states: int) -> list[str]:
    return ["embeddings"] + [f"layer {i}" for i in range(1, n_hidden_states)]


@torch.no_grad()
def layer_features(
    model: TaskModel,
    batches: list[dict],
    pooling: str = "mean",
    max_tokens: int = 2048,
    seed: int = 0,
) -> list[torch.Tensor]:
    """One float32 CPU tensor per layer: (n_examples, d) for `mean`, (≤ max_tokens, d) for
    `tokens`."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model.eval()
    per_layer: list[list[torch.Tensor]] = []
    for batch in batches:
        inputs = batch["inputs"]
        out = model.backbone(**inputs, output_hidden_states=True)
        mask = inputs["attention_mask"].bool()
        for i, hidden in enumerate(out.hidden_states):
            hidden = hidden.float()
            if pooling == "mean":
                m = mask.unsqueeze(-1).to(hidden.dtype)
                rows = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            else:
                rows = hidden[mask]
            if len(per_layer) <= i:
                per_layer.append([])
            per_layer[i].append(rows.cpu())
    layers = [torch.cat(parts) for parts in per_layer]
    if pooling == "tokens" and layers and len(layers[0]) > max_tokens:
        keep = torch.randperm(len(layers[0]), generator=torch.Generator().manual_seed(seed))
        keep = keep[:max_tokens].sort().values
        layers = [x[keep] for x in layers]
    return layers
