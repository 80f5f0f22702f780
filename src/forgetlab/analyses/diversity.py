"""`forgetlab analyze --diversity`, generation diversity: k sampled answers per held-out
prompt, from the base model and after training, scored by distinct-1/2, self-BLEU and the
number of different final answers.

Fine-tuning on one answer per question tends to narrow what a model says: its samples repeat
each other more (self-BLEU up, distinct n-grams down) and agree on fewer final answers. The
same prompts (a fixed sample of the task's held-out split), the same sampling seed and the same
batches are used at every stage, so rows differ only by the model.

Rows: stage 0 (the base model), every intermediate stage whose checkpoint was saved, and the
final stage. Causal LM runs only; the prompts come from the first task whose examples have a
prompt (InstructionExample: GSM8K) or from the task named by the `task` option.
"""

from __future__ import annotations

import random

import numpy as np

from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spec import AnalysisFigure, CliOption, FigureContext
from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.decoding import generate
from forgetlab.kinds.scorers.diversity import diversity
from forgetlab.plotting import NothingToDraw, literal, new_figure, png
from forgetlab.recipe.prepare import PreparedTask
from forgetlab.tasks.base import InstructionExample

NAME = "diversity"
FLAG = "sampled-answer diversity (causal LM runs)"  # help of `forgetlab analyze --diversity`
REPORT_ORDER = 5
LM_ONLY = True  # the report expects it only from a language model's run
DEFAULTS = {"task": None, "prompts": 16, "samples": 5, "temperature": 0.8, "max_new_tokens": 128}
CLI = (
    CliOption("--samples", "samples", int, "samples per prompt (5)", metavar="K"),
    CliOption("--temperature", "temperature", float, "sampling (0.8)", metavar="T"),
    CliOption("--prompts", "prompts", int, "held-out prompts (16)", metavar="N"),
)
TOP_P = 1.0
MAX_BATCH_PROMPTS = 16  # prompts per generate call (each gives `samples` rows)
EXAMPLE_CHARS = 240  # sample texts kept in the result, cut to this length
EXAMPLE_SAMPLES = 2


def _has_prompts(task: PreparedTask) -> bool:
    return bool(task.data.eval) and isinstance(task.data.eval[0], InstructionExample)


def prompt_task(run: OpenRun, name: str | None) -> PreparedTask:
    """The task whose held-out prompts are sampled: `name`, else the first with prompts."""
    if name is not None:
        task = next((t for t in run.tasks if t.name == name), None)
        if task is None:
            raise ForgetlabError(
                f"diversity: task {name!r} is not a task of {run.run_dir} "
                f"(tasks: {', '.join(run.task_names)})"
            )
        if not _has_prompts(task):
            raise ForgetlabError(
                f"diversity: task {name!r} is of kind {task.kind}, without prompts; it needs a "
                "prompt → response task (kind instruction, e.g. gsm8k)"
            )
        return task
    task = next((t for t in run.tasks if _has_prompts(t)), None)
    if task is None:
        raise ForgetlabError(
            f"diversity needs a prompt → response task (kind instruction, e.g. gsm8k) among the "
            f"run's tasks to sample answers to; {run.run_dir} has "
            f"{', '.join(f'{t.name} ({t.kind})' for t in run.tasks)}"
        )
    return task


def stages(run: OpenRun, seed: int) -> list[int]:
    """0, every intermediate stage with a saved checkpoint, and the final stage."""
    last = len(run.tasks)
    middle = [s for s in range(1, last) if run.checkpoint(seed, s).is_dir()]
    return [0, *middle, last]


def applies(run: OpenRun) -> bool:
    """Part of the default `analyze` set only for causal LMs (encoders do not generate)."""
    return run.is_causal


def check(run: OpenRun, seed: int, params: dict) -> None:
    if not run.is_causal:
        raise ForgetlabError(
            f"diversity needs a causal LM run (it samples generated answers); {run.run_dir} "
            f"fine-tunes the encoder {run.config.model.name}"
        )
    for key in ("prompts", "max_new_tokens"):
        if not isinstance(params[key], int) or params[key] < 1:
            raise ForgetlabError(f"diversity: {key} must be a whole number >= 1, got {params[key]}")
    if not isinstance(params["samples"], int) or params["samples"] < 2:
        raise ForgetlabError(
            f"diversity: samples must be at least 2 (self-BLEU compares a prompt's samples with "
            f"each other), got {params['samples']}"
        )
    if not isinstance(params["temperature"], (int, float)) or not params["temperature"] > 0:
        raise ForgetlabError(f"diversity: temperature must be > 0, got {params['temperature']}")
    prompt_task(run, params["task"])
    run.require_checkpoints(seed, [len(run.tasks)], "generation diversity after training")


def held_out_prompts(task: PreparedTask, n: int, seed: int) -> list[str]:
    """A fixed sample of `n` prompts of the task's held-out split (the full eval split, not
    only the run's subsample): the same for every stage."""
    examples = task.data.eval
    indices = sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples))))
    return [examples[i].prompt for i in indices]


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    task = prompt_task(run, params["task"])
    prompts = held_out_prompts(task, params["prompts"], seed)
    batch = max(1, min(run.config.eval.batch_size, MAX_BATCH_PROMPTS))
    rows, examples = [], []
    for stage in stages(run, seed):
        label = "base" if stage == 0 else f"after {run.tasks[stage - 1].name}"
        model = run.model_at(seed, stage)
        samples = generate(
            model.backbone,
            run.tokenizer,
            prompts,
            max_new_tokens=params["max_new_tokens"],
            batch_size=batch,
            device=run.device,
            do_sample=True,
            temperature=float(params["temperature"]),
            top_p=TOP_P,
            num_return_sequences=params["samples"],
            seed=seed,
        )
        del model
        scores = diversity(samples)
        words = [len(t.split()) for group in samples for t in group]
        keys = ("distinct_1", "distinct_2", "self_bleu", "distinct_answers")
        keys += ("distinct_1_per_prompt", "distinct_2_per_prompt")
        rows.append(
            {
                "stage": stage,
                "label": label,
                # rounded: sacrebleu gives 100.00000000000001 for identical samples
                **{k: None if scores[k] is None else round(scores[k], 6) for k in keys},
                "mean_words": round(sum(words) / len(words), 3),
                # texts without a word (eos or whitespace only): sacrebleu scores identical
                # empty samples 0, so this shows when a low self-BLEU means empty answers
                "empty_samples": round(sum(w == 0 for w in words) / len(words), 6),
            }
        )
        examples.append(
            {
                "stage": stage,
                "label": label,
                "prompt": _short(prompts[0]),
                "samples": [_short(t) for t in samples[0][:EXAMPLE_SAMPLES]],
            }
        )
    return {
        "seed": seed,
        "task": task.name,
        "n_prompts": len(prompts),
        "k": params["samples"],
        "temperature": float(params["temperature"]),
        "top_p": TOP_P,
        "max_new_tokens": params["max_new_tokens"],
        "rows": rows,
        "examples": examples,
    }


def format_text(r: dict) -> list[str]:
    width = max(12, *(len(row["label"]) + 2 for row in r["rows"]))
    lines = [
        f"Generation diversity on {r['task']} ({r['n_prompts']} held-out prompts × {r['k']} "
        f"samples, temperature {r['temperature']:g}, ≤ {r['max_new_tokens']} new tokens):",
        f"{'':<{width}}{'distinct-1':>12}{'distinct-2':>12}{'self-BLEU':>11}{'answers':>9}",
    ]
    for row in r["rows"]:
        bleu = "—" if row["self_bleu"] is None else f"{row['self_bleu']:.1f}"
        lines.append(
            f"{row['label']:<{width}}{row['distinct_1']:>12.3f}{row['distinct_2']:>12.3f}"
            f"{bleu:>11}{row['distinct_answers']:>9.2f}"
        )
    lines.append("(self-BLEU 100: samples repeat each other; answers: distinct final numbers)")
    return lines


def figure(data: dict, about: FigureContext) -> AnalysisFigure:
    return AnalysisFigure(
        f"Output diversity of run {about.run_name}: the base model and after training",
        f"Sampled outputs on {data.get('task')} (seed {data.get('seed')}): distinct-1 and "
        "distinct-2 (unique unigrams and bigrams / all), self-BLEU / 100 (higher = samples "
        "more alike) and the mean number of distinct final answers among the k samples of a "
        "prompt / k; for the base model and each analysed stage (legend: mean words per "
        "sample, share of empty samples). Fine-tuning often narrows what a model says: lower "
        "distinct, higher self-BLEU.",
        draw(data),
    )


BARS = (
    ("distinct-1", lambda r, k: r["distinct_1"]),
    ("distinct-2", lambda r, k: r["distinct_2"]),
    ("self-BLEU / 100", lambda r, k: r["self_bleu"] / 100),
    ("distinct answers / k", lambda r, k: r["distinct_answers"] / k),
)


def draw(data: dict) -> bytes:
    """Grouped bars per diversity measure: the base model and after each stage in the file."""
    rows = data["rows"]
    if not rows:
        raise NothingToDraw("no rows")
    k = float(data["k"])
    fig = new_figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(BARS))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [_bar(get, row, k) for _, get in BARS]
        label = str(row.get("label") or f"stage {row.get('stage')}")
        words, empty = row.get("mean_words"), row.get("empty_samples")
        if isinstance(words, (int, float)) and isinstance(empty, (int, float)):
            label += f" ({words:.1f} words, {empty:.0%} empty)"  # low self-BLEU from empties?
        offset = (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, color=f"C{i % 10}", label=literal(label))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [name for name, _ in BARS])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction")
    ax.text(0.01, 0.98, "distinct: higher = more diverse; self-BLEU: higher = less diverse",
            transform=ax.transAxes, va="top", fontsize=7, color="0.35")  # fmt: skip
    title = (
        f"Output diversity on {data.get('task')}: {data.get('n_prompts')} prompts × "
        f"{data.get('k')} samples, temperature {data.get('temperature')}"
    )
    ax.set_title(literal(title), fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)


def _bar(get, row: dict, k: float) -> float:
    try:
        return float(get(row, k))
    except TypeError:  # a null measure: no bar
        return float("nan")
