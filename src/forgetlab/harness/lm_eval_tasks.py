"""forgetlab tasks as local lm-eval tasks: the same questions scored by lm-eval and by forgetlab.

forgetlab's multiple-choice scorer (`forgetlab.kinds.multiple_choice`) is written to give
lm-eval's numbers. This module lets a user (and the cross-check tests) verify that on their own
model: `write_local_lm_eval_task` writes `MCExample`s (e.g. a BIG-bench task read by
`forgetlab.tasks.bigbench.load_bigbench`) as a local lm-eval task, and
`run_lm_eval` runs lm-eval's `simple_evaluate` on an in-memory model (base, fine-tuned or
PEFT-wrapped), with no hub access needed for local tasks.

What lm-eval scores for a `multiple_choice` task with no few-shot examples, no description and
no chat template (lm-eval 0.4.13, `ConfigurableTask.fewshot_context` / `construct_requests`):
context = `doc_to_text(doc)` unchanged, continuation = `target_delimiter + choice`; the model's
`_encode_pair` then moves the context's trailing whitespace onto the continuation and splits
the tokens of the whole string after the context's tokens. `encode_mc(...,
target_delimiter=" ")` builds exactly these strings (see `write_local_lm_eval_task`).

lm-eval is an optional dependency (`pip install "forgetlab[lmeval]"`); it is imported only
when a function here needs it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from forgetlab.errors import ForgetlabError
from forgetlab.tasks.base import MCExample

log = logging.getLogger("forgetlab")

INSTALL_HINT = 'pip install "forgetlab[lmeval]" (or: pip install "lm-eval>=0.4.13,<0.5")'
# Field names of the local task's JSONL rows (doc_to_text/doc_to_choice/doc_to_target name them)
_FIELDS = ("context", "choices", "label")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- a local lm-eval task --------------------------------------------------------------------


def write_local_lm_eval_task(examples: list[MCExample], folder: Path, task_name: str) -> Path:
    """Write `examples` as the lm-eval task `task_name` into `folder`; return the YAML's path.

    Pass `folder` as `include_path` to `run_lm_eval` (or `lm_eval --include_path`). The data
    go to `<task_name>.jsonl` (one `{"context", "choices", "label"}` row per example, in
    order: lm-eval's doc_id is the index into `examples`). `doc_to_text` / `doc_to_choice` /
    `doc_to_target` name fields rather than Jinja templates, so lm-eval takes the strings
    verbatim (no template rendering that could touch whitespace); with
    `target_delimiter: " "` lm-eval scores context = `ex.context`, continuation = " " + choice,
    exactly what `encode_mc(examples, ..., target_delimiter=" ")` scores. The `datasets`
    cache of the JSONL goes to `<folder>/.hf_datasets_cache`, not to ~/.cache."""
    if not _TASK_NAME.match(task_name):
        raise ForgetlabError(
            f"lm-eval task name {task_name!r}: use letters, digits, '_', '.', '-' only"
        )
    if not examples:
        raise ForgetlabError(f"lm-eval task {task_name!r}: no examples to write")
    from forgetlab.kinds.multiple_choice import check_mc_example

    for i, ex in enumerate(examples):
        check_mc_example(i, ex)
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task_name}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(dict(zip(_FIELDS, (ex.context, ex.choices, ex.label)))) + "\n")
    config = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(data)},
            "cache_dir": str(folder / ".hf_datasets_cache"),
        },
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "acc_norm")
        ],
        "metadata": {"version": 1.0, "source": "forgetlab"},
    }
    yaml_path = folder / f"{task_name}.yaml"
    # JSON is valid YAML: no yaml-dump quoting rules to think about for odd paths.
    yaml_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return yaml_path


# --- running lm-eval -------------------------------------------------------------------------


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str] | None = None,
    *,
    include_path: Path | None = None,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    device: str = "cpu",
    log_samples: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval's `simple_evaluate` on an in-memory causal LM; return
    `{task: {"acc", "acc_norm", "n"}}`. With `log_samples`, each task also gets
    `"loglikelihoods"` (per document in doc order, each choice's summed log-probability) and
    `"samples"` (lm-eval's own per-document records, incl. the (context, continuation)
    strings it scored).

    `model` may be a transformers model or a PEFT model (lm-eval's HFLM wraps either as is;
    LoRA adapters are applied in its forward). The model is moved to `device`; its training
    flag and the global RNG states (lm-eval seeds `random`, numpy and torch) are restored
    afterwards. `tasks=None` runs every task found under `include_path`. Task names are
    checked before anything runs: an unknown one raises ForgetlabError with close names.
    Hub tasks (hellaswag, arc_challenge, winogrande, ...) download their data: offline, that
    raises ForgetlabError. Log-softmax runs in fp32 (`softmax_dtype`) whatever the model's
    dtype, as forgetlab's scorer does it. HFLM gives a tokenizer without a pad token one
    (unk or eos), in place."""
    lm_eval = _import_lm_eval()
    import torch
    from lm_eval.models.huggingface import HFLM

    manager, names = _task_manager(tasks, include_path)
    model.to(device)
    with _preserved_state(model):
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            softmax_dtype=torch.float32,
        )
        try:
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                log_samples=log_samples,
                bootstrap_iters=0,  # acc/acc_norm need no bootstrap
            )
        except Exception as e:
            if _is_download_error(e):
                raise ForgetlabError(
                    f"lm-eval could not fetch the data of {', '.join(names)} "
                    f"({type(e).__name__}: {_first_line(e)}); hub tasks need network access "
                    "to the Hugging Face hub. Offline, write a local task with "
                    "write_local_lm_eval_task and pass its folder as include_path."
                ) from e
            raise
    return _summarise(results, names, log_samples)


def _import_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ForgetlabError(f"lm-eval is not installed: {INSTALL_HINT}") from e
    return lm_eval


def _task_manager(tasks: list[str] | None, include_path: Path | None):
    """(TaskManager, task names). Indexing lm-eval's ~15,000 built-in task names takes ~6 s
    on 2 cores, so tasks that all live under `include_path` get a manager of that folder only."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ForgetlabError(f"lm-eval include_path is not a folder: {include_path}")
    local = None
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
    if tasks is None:
        if local is None or not local.all_subtasks:
            raise ForgetlabError("name the lm-eval tasks to run (or give an include_path)")
        return local, list(local.all_subtasks)
    if isinstance(tasks, str) or not tasks:
        raise ForgetlabError("tasks must be a non-empty list of lm-eval task names")
    names = list(tasks)
    if local is not None and all(n in local.all_tasks for n in names):
        return local, names
    known = set(_default_task_manager().all_tasks) | set(local.all_tasks if local else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = "; ".join(
            f"{n!r}: close names {difflib.get_close_matches(n, sorted(known), n=5) or 'none'}"
            for n in unknown
        )
        where = f" or under {include_path}" if include_path else ""
        raise ForgetlabError(f"unknown lm-eval task(s) in lm-eval's task list{where}: {hints}")
    if include_path is None:
        return _default_task_manager(), names
    return TaskManager(include_path=str(include_path)), names


@functools.lru_cache(maxsize=1)
def _default_task_manager():
    """lm-eval's built-in tasks, indexed once per process (the index only reads YAML files;
    each `load` builds fresh task objects)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@contextlib.contextmanager
def _preserved_state(model) -> Iterator[None]:
    """HFLM puts the model in eval mode and simple_evaluate reseeds the global RNGs; a caller
    in the middle of training must get both back as they were."""
    import numpy as np
    import torch

    was_training = model.training
    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _is_download_error(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) means the data set could not be fetched."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__ or ""
        name = type(error).__name__
        if module.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3", "httpx2"):
            return True
        if name in ("DatasetNotFoundError", "ConnectionError", "OfflineModeIsEnabled"):
            return True
        if isinstance(error, ConnectionError | TimeoutError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _summarise(results: dict | None, names: list[str], with_lls: bool) -> dict[str, dict]:
    if results is None:  # simple_evaluate returns None on ranks other than 0
        return {}
    out: dict[str, dict] = {}
    for task, metrics in results["results"].items():
        if "acc,none" not in metrics:  # a group's aggregate or a task without acc
            continue
        entry: dict[str, Any] = {
            "acc": float(metrics["acc,none"]),
            "acc_norm": float(metrics["acc_norm,none"]) if "acc_norm,none" in metrics else None,
            "n": int(results.get("n-samples", {}).get(task, {}).get("effective", 0)),
        }
        if with_lls:
            samples = sorted(results.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])
            # resps: one [(loglikelihood, is_greedy)] per choice, unfiltered
            entry["loglikelihoods"] = [[float(r[0][0]) for r in s["resps"]] for s in samples]
            entry["samples"] = samples
        out[task] = entry
    missing = [n for n in names if n not in out and n in results["results"]]
    if missing:
        log.warning("lm-eval gave no acc for %s", ", ".join(missing))
    return out
