"""Generation tasks (eval only): greedy completions scored by GSM8K exact match
(`InstructionExample`s) or HumanEval pass@1 (`CodeProblem`s)."""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetlab.kinds.base import EvalContext, ScoredOnly, no_baseline
from forgetlab.kinds.batches import LengthBatches
from forgetlab.kinds.scorers.exact_match import score_generation
from forgetlab.kinds.scorers.humaneval import score_humaneval
from forgetlab.tasks.base import CodeProblem


@dataclass
class GenerationSplit(ScoredOnly, LengthBatches):
    """Generation tasks keep their examples: prompts are rendered at scoring time."""

    examples: list
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def encode_generation(examples, tokenizer, max_length: int, pair_encoding: str = "pair", **_):
    """The examples as they are (one unit length each): prompts are rendered when scored."""
    return GenerationSplit(list(examples), [1] * len(examples))


def evaluate_generation(model, task: str, split: GenerationSplit, ctx: EvalContext) -> dict:
    """pass@1 of HumanEval problems, else exact match of the final number."""
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


class Generation(ScoredOnly, LengthBatches):
    """The generation kind (`TaskKind`): scored only; no token loss to train on."""

    name = "generation"
    packs = False
    from_files = False
    encode = staticmethod(encode_generation)
    evaluate = staticmethod(evaluate_generation)
    baseline = staticmethod(no_baseline)


GENERATION = Generation()
