"""Continued pretraining on plain text: documents are joined by eos and packed into blocks of
`model.max_length` tokens, trained and scored on every token (−NLL per token; perplexity)."""

from __future__ import annotations

from forgetlab.kinds.next_token import NextTokenKind, encode_text


class Text(NextTokenKind):
    """The text kind (`TaskKind`)."""

    name = "text"
    trainable = True
    packs = True
    from_files = True
    encode = staticmethod(encode_text)


TEXT = Text()
