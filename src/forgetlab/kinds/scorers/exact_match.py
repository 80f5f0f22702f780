"""Exact match of final numbers (GSM8K): extraction, matching and scoring generations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import torch

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.decoding import Complete, complete_all
from forgetlab.tasks.base import InstructionExample

# An integer part with thousands separators ("1,234") or plain digits, then optional decimals;
# "1,2,3" is three numbers, not 123.
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")


def final_number(text: str) -> str | None:
    """The answer of a GSM8K-style text: the number after the last "####" if there is one,
    else the last number in the text; commas, "$" and a trailing "." removed and the value
    normalised ("42.0" -> "42", "-0" -> "0", "3.50" -> "3.5"). None when there is no number."""
    if "####" in text:
        after = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(after)
        if found:
            return _normalise(found[0])
    found = _NUMBER.findall(text)
    return _normalise(found[-1]) if found else None


def _normalise(number: str) -> str:
    cleaned = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions whose final number equals the reference's final number (a
    reference without a number must equal the stripped prediction, case-insensitively)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ForgetlabError("nothing to score: no predictions")
    return sum(_matches(p, r) for p, r in zip(predictions, references)) / len(predictions)


def _matches(prediction: str, reference: str) -> bool:
    want = final_number(reference)
    if want is None:
        return prediction.strip().casefold() == reference.strip().casefold()
    return final_number(prediction) == want


def score_generation(
    model,
    tokenizer,
    examples: list[InstructionExample],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str | torch.device,
    chat_template: bool = True,
    complete: Complete | None = None,
    n_samples: int = 3,
) -> dict:
    """Greedy generation for each example's prompt, scored by exact match of the final number
    against `answer` (else the response's final number). `complete` replaces the model (for
    tests, or an external engine). Returns exact_match, answered (fraction of predictions
    with a number), n, tokens_per_s (None with `complete`) and the first `n_samples`."""
    prompts = [ex.prompt for ex in examples]
    predictions, speed = complete_all(
        model, tokenizer, prompts, complete, max_new_tokens, batch_size, device, chat_template
    )
    references = [ex.answer if ex.answer is not None else ex.response for ex in examples]
    extracted = [final_number(p) for p in predictions]
    samples = [
        {"prompt": p, "prediction": pred, "extracted": x, "reference": final_number(r) or r}
        for p, pred, x, r in list(zip(prompts, predictions, extracted, references))[:n_samples]
    ]
    return {
        "exact_match": exact_match(predictions, references),
        "answered": sum(x is not None for x in extracted) / len(extracted),
        "n": len(examples),
        "tokens_per_s": speed,
        "samples": samples,
    }
