"""BIG-bench multiple-choice tasks (`bigbench/<folder>/task.json`): the one reader of
BIG-bench's JSON format, for the `bb_*` probes and for the lm-eval cross-check.

Contexts are the prompts BIG-bench itself builds (task prefix, "Q:"/"A:" or the task's own
prefixes, choices listed in the input where the task asks for it), as lm-eval's BIG-bench
JSON task does. The bare `input` is often not a question at all (sports_understanding's is a
sentence to be judged "plausible"/"implausible"), so scoring the choices after it alone would
measure little. `prompt="raw"` keeps the input exactly as in the file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from forgetlab.errors import DataError
from forgetlab.tasks.base import MCExample, TaskData
from forgetlab.tasks.shipped import read_text

Loader = Callable[[Path], TaskData]

# registry name -> folder under bigbench/ holding task.json
BIGBENCH_FOLDERS = {
    "bb_social_iqa": "social_iqa",
    "bb_strategyqa": "strategyqa",
    "bb_winowhy": "winowhy",
    "bb_sports_understanding": "sports_understanding",
    "bb_navigate": "navigate",
    "bb_date_understanding": "date_understanding",
    "bb_logical_deduction": "logical_deduction/three_objects",
    "bb_causal_judgment": "causal_judgment",
    "bb_physical_intuition": "physical_intuition",
    "bb_arithmetic_2d_mul": "arithmetic/2_digit_multiplication",
    "bb_arithmetic_3d_add": "arithmetic/3_digit_addition",
}
PROMPTS = ("bigbench", "raw")


def _read_task_json(path: Path, task: str) -> dict:
    text = read_text(path, task)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"task {task}: {path}: invalid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise DataError(f"task {task}: {path}: expected an object with an 'examples' list")
    return data


@lru_cache(maxsize=64)
def _listing_order(n: int) -> tuple[int, ...]:
    # BIG-bench (and lm-eval) list choices as RandomState(42).permutation(sorted(choices)),
    # with a fresh RandomState per example, so the order depends only on n. Listing them in
    # file order instead would give the answer away: arithmetic always stores it last.
    return tuple(int(i) for i in np.random.RandomState(42).permutation(n))


def bigbench_prompt(task_json: dict, text: str, choices: list[str]) -> str:
    """The zero-shot prompt BIG-bench builds for one example, trailing whitespace removed
    (the scorer puts one space between context and choice; BIG-bench's "A: " would double it)
    and leading whitespace too (the default "\\nQ: " would start every prompt with a newline)."""
    prompt = task_json.get("example_input_prefix", "\nQ: ") + text
    if task_json.get("append_choices_to_input", True):
        listed = sorted(choices)
        sep = task_json.get("choice_prefix", "\n  choice: ")
        prompt += sep + sep.join(listed[i] for i in _listing_order(len(listed)))
    prompt += task_json.get("example_output_prefix", "\nA: ")
    return (task_json.get("task_prefix", "") + prompt).strip()


def _bigbench_example(task_json: dict, example: object, prompt: str) -> MCExample | None:
    """The example as an MCExample, or None when it has no single correct choice."""
    if not isinstance(example, dict) or not isinstance(example.get("input"), str):
        return None
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        return None
    choices = [str(c) for c in scores]
    correct = [i for i, score in enumerate(scores.values()) if score == 1]
    if len(correct) != 1:
        return None
    text = example["input"]
    context = bigbench_prompt(task_json, text, choices) if prompt == "bigbench" else text
    return MCExample(context=context, choices=choices, label=correct[0])


def load_bigbench(
    data_dir: Path, folder: str, name: str = "", prompt: str = "bigbench"
) -> TaskData:
    """One BIG-bench multiple-choice task (`bigbench/<folder>/task.json`), eval only.

    Examples without exactly one choice scored 1 (or with fewer than 2 choices) are skipped
    and counted in meta["skipped"]; exact duplicate examples are kept, as shipped, and
    counted in meta["duplicates"]. Choices keep the file's order."""
    name = name or "bb_" + folder.replace("/", "_")
    if prompt not in PROMPTS:
        raise DataError(f"task {name}: unknown prompt style {prompt!r}; use one of {PROMPTS}")
    path = Path(data_dir) / "bigbench" / folder / "task.json"
    task_json = _read_task_json(path, name)
    raw = task_json["examples"]
    converted = [_bigbench_example(task_json, ex, prompt) for ex in raw]
    examples = [ex for ex in converted if ex is not None]
    if not examples:
        raise DataError(f"task {name}: {path} has no example with exactly one correct choice")
    copies = Counter(json.dumps(ex, sort_keys=True) for ex in raw)
    return TaskData(
        name=name,
        kind="multiple_choice",
        label_names=[],
        train=[],
        eval=examples,
        eval_split=f"bigbench/{folder}/task.json ({len(examples):,} examples)",
        source=str(path),
        meta={
            "eval_file": str(path),
            "chance": sum(1 / len(ex.choices) for ex in examples) / len(examples),
            "skipped": len(raw) - len(examples),
            "duplicates": sum(n - 1 for n in copies.values()),
            "prompt": prompt,
            # BIG-bench asks that its canary travel with its data; it is kept, not copied out.
            "canary": task_json.get("canary", ""),
        },
    )


def _bigbench_loader(name: str, folder: str) -> Loader:
    def load(data_dir: Path) -> TaskData:
        return load_bigbench(data_dir, folder, name)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f"BIG-bench {folder} (multiple choice, eval only)."
    return load


def bigbench_tasks() -> dict[str, Loader]:
    """Registry name -> loader for every shipped BIG-bench probe."""
    return {name: _bigbench_loader(name, folder) for name, folder in BIGBENCH_FOLDERS.items()}
