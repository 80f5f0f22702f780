"""Tokenizer settings every causal-LM path relies on: a pad token, the padding side, and
prompts rendered in the chat template.

Padding: tokenizers without a pad token get pad = eos (`ensure_pad_token`). Scoring and
training build right-padded batches themselves (pads come after the real tokens, so a causal
model's outputs at real positions do not see them). Batched *generation* needs left padding,
so that every row's next token follows its real last token: wrap it in
`padding_side(tokenizer, "left")`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from forgetlab.errors import ForgetlabError


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give a tokenizer without a pad token pad = eos (else unk). Padded positions are masked
    out of attention and of every loss and score, so which id fills them does not matter, and
    reusing an existing token adds no embedding row the pretrained model never saw."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ForgetlabError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id  # silences generate()'s per-call warning


@contextmanager
def padding_side(tokenizer, side: str) -> Iterator[None]:
    """Temporarily set `tokenizer.padding_side` ("left" for batched generation)."""
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = before


def render_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model was instruction-tuned to see it: its chat template with the
    assistant turn opened, when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt
