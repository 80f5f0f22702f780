"""Log-likelihood of each choice's continuation given its context, batched over questions.

Speed: a question's context is usually much longer than its choices and is shared by all of
them, so `choice_loglikelihoods` runs each context once and continues every choice from its
key/value cache, instead of running context + choice once per choice. Many questions share
one forward: contexts are left-padded (positions come from the attention mask, as in batched
generation), the cache is gathered row by row over the choices, and the choices follow,
right-padded. Two forwards per batch of questions replace one forward per choice, and the
context's tokens are computed once instead of once per choice. `naive_choice_loglikelihoods`
is the plain one-forward-per-choice reference the fast path is tested against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from forgetlab.kinds.scorers.inference import eval_mode

if TYPE_CHECKING:
    from forgetlab.kinds.multiple_choice import MCSplit


def choice_loglikelihoods(
    model,
    split: MCSplit,
    batch_size: int,
    device: str | torch.device,
    pick: Callable[[list[list[int]]], list[list[int]]] | None = None,
) -> list[list[float]]:
    """Summed log-probability of each choice's continuation given its context, per question.
    `batch_size` caps the choice rows per forward (a question with more choices than that is
    scored alone). `pick` chooses which of the batches of questions to score (one process's
    share of them, `Shards.own`); the questions of the others keep an empty list."""
    result: list[list[float]] = [[] for _ in range(len(split))]
    names = _ForwardNames.of(model)
    groups = _groups(split, batch_size)
    with eval_mode(model):
        for group in pick(groups) if pick else groups:
            for i, lls in zip(group, _score_group(model, names, split, group, device)):
                result[i] = lls
    return result


def _groups(split: MCSplit, batch_size: int) -> list[list[int]]:
    # Similar context lengths together, so left padding wastes little.
    order = sorted(range(len(split)), key=lambda i: len(split.context_ids[i]))
    groups, current, rows = [], [], 0
    for i in order:
        k = len(split.continuation_ids[i])
        if current and rows + k > batch_size:
            groups.append(current)
            current, rows = [], 0
        current.append(i)
        rows += k
    return [*groups, current] if current else groups


def _score_group(
    model, names: _ForwardNames, split: MCSplit, group: list[int], device: str | torch.device
) -> list[list[float]]:
    contexts = [split.context_ids[i] for i in group]
    ids, mask = _left_pad(contexts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # A cache object passed in is filled in place (older transformers return plain tuples
    # unless given one, and tuples cannot be gathered over the choices).
    cache = _new_cache(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{names.cache: cache},
        **names.last_logits,
    )
    # The context's last position predicts every choice's first token.
    first = out.logits[:, -1].float().log_softmax(-1).cpu()
    rows = [(g, c) for g, i in enumerate(group) for c in split.continuation_ids[i]]
    lls = [float(first[g, cont[0]]) for g, cont in rows]
    longer = [r for r, (_, cont) in enumerate(rows) if len(cont) > 1]
    if longer:
        rest = _continue_choices(model, names, cache, mask, [rows[r] for r in longer], device)
        for r, extra in zip(longer, rest):
            lls[r] += extra
    return _regroup(lls, [len(split.continuation_ids[i]) for i in group])


def _continue_choices(
    model, names: _ForwardNames, cache, context_mask: torch.Tensor, rows, device
) -> list[float]:
    """Run the choices' tokens (all but the last) after their contexts' cached keys/values;
    return each row's summed log-probability of its tokens after the first."""
    owner = torch.tensor([g for g, _ in rows])
    cache.reorder_cache(owner.to(device))  # row r continues context `owner[r]` (a gather)
    inputs = [cont[:-1] for _, cont in rows]
    width = max(len(x) for x in inputs)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (_, cont) in enumerate(rows):
        ids[r, : len(cont) - 1] = torch.tensor(cont[:-1])
        targets[r, : len(cont) - 1] = torch.tensor(cont[1:])
    choice_mask = (targets >= 0).long()
    ctx_mask = context_mask[owner]
    mask = torch.cat([ctx_mask, choice_mask], dim=1)
    positions = ctx_mask.sum(-1, keepdim=True) + torch.arange(width)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{names.cache: cache},
    )
    logp = out.logits.float().log_softmax(-1).cpu()
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * choice_mask).sum(-1).tolist()


def _new_cache(model):
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    if config is None:
        return DynamicCache()
    try:
        return DynamicCache(config=config)  # layer types (sliding windows) from the config
    except TypeError:  # transformers before 4.56 take no config here
        return DynamicCache()


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding puts every context's last token in the final column, where its logits and
    # the start of its cache line up; the pad id is irrelevant (masked out).
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _regroup(flat: list[float], sizes: list[int]) -> list[list[float]]:
    out, start = [], 0
    for k in sizes:
        out.append(flat[start : start + k])
        start += k
    return out


@dataclass(frozen=True)
class _ForwardNames:
    """Keyword names of the model's forward, which differ between transformers versions."""

    cache: str  # "cache" from transformers 5.24, "past_key_values" before
    last_logits: dict  # {"logits_to_keep": 1}, {"num_logits_to_keep": 1} (< 4.50) or {}

    @classmethod
    def of(cls, model) -> _ForwardNames:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
        params = inspect.signature(base.forward).parameters
        cache = "cache" if "cache" in params else "past_key_values"
        # Only the context's last logits are used; skipping the others saves the vocabulary
        # projection at every context position (a fifth of SmolLM2's compute per token).
        keep = [k for k in ("logits_to_keep", "num_logits_to_keep") if k in params]
        return cls(cache, {keep[0]: 1} if keep else {})


def naive_choice_loglikelihoods(model, split: MCSplit, device) -> list[list[float]]:
    """Reference scorer: one unpadded forward of context + choice per choice."""
    result = []
    with eval_mode(model):
        for ctx, conts in zip(split.context_ids, split.continuation_ids):
            lls = []
            for cont in conts:
                ids = torch.tensor([ctx + cont[:-1]], device=device)
                logp = model(input_ids=ids).logits[0, len(ctx) - 1 :].float().log_softmax(-1)
                lls.append(float(logp.gather(-1, torch.tensor(cont, device=device)[:, None]).sum()))
            result.append(lls)
    return result
