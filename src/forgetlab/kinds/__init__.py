"""Task kinds: how examples of a kind are encoded, batched, trained and scored.

The training loop, the evaluator, regularisers and analyses only talk to a kind through this
interface, one object per kind:

    name, trainable             (False: scored only, e.g. multiple-choice probes)
    encode(examples, tokenizer, max_length, pair_encoding, **options) -> split
    train_batches(lengths, batch_size, rng, group) / eval_batches(lengths, batch_size)
    collate(split, indices, pad_id, device) -> {"inputs": {...}, "labels": tensor}
    loss(model, task, batch) -> scalar tensor
    evaluate(model, task, split, EvalContext) -> {"score" (higher is better), "metric", "n", ...}
    baseline(split) -> float | None   (majority class, chance level; None: compare with base)

Encoders: classification. Causal LMs: instruction, text, perplexity, multiple_choice,
generation (forgetlab/kinds/lm.py).
"""

from forgetlab.kinds.classification import CLASSIFICATION, EncodedSplit
from forgetlab.kinds.lm import (
    GENERATION,
    INSTRUCTION,
    MULTIPLE_CHOICE,
    PERPLEXITY,
    TEXT,
    EvalContext,
)

KINDS = {
    "classification": CLASSIFICATION,
    "instruction": INSTRUCTION,
    "text": TEXT,
    "perplexity": PERPLEXITY,
    "multiple_choice": MULTIPLE_CHOICE,
    "generation": GENERATION,
}

__all__ = ["KINDS", "EncodedSplit", "EvalContext"]
