"""HumanEval pass@1: greedy completions cut at the stop sequences, run against the
problem's tests in the sandbox (`forgetlab.kinds.scorers.sandbox`)."""

from __future__ import annotations

from collections import Counter

import torch

from forgetlab.kinds.scorers.decoding import HUMANEVAL_STOP, Complete, complete_all, truncate_at
from forgetlab.kinds.scorers.sandbox import STATUSES, check_completion
from forgetlab.tasks.base import CodeProblem


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
    raw, speed = complete_all(
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
