"""Instruction tuning: prompt → response pairs, trained on the response tokens only (the
prompt in the tokenizer's chat template), scored by −NLL per response token.

A 135 M model scores ~0 on GSM8K exact match, so the learning figure of an instruction task is
its held-out response NLL (the `generation` kind scores exact match).
"""

from __future__ import annotations

from forgetlab.errors import DataError
from forgetlab.kinds.next_token import LMSplit, NextTokenKind
from forgetlab.kinds.scorers.nll import IGNORE
from forgetlab.models.tokenizer import render_prompt
from forgetlab.tasks.base import InstructionExample


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if not getattr(tokenizer, "chat_template", None) and bos is not None:
        ids = [bos, *ids]  # the first response token needs a context to be predicted from
    return ids or ([bos] if bos is not None else [tokenizer.eos_token_id])


def encode_instruction(
    examples: list[InstructionExample],
    tokenizer,
    max_length: int,
    pair_encoding: str = "pair",
    long_prompts: str = "truncate",
) -> LMSplit:
    """prompt + response + eos; only response tokens are labelled. A pair that does not fit
    loses prompt tokens on the left (truncate) or is dropped (reject); both are counted."""
    eos = tokenizer.eos_token_id
    split = LMSplit([], [])
    for i, ex in enumerate(examples):
        response = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        if not ex.response.strip() or not response:
            raise DataError(f"instruction example {i} has an empty response: nothing to learn")
        response = response + ([eos] if eos is not None else [])
        prompt = _prompt_ids(tokenizer, ex.prompt)
        if len(prompt) + len(response) > max_length:
            if long_prompts == "reject":
                split.n_rejected += 1
                continue
            split.n_truncated += 1
            response = response[: max_length - 1]  # a response longer than the window
            prompt = prompt[len(prompt) - (max_length - len(response)) :]
        split.input_ids.append(prompt + response)
        split.labels.append([IGNORE] * len(prompt) + response)
    if not split.input_ids:
        raise DataError(
            f"every instruction example was longer than model.max_length={max_length} "
            f"({split.n_rejected} rejected): raise max_length or use data.long_prompts=truncate"
        )
    return split


class Instruction(NextTokenKind):
    """The instruction kind (`TaskKind`)."""

    name = "instruction"
    trainable = True
    packs = False
    from_files = True
    encode = staticmethod(encode_instruction)


INSTRUCTION = Instruction()
