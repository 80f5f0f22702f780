"""Perplexity probes: prose the model should keep (e.g. AG News articles), encoded and scored
like `text` (−NLL per token; perplexity) but never trained on.

Eval-only by name, yet its tokens have a loss: a regulariser may estimate curvature on it.
"""

from __future__ import annotations

from forgetlab.kinds.next_token import NextTokenKind, encode_text


class Perplexity(NextTokenKind):
    """The perplexity kind (`TaskKind`): packed like `text`, scored only and not read from
    user files."""

    name = "perplexity"
    trainable = False
    packs = True
    from_files = False
    encode = staticmethod(encode_text)


PERPLEXITY = Perplexity()
