"""Task kinds: how examples of a kind are encoded, batched, trained and scored.

Every kind is one module holding one object that satisfies `forgetlab.kinds.base.TaskKind`
(encode, train_batches/eval_batches, collate, loss, evaluate, baseline, and the flags
trainable, packs, from_files); the scorers they use live in `forgetlab.kinds.scorers`. A new
kind is one module, one line below and one row in the kinds' interface test.

Encoders: classification. Causal LMs: instruction, text, perplexity, multiple_choice,
generation.
"""

from forgetlab.kinds.base import EvalContext, TaskKind
from forgetlab.kinds.classification import CLASSIFICATION, EncodedSplit
from forgetlab.kinds.generation import GENERATION
from forgetlab.kinds.instruction import INSTRUCTION
from forgetlab.kinds.multiple_choice import MULTIPLE_CHOICE
from forgetlab.kinds.perplexity import PERPLEXITY
from forgetlab.kinds.text import TEXT

KINDS: dict[str, TaskKind] = {
    "classification": CLASSIFICATION,
    "instruction": INSTRUCTION,
    "text": TEXT,
    "perplexity": PERPLEXITY,
    "multiple_choice": MULTIPLE_CHOICE,
    "generation": GENERATION,
}


def file_kinds() -> tuple[str, ...]:
    """The kinds a task of `type: file` may have (read from the user's own file), sorted."""
    return tuple(sorted(name for name, kind in KINDS.items() if kind.from_files))


__all__ = ["KINDS", "EncodedSplit", "EvalContext", "TaskKind", "file_kinds"]
