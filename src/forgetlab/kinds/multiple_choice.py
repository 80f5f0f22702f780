"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it (eval only).

Each choice is scored by the summed log-probability of its continuation tokens given the
context (`forgetlab.kinds.scorers.loglikelihood`); the prediction is the best-scoring choice
(acc) or the best score per character of the choice (acc_norm, lm-eval's length
normalisation). Tokenisation follows lm-eval's `_encode_pair`: the continuation is
`target_delimiter + choice`, trailing spaces of the context move onto the continuation, the
continuation's tokens are those of the whole string past the context's tokens, and the
tokenizer's default special tokens are added as lm-eval 0.4.13 adds them (bos for tokenizers
that prepend one; none for SmolLM2's); an empty context becomes bos (else eos), like lm-eval's
prefix token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.base import EvalContext, ScoredOnly
from forgetlab.kinds.batches import LengthBatches
from forgetlab.kinds.scorers.loglikelihood import choice_loglikelihoods
from forgetlab.tasks.base import MCExample


@dataclass
class MCSplit(ScoredOnly, LengthBatches):
    """Token ids per question: one context, one continuation per choice."""

    context_ids: list[list[int]]
    continuation_ids: list[list[list[int]]]
    choice_chars: list[list[int]]  # characters of each choice, for acc_norm
    labels: list[int]
    n_truncated: int = 0  # questions whose context lost tokens on the left to fit the window

    def __len__(self) -> int:
        return len(self.labels)


# --- encoding --------------------------------------------------------------------------------


def encode_mc(
    examples: list[MCExample], tokenizer, max_length: int, *, target_delimiter: str = " "
) -> MCSplit:
    """Tokenise questions the lm-eval way. A context too long for the window (`max_length`
    tokens of model input) loses tokens on its left; the continuations are kept whole.
    lm-eval truncates each (context, choice) pair by its own length; here the shared context
    is cut once, to fit the question's longest choice, so that all choices see one context."""
    for i, ex in enumerate(examples):
        check_mc_example(i, ex)
    contexts, wholes = [], []
    for ex in examples:
        # lm-eval: trailing whitespace of the context moves onto the continuation, so the
        # context's tokens end at a word and the whole string is the unchanged original.
        contexts.append(ex.context.rstrip())
        wholes.extend(ex.context + target_delimiter + c for c in ex.choices)
    context_ids = _tokenize(tokenizer, contexts)
    whole_ids = iter(_tokenize(tokenizer, wholes))
    split = MCSplit([], [], [], [ex.label for ex in examples])
    for i, (ex, ctx) in enumerate(zip(examples, context_ids)):
        conts = [next(whole_ids)[len(ctx) :] for _ in ex.choices]
        if not ctx:
            ctx = [_prefix_token(tokenizer)]
        ctx = _fit_window(i, ctx, conts, max_length)
        split.n_truncated += int(len(ctx) < max(len(context_ids[i]), 1))
        split.context_ids.append(ctx)
        split.continuation_ids.append(conts)
        split.choice_chars.append([len(c) for c in ex.choices])
    return split


def check_mc_example(i: int, ex: MCExample) -> None:
    """Raise ForgetlabError unless example `i` has 2+ choices and a label among them."""
    if len(ex.choices) < 2:
        n = len(ex.choices)
        raise ForgetlabError(f"multiple-choice example {i} has {n} choice(s); it needs 2 or more")
    if not 0 <= ex.label < len(ex.choices):
        raise ForgetlabError(
            f"multiple-choice example {i}: label {ex.label} is out of range "
            f"for {len(ex.choices)} choices"
        )


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """With the tokenizer's default special tokens, as lm-eval 0.4.13 does (a Llama-3 or
    Gemma tokenizer puts bos in front), except where the text already starts with bos."""
    bos = getattr(tokenizer, "bos_token", None)
    return [
        tokenizer(t, add_special_tokens=not (bos and t.startswith(bos)))["input_ids"] for t in texts
    ]


def _prefix_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    token = token if token is not None else tokenizer.eos_token_id
    if token is None:
        raise ForgetlabError("an empty context needs a bos or eos token to start from")
    return token


def _fit_window(i: int, ctx: list[int], conts: list[list[int]], max_length: int) -> list[int]:
    # The model's input is context + continuation minus its last token.
    longest = max(len(c) for c in conts)
    if longest == 0:
        raise ForgetlabError(f"multiple-choice example {i}: a choice encodes to no tokens")
    room = max_length + 1 - longest
    if room < 1:
        raise ForgetlabError(
            f"multiple-choice example {i}: a choice of {longest} tokens does not fit "
            f"max_length={max_length}"
        )
    return ctx[-room:]


# --- scoring ---------------------------------------------------------------------------------


def score_mc(model, split: MCSplit, batch_size: int, device: str | torch.device) -> dict:
    """acc, acc_norm, chance, n, p_value (and p_value_norm, n_truncated) of `split`."""
    return mc_metrics(choice_loglikelihoods(model, split, batch_size, device), split)


def mc_metrics(loglikelihoods: list[list[float]], split: MCSplit) -> dict:
    """Accuracy of argmax log-likelihood (acc) and of argmax log-likelihood per character of
    the choice (acc_norm), with one-sided exact binomial p-values against chance.

    Chance is the mean of 1/len(choices). With unequal choice counts the exact null is a
    Poisson binomial; a binomial with the mean probability has at least its variance, so the
    p-value is slightly conservative."""
    from scipy.stats import binomtest

    n = len(split)
    if n == 0:
        raise ForgetlabError("no multiple-choice examples to score")
    hits = norm_hits = 0
    for lls, chars, label in zip(loglikelihoods, split.choice_chars, split.labels):
        hits += _argmax(lls) == label
        # max(1, ...): an empty choice string would divide by zero (lm-eval gives nan there)
        norm_hits += _argmax([ll / max(1, c) for ll, c in zip(lls, chars)]) == label
    chance = sum(1 / len(c) for c in split.choice_chars) / n
    return {
        "acc": hits / n,
        "acc_norm": norm_hits / n,
        "chance": chance,
        "n": n,
        "p_value": float(binomtest(hits, n, chance, alternative="greater").pvalue),
        "p_value_norm": float(binomtest(norm_hits, n, chance, alternative="greater").pvalue),
        "n_truncated": split.n_truncated,
    }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda j: values[j])  # first of equal maxima


def encode_mc_kind(examples, tokenizer, max_length: int, pair_encoding: str = "pair", **_):
    """`encode_mc` with the kinds' encode signature (lm-eval's default " " delimiter)."""
    return encode_mc(examples, tokenizer, max_length)


def evaluate_mc(model, task: str, split: MCSplit, ctx: EvalContext) -> dict:
    """Accuracy by log-likelihood (the score) with `mc_metrics`' acc_norm, chance, p-values."""
    was_training = model.training
    try:
        with ctx.autocast():
            lls = choice_loglikelihoods(
                model.backbone, split, ctx.batch_size, ctx.device, pick=ctx.shards.own
            )
    finally:
        model.train(was_training)
    joined = ctx.shards.join({i: ll for i, ll in enumerate(lls) if ll})  # every question has 2+
    scores = mc_metrics([joined[i] for i in range(len(split))], split)
    return {"score": scores["acc"], "metric": "accuracy", "accuracy": scores["acc"], **scores}


def chance(split: MCSplit) -> float:
    """Accuracy of guessing: the mean of 1/len(choices) over the questions."""
    return sum(1 / len(c) for c in split.continuation_ids) / max(len(split), 1)


class MultipleChoice(ScoredOnly, LengthBatches):
    """The multiple_choice kind (`TaskKind`): scored only; no token loss to train on."""

    name = "multiple_choice"
    packs = False
    from_files = True
    encode = staticmethod(encode_mc_kind)
    evaluate = staticmethod(evaluate_mc)
    baseline = staticmethod(chance)


MULTIPLE_CHOICE = MultipleChoice()
