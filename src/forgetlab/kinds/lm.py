"""The causal-LM task kinds: how their examples are encoded, trained and scored.

| kind | trains on | score (higher is better) beside |
|---|---|---|
| instruction | response tokens only (prompt in its chat template) | −NLL per response token |
| text | packed blocks of `model.max_length` tokens | −NLL per token; perplexity |
| perplexity | (eval only) like text | −NLL per token; perplexity |
| multiple_choice | (eval only) | accuracy by log-likelihood (acc_norm, chance, p-value) |
| generation | (eval only) | GSM8K exact match or HumanEval pass@1 |

A 135 M model scores ~0 on GSM8K exact match, so the learning figure of an instruction task is
its held-out response NLL; every cell also keeps its per-example NLLs for the `learned` test
(a paired test of the base model's against the trained model's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from forgetlab.errors import DataError, ForgetlabError
from forgetlab.kinds.classification import eval_batches, length_grouped_batches
from forgetlab.kinds.lm_text import IGNORE, _right_pad, pack_blocks
from forgetlab.kinds.multiple_choice import MCSplit, encode_mc, mc_metrics
from forgetlab.tasks.base import CodeProblem, InstructionExample, TextDocument


@dataclass
class LMSplit:
    """Token ids and their labels (IGNORE where not scored); padded per batch."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    n_truncated: int = 0  # prompts cut on the left to fit model.max_length
    n_rejected: int = 0  # examples dropped because their prompt did not fit (long_prompts)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


@dataclass
class GenerationSplit:
    """Generation tasks keep their examples: prompts are rendered at scoring time."""

    examples: list
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass(frozen=True)
class EvalContext:
    """What scoring a task may need beyond the model and the split."""

    batch_size: int
    accelerator: object
    pad_id: int
    tokenizer: object = None
    eval_cfg: object = None  # forgetlab.config.EvalConfig
    extra_metrics: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


# --------------------------------------------------------------------------------------
# encoding


def render_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model was instruction-tuned to see it: its chat template with the
    assistant turn opened, when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt


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


def encode_mc_kind(examples, tokenizer, max_length: int, pair_encoding: str = "pair", **_):
    return encode_mc(examples, tokenizer, max_length)


def encode_generation(examples, tokenizer, max_length: int, pair_encoding: str = "pair", **_):
    return GenerationSplit(list(examples), [1] * len(examples))


# --------------------------------------------------------------------------------------
# training


def collate_lm(split: LMSplit, indices: list[int], pad_id: int, device) -> dict:
    ids, mask, labels = _right_pad(
        [split.input_ids[i] for i in indices], [split.labels[i] for i in indices]
    )
    ids[mask == 0] = pad_id
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return {"inputs": inputs, "labels": labels.to(device)}


def lm_loss(model, task: str, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens (position t predicts token t+1)."""
    logits = model.backbone(**batch["inputs"]).logits
    return F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE
    )


def not_trainable(kind: str):
    def fail(*_args, **_kwargs):
        raise ForgetlabError(f"tasks of kind {kind!r} are scored, not trained: list them in probes")

    return fail


# --------------------------------------------------------------------------------------
# scoring


NLL_ROWS = 8


@torch.no_grad()
def per_example_nll(model, split: LMSplit, ctx: EvalContext) -> tuple[list[float], list[int]]:
    """Summed NLL and labelled-token count of every example (eval mode, autocast)."""
    sums, counts = [0.0] * len(split), [0] * len(split)
    backbone = model.backbone
    was_training = model.training
    model.eval()
    try:
        # Few rows per forward: the logits are rows × length × vocabulary floats (SmolLM2:
        # 8 × 320 × 49,152 × 4 bytes = 0.5 GB), and moving them dominates the time on CPU.
        for rows in eval_batches(split.lengths, min(ctx.batch_size, NLL_ROWS)):
            batch = collate_lm(split, rows, ctx.pad_id, ctx.device)
            with ctx.accelerator.autocast():
                logits = backbone(**batch["inputs"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            nll = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                reduction="none",
            ).view(targets.shape)  # fmt: skip
            for r, i in enumerate(rows):
                sums[i] = float(nll[r].sum())
                counts[i] = int((targets[r] != IGNORE).sum())
    finally:
        model.train(was_training)
    return sums, counts


def evaluate_nll(model, task: str, split: LMSplit, ctx: EvalContext) -> dict:
    sums, counts = per_example_nll(model, split, ctx)
    n_tokens = sum(counts)
    if n_tokens == 0:
        raise ForgetlabError(f"task {task}: no labelled tokens to score")
    nll = sum(sums) / n_tokens
    return {
        "score": -nll,
        "metric": "neg_nll",
        "nll": nll,
        "perplexity": float(torch.tensor(nll).exp()),
        "n_tokens": n_tokens,
        "n": len(split),
        "n_truncated": split.n_truncated,
        # per-example mean NLL: what the paired `learned` test compares between rows
        "per_example": [round(s / max(c, 1), 5) for s, c in zip(sums, counts)],
    }


def evaluate_mc(model, task: str, split: MCSplit, ctx: EvalContext) -> dict:
    from forgetlab.kinds.multiple_choice import choice_loglikelihoods

    was_training = model.training
    try:
        with ctx.accelerator.autocast():
            lls = choice_loglikelihoods(model.backbone, split, ctx.batch_size, ctx.device)
    finally:
        model.train(was_training)
    scores = mc_metrics(lls, split)
    return {"score": scores["acc"], "metric": "accuracy", "accuracy": scores["acc"], **scores}


def evaluate_generation(model, task: str, split: GenerationSplit, ctx: EvalContext) -> dict:
    from forgetlab.kinds.generation import score_generation, score_humaneval

    cfg = ctx.eval_cfg
    common = {
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": min(ctx.batch_size, 16),
        "device": ctx.device,
    }
    was_training = model.training
    try:
        if split.examples and isinstance(split.examples[0], CodeProblem):
            out = score_humaneval(
                model.backbone,
                ctx.tokenizer,
                split.examples,
                timeout_s=cfg.sandbox_timeout_s,
                memory_mb=cfg.sandbox_memory_mb,
                **common,
            )
            return {"score": out["pass@1"], "metric": "pass@1", **out}
        out = score_generation(model.backbone, ctx.tokenizer, split.examples, **common)
        return {"score": out["exact_match"], "metric": "exact_match", **out}
    finally:
        model.train(was_training)


def chance(split: MCSplit) -> float:
    return sum(1 / len(c) for c in split.continuation_ids) / max(len(split), 1)


class _Kind:
    """Namespace object: one value per kind in the registry."""

    def __init__(self, name: str, trainable: bool, packs: bool = False, **ops) -> None:
        self.name = name
        self.trainable = trainable
        self.packs = packs  # documents become fixed-length blocks: subsample blocks
        self.train_batches = staticmethod(length_grouped_batches)
        self.eval_batches = staticmethod(eval_batches)
        self.baseline = lambda split: None  # no floor: the learned test is paired vs base
        for key, fn in ops.items():
            setattr(self, key, fn)
        if "loss" not in ops:  # MC and generation have no token loss to train or take a
            self.collate = self.loss = not_trainable(name)  # Fisher from


INSTRUCTION = _Kind(
    "instruction", True, encode=encode_instruction, collate=collate_lm, loss=lm_loss,
    evaluate=evaluate_nll,
)  # fmt: skip
TEXT = _Kind("text", True, packs=True, encode=encode_text, collate=collate_lm, loss=lm_loss,
             evaluate=evaluate_nll)  # fmt: skip
# Eval-only by name (prose the model should keep), but its tokens have a loss: a regulariser
# may estimate curvature on it.
PERPLEXITY = _Kind("perplexity", False, packs=True, encode=encode_text, collate=collate_lm,
                   loss=lm_loss, evaluate=evaluate_nll)  # fmt: skip
MULTIPLE_CHOICE = _Kind(
    "multiple_choice", False, encode=encode_mc_kind, evaluate=evaluate_mc, baseline=chance
)
GENERATION = _Kind("generation", False, encode=encode_generation, evaluate=evaluate_generation)
