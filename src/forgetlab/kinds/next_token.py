"""What the token-level LM kinds (instruction, text, perplexity) share: their split, padded
batches, the next-token loss and the NLL that scores them.

The score is −NLL per labelled token (higher is better), beside perplexity; every cell also
keeps its per-example NLLs for the `learned` test (a paired test of the base model's against
the trained model's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.errors import DataError, ForgetlabError
from forgetlab.kinds.base import EvalContext, no_baseline
from forgetlab.kinds.batches import LengthBatches, eval_batches
from forgetlab.kinds.scorers.nll import IGNORE, right_pad
from forgetlab.tasks.base import TextDocument


@dataclass
class LMSplit:
    """Token ids and their labels (IGNORE where not scored); padded per batch."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    n_truncated: int = 0  # prompts cut on the left to fit model.max_length
    n_rejected: int = 0  # examples dropped because their prompt did not fit (long_prompts)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def collate_lm(split: LMSplit, indices: list[int], pad_id: int, device) -> dict:
    ids, mask, labels = right_pad(
        [split.input_ids[i] for i in indices], [split.labels[i] for i in indices]
    )
    ids[mask == 0] = pad_id
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return {"inputs": inputs, "labels": labels.to(device)}


def lm_loss(model, task: str, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens (position t predicts token t+1)."""
    logits = model.backbone(**batch["inputs"]).logits
    return F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE
    )


def lm_loss_units(split: LMSplit, indices: list[int]) -> int:
    """The loss is a mean over labelled target tokens (every label but each row's first)."""
    return sum(sum(y != IGNORE for y in split.labels[i][1:]) for i in indices)


NLL_ROWS = 8


@torch.no_grad()
def per_example_nll(model, split: LMSplit, ctx: EvalContext) -> tuple[list[float], list[int]]:
    """Summed NLL and labelled-token count of every example (eval mode, autocast); with
    several processes (`ctx.shards`) each scores its batches and the counts are joined."""
    mine: dict[int, tuple[float, int]] = {}
    backbone = model.backbone
    was_training = model.training
    model.eval()
    try:
        # Few rows per forward: the logits are rows × length × vocabulary floats (SmolLM2:
        # 8 × 320 × 49,152 × 4 bytes = 0.5 GB), and moving them dominates the time on CPU.
        batches = eval_batches(split.lengths, min(ctx.batch_size, NLL_ROWS))
        for rows in ctx.shards.own(batches):
            batch = collate_lm(split, rows, ctx.pad_id, ctx.device)
            with ctx.autocast():
                logits = backbone(**batch["inputs"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            nll = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                reduction="none",
            ).view(targets.shape)  # fmt: skip
            for r, i in enumerate(rows):
                mine[i] = float(nll[r].sum()), int((targets[r] != IGNORE).sum())
    finally:
        model.train(was_training)
    joined = ctx.shards.join(mine)
    return [joined[i][0] for i in range(len(split))], [joined[i][1] for i in range(len(split))]


def evaluate_nll(model, task: str, split: LMSplit, ctx: EvalContext) -> dict:
    """−NLL per labelled token (the score), NLL, perplexity, token and example counts, and
    the per-example mean NLLs."""
    sums, counts = per_example_nll(model, split, ctx)
    n_tokens = sum(counts)
    if n_tokens == 0:
        raise ForgetlabError(f"task {task}: no labelled tokens to score")
    nll = sum(sums) / n_tokens
    return {
        "score": -nll,
        "metric": "neg_nll",
        "nll": nll,
        "perplexity": float(torch.tensor(nll).exp()),
        "n_tokens": n_tokens,
        "n": len(split),
        "n_truncated": split.n_truncated,
        # per-example mean NLL: what the paired `learned` test compares between rows
        "per_example": [round(s / max(c, 1), 5) for s, c in zip(sums, counts)],
    }


class NextTokenKind(LengthBatches):
    """What instruction, text and perplexity share (`TaskKind` but for name, flags and
    encode): padded batches, the next-token loss, −NLL scores and no floor."""

    trainable = True
    packs = False
    collate = staticmethod(collate_lm)
    loss = staticmethod(lm_loss)
    loss_units = staticmethod(lm_loss_units)
    evaluate = staticmethod(evaluate_nll)
    baseline = staticmethod(no_baseline)


# --- packed text (the text and perplexity kinds) ------------------------------------------


def pack_blocks(token_lists: list[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Join documents into one stream, each followed by eos, and cut it into consecutive blocks
    of `block_size` tokens; the incomplete last block is dropped. Empty documents are skipped
    (they would add a lone eos). Deterministic: the order of `token_lists` is kept."""
    if block_size < 2:
        raise ForgetlabError(f"block_size must be at least 2 tokens, got {block_size}")
    stream = [t for doc in token_lists if doc for t in (*doc, eos_id)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i : i + block_size] for i in range(0, usable, block_size)]


def encode_text(
    documents: list[TextDocument], tokenizer, max_length: int, pair_encoding: str = "pair", **_
) -> LMSplit:
    """Documents joined by eos and cut into blocks of max_length tokens (the remainder is
    dropped), as in continued pretraining."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    tokens = [tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in documents]
    blocks = pack_blocks(tokens, max_length, eos)
    if not blocks:
        n = sum(len(t) for t in tokens)
        raise DataError(f"{n} tokens of text make no block of model.max_length={max_length}")
    return LMSplit(blocks, [list(b) for b in blocks])
