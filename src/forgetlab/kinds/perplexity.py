"""Perplexity probes: prose the model should keep (e.g. AG News articles), encoded and scored
like `text` (−NLL per token; perplexity) but never trained on.

Eval-only by name, yet its tokens have a loss: a regulariser may estimate curvature on it.
"""

from __future__ import annotations

from forgetlab.kinds.text import Text


class Perplexity(Text):
    """The perplexity kind (`TaskKind`): `text`, scored only and not read from user files."""

    name = "perplexity"
    trainable = False
    from_files = False


PERPLEXITY = Perplexity()
