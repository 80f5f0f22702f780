"""Negative log-likelihood of labelled tokens: perplexity of packed text and the NLL of
responses given their prompts.

The scorers take a Hugging Face causal LM (or a PEFT wrapper of one): `model(input_ids=...,
attention_mask=...)` returning `.logits`. They run in eval mode under `torch.inference_mode`
and accumulate losses in float32 whatever the model's dtype; wrap a call in
`torch.autocast(device_type, dtype=torch.bfloat16)` to score faster in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.inference import eval_mode

IGNORE = -100  # label of positions that are not scored (the cross-entropy convention)


def masked_nll(
    model,
    input_ids: list[list[int]],
    labels: list[list[int]],
    batch_size: int,
    device: str | torch.device,
) -> dict:
    """Mean NLL (nats) of the tokens whose label is not IGNORE; labels[i][t] is the token
    expected at position t (so labels == input_ids scores a whole sequence but its first
    token, which has no context). Returns nll, perplexity, n_tokens."""
    total, count = 0.0, 0
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))  # less padding
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask, lab = right_pad([input_ids[i] for i in rows], [labels[i] for i in rows])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # position t predicts token t + 1
            targets = lab[:, 1:].to(device)
            total += F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1),
                targets.flatten(),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
            count += int((targets != IGNORE).sum())
    if count == 0:
        raise ForgetlabError("nothing to score: no tokens with a label")
    return {"nll": total / count, "perplexity": math.exp(total / count), "n_tokens": count}


def right_pad(
    input_ids: list[list[int]], labels: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # The pad id is irrelevant: padded positions are masked out of attention and labelled
    # IGNORE; right padding keeps every real token at its unpadded position.
    width = max(len(x) for x in input_ids)
    ids = torch.zeros((len(input_ids), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    lab = torch.full_like(ids, IGNORE)
    for row, (x, y) in enumerate(zip(input_ids, labels)):
        if len(x) != len(y):
            raise ValueError("input_ids and labels rows must have the same length")
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        lab[row, : len(y)] = torch.tensor(y)
    return ids, mask, lab


def perplexity(model, blocks: list[list[int]], batch_size: int, device: str | torch.device) -> dict:
    """Mean token NLL (nats), perplexity = exp(NLL) and n_tokens over `blocks` (e.g. from
    `forgetlab.kinds.next_token.pack_blocks`). A block's first token has no context: not scored."""
    return masked_nll(model, blocks, blocks, batch_size, device)


def response_nll(
    model,
    prompt_ids_list: list[list[int]],
    response_ids_list: list[list[int]],
    batch_size: int,
    device: str | torch.device,
) -> dict:
    """Mean NLL over response tokens only, each given its prompt and the response so far
    (prompt positions are labelled IGNORE). Returns nll, perplexity, n_tokens."""
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list differ in length")
    if any(not p for p in prompt_ids_list):
        # The first response token needs at least one token before it to be predicted.
        raise ForgetlabError("every prompt needs at least one token (e.g. bos)")
    ids = [p + r for p, r in zip(prompt_ids_list, response_ids_list)]
    labels = [[IGNORE] * len(p) + r for p, r in zip(prompt_ids_list, response_ids_list)]
    return masked_nll(model, ids, labels, batch_size, device)
