"""Continued pretraining on plain text: documents are joined by eos and packed into blocks of
`model.max_length` tokens, trained and scored on every token (−NLL per token; perplexity)."""

from __future__ import annotations

from forgetlab.errors import DataError, ForgetlabError
from forgetlab.kinds.next_token import LMSplit, NextTokenKind
from forgetlab.tasks.base import TextDocument


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


class Text(NextTokenKind):
    """The text kind (`TaskKind`)."""

    name = "text"
    trainable = True
    packs = True
    from_files = True
    encode = staticmethod(encode_text)


TEXT = Text()
