"""Diversity of several samples per prompt: distinct n-grams, self-BLEU, distinct answers."""

from __future__ import annotations

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.exact_match import final_number

SACREBLEU_INSTALL = "pip install 'sacrebleu>=2.0'"


def diversity(samples: list[list[str]]) -> dict:
    """Diversity of k samples per prompt. distinct_n: unique / total word n-grams over all
    samples (n-grams do not cross samples); distinct_n_per_prompt: the same within each
    prompt's samples, averaged over prompts; self_bleu: each sample's sentence BLEU (0-100)
    against the prompt's other samples as references, averaged (None when k < 2): 100 means
    every sample repeats the others; distinct_answers: mean number of different final numbers
    per prompt (texts without a number not counted)."""
    if not samples or any(not group for group in samples):
        raise ForgetlabError("diversity needs at least one sample for every prompt")
    pooled = [text for group in samples for text in group]
    result: dict = {"n_prompts": len(samples), "n_samples": len(pooled)}
    for n in (1, 2):
        result[f"distinct_{n}"] = _distinct(pooled, n)
        result[f"distinct_{n}_per_prompt"] = _mean([_distinct(g, n) for g in samples])
    result["self_bleu"] = _self_bleu(samples)
    result["distinct_answers"] = _mean(
        [len({a for a in map(final_number, g) if a is not None}) for g in samples]
    )
    return result


def _distinct(texts: list[str], n: int) -> float:
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _self_bleu(samples: list[list[str]]) -> float | None:
    groups = [g for g in samples if len(g) >= 2]
    if not groups:
        return None
    bleu = _sentence_bleu()
    scores = [
        bleu.sentence_score(g[i], g[:i] + g[i + 1 :]).score for g in groups for i in range(len(g))
    ]
    return _mean(scores)


def _sentence_bleu():
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as e:
        raise ForgetlabError(f"self-BLEU needs the 'sacrebleu' package: {SACREBLEU_INSTALL}") from e
    # effective_order: a short sentence without any 4-gram match does not score 0 outright.
    return BLEU(effective_order=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
