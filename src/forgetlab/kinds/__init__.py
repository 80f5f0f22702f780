"""Task kinds: how examples of a kind are encoded, batched, trained and scored.

The training loop and the evaluator only talk to a kind through this interface, so causal-LM
kinds (instruction, text, multiple_choice, generation) plug in as new entries here.
"""

from forgetlab.kinds.classification import CLASSIFICATION, EncodedSplit

KINDS = {"classification": CLASSIFICATION}

__all__ = ["KINDS", "EncodedSplit"]
