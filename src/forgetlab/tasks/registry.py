"""Named tasks, where their data lives, and the deterministic subsampling every run uses."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from forgetlab.errors import DataError
from forgetlab.tasks import shipped
from forgetlab.tasks.base import TaskData
from forgetlab.tasks.lm_shipped import LM_TASKS

T = TypeVar("T")

DATA_ENV = "FORGETLAB_DATA"
SOURCES = ("local", "hub")

TASK_REGISTRY: dict[str, Callable[[Path], TaskData]] = {
    "rte": shipped.load_rte,
    "mrpc": shipped.load_mrpc,
    "cola": shipped.load_cola,
    "sst2": shipped.load_sst2,
    "agnews": shipped.load_agnews,
    "trec": shipped.load_trec,
    # causal-LM tasks: gsm8k, gsm8k_gen, bb_* (BIG-bench multiple choice), tinyshakespeare,
    # stdlib_code, agnews_text, humaneval
    **LM_TASKS,
}

# Spellings people type for the same tasks (GLUE's folder names, the hub's dataset name).
_ALIASES = {"sst-2": "sst2", "sst_2": "sst2", "ag_news": "agnews", "ag-news": "agnews"}


def default_data_dir() -> Path:
    """Where the shipped data lives when the config gives no `data.dir`.

    Order: $FORGETLAB_DATA; ../shared/data from the working directory; then, walking up from
    this file (an editable install sits inside the repository), <dir>/shared/data or
    <dir>/../shared/data. Falls back to the working-directory candidate, which then shows up
    in the "file not found" message.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    cwd_candidate = Path.cwd().parent / "shared" / "data"
    if cwd_candidate.is_dir():
        return cwd_candidate
    for ancestor in Path(__file__).resolve().parents:
        for candidate in (ancestor / "shared" / "data", ancestor.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
    return cwd_candidate


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def load_task(name: str, data_dir: Path | None = None, source: str = "local") -> TaskData:
    """A registry task's full train and eval splits, from the shipped files or the hub."""
    key = canonical_name(name)
    if key not in TASK_REGISTRY:
        raise DataError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASK_REGISTRY))} "
            "(for your own CSV/TSV/JSONL data use a task with type: file)"
        )
    if source == "hub":
        from forgetlab.tasks.hub import load_hub_task  # keeps `datasets` out of local runs

        return load_hub_task(key)
    if source != "local":
        raise DataError(f"unknown data source {source!r} for task {name}; use one of {SOURCES}")
    return TASK_REGISTRY[key](Path(data_dir) if data_dir is not None else default_data_dir())


def subsample(examples: Sequence[T], n: int | None, seed: int) -> list[T]:
    """A deterministic random subset of size n, in the original order (all if n is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise DataError(f"cannot take {n} examples: the number must be >= 0")
    # Sample indices, not items, then sort: the subset depends only on (len, n, seed) and
    # keeps file order, so batches look the same however the caller built the list.
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]
