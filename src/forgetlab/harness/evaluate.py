"""`forgetlab eval --lm-eval`: a run's (or any causal LM's) model, scored by lm-eval.

The model comes from a finished run directory (rebuilt after any stage exactly as the runner
built it) or from a model name; forgetlab's multiple-choice tasks are handed to lm-eval as
local tasks (its own YAML + JSONL), so the cross-check needs no hub.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from forgetlab.errors import ForgetlabError


def _model_and_tokenizer(
    target: str | Path, stage: int | None, seed: int | None, device, trust_remote_code: bool
):
    path = Path(target)
    if path.is_dir() and (path / "config.yaml").is_file():
        from forgetlab.analyses.runs import open_run

        run = open_run(path, device, trust_remote_code)
        if not run.is_causal:
            raise ForgetlabError(f"{path} is an encoder run: lm-eval scores causal LMs")
        seed = run.seed(seed)
        stage = len(run.tasks) if stage is None else stage
        return run.model_at(seed, stage).backbone, run.tokenizer, run.device
    from forgetlab.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(str(target))
    return model, tokenizer, device or "cpu"


def _local_tasks(tasks: list[str], folder: Path, limit: int | None) -> list[str]:
    """Write every forgetlab multiple-choice task among `tasks` as a local lm-eval task."""
    from forgetlab.harness.lm_eval_tasks import write_local_lm_eval_task
    from forgetlab.tasks.registry import TASK_REGISTRY, load_task, subsample

    names = []
    for name in tasks:
        if name in TASK_REGISTRY:
            data = load_task(name)
            if data.kind != "multiple_choice":
                raise ForgetlabError(
                    f"{name} is a {data.kind} task; lm-eval takes forgetlab's multiple-choice "
                    "tasks (bb_*) or its own task names"
                )
            examples = subsample(data.eval, limit, 0)
            write_local_lm_eval_task(examples, folder, f"forgetlab_{name}")
            names.append(f"forgetlab_{name}")
        else:
            names.append(name)
    return names


def evaluate_with_lm_eval(
    target: str | Path,
    tasks: list[str],
    *,
    stage: int | None = None,
    seed: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, dict]:
    """`trust_remote_code`: allow a run directory whose config sets model.trust_remote_code
    (never implied by reading the run)."""
    from forgetlab.harness.lm_eval_tasks import run_lm_eval

    if not tasks:
        raise ForgetlabError("--lm-eval needs at least one task name")
    if include_path is not None and not Path(include_path).is_dir():
        raise ForgetlabError(f"--include-path {include_path} is not a folder")
    with tempfile.TemporaryDirectory(prefix="forgetlab-lmeval-") as tmp:
        local = Path(include_path) if include_path else Path(tmp)
        names = _local_tasks(tasks, local, limit)
        model, tokenizer, dev = _model_and_tokenizer(target, stage, seed, device, trust_remote_code)
        # forgetlab's own tasks were subsampled above; lm-eval's get lm-eval's limit
        return run_lm_eval(
            model,
            tokenizer,
            names,
            include_path=local,
            batch_size=batch_size,
            limit=None if all(n.startswith("forgetlab_") for n in names) else limit,
            device=str(dev),
        )
