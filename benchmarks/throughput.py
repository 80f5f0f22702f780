"""Training throughput: forgetlab's loop vs the best-configured HF Trainer + PEFT script.

Both sides train the packaged MiniLM for one epoch over the same N examples of a shipped task,
batch 16, AdamW, linear schedule, weight decay 0.01, grad-norm clip 1.0, the same precision,
dynamic padding and length-grouped batches. Model loading and tokenization are untimed; the
timer wraps only `train_stage(...)` and `trainer.train()`. Runs alternate (ours, trainer, ours,
trainer, ...) after one untimed warm-up of each, and the table reports median and min-max.

    python benchmarks/throughput.py [--examples 800] [--method full|lora|both] [--repeats 3]
                                    [--task sst2] [--bf16/--no-bf16] [--threads T]
                                    [--trainer-optim adamw_torch] [--warmup-examples 64]
                                    [--dropout-masks torch|bits]
"""

from __future__ import annotations

import argparse
import os
import statistics

import peft
import transformers
from common import machine, peak_rss_gib, spread
from trainer_comparison import (
    Run,
    Setup,
    bench_methods,
    make_setup,
    pad_percent,
    race,
    ratio_line,
    start,
    timed_trainer_train,
    trainer_arguments,
    training_section,
)

from forgetlab.kinds import EncodedSplit
from forgetlab.models.loading import resolve_model_path

BATCH_SIZE = 16
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
# Speed does not depend on the learning rate; these only keep both runs finite.
LR = {"full": 2e-5, "lora": 5e-4}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["query", "value"]}


# --------------------------------------------------------------------------------------
# shared preparation (untimed)


def setup_for(
    method: str, task: str, examples: int, bf16: bool, out_dir: str, dropout_masks: str = "torch"
) -> Setup:
    method_section = {"name": method, **(LORA if method == "lora" else {})}
    raw = {
        "name": f"throughput-{method}",
        "tasks": [task],
        "model": {"name": "packaged:minilm", "max_length": 128, "attn_implementation": "eager"},
        "data": {"max_train_examples": examples, "max_eval_examples": BATCH_SIZE},
        "method": method_section,
        "training": training_section(
            LR[method],
            BATCH_SIZE,
            WEIGHT_DECAY,
            MAX_GRAD_NORM,
            "bf16" if bf16 else "no",
            dropout_masks=dropout_masks,
        ),  # fmt: skip
        "output": {"dir": out_dir, "store": os.path.join(out_dir, "store.sqlite")},
    }
    return make_setup(method, raw, bf16)


def first_n(split: EncodedSplit, n: int) -> EncodedSplit:
    types = split.token_type_ids[:n] if split.token_type_ids is not None else None
    return EncodedSplit(split.input_ids[:n], types, split.labels[:n])


# --------------------------------------------------------------------------------------
# HF Trainer + PEFT, as a careful user writes it


class CountingCollator:
    """DataCollatorWithPadding that also counts the cells it pads to (a few ns per batch)."""

    def __init__(self, tokenizer) -> None:
        self.inner = transformers.DataCollatorWithPadding(tokenizer)
        self.padded = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner(features)
        self.padded += batch["input_ids"].numel()
        return batch


def hf_dataset(split: EncodedSplit):
    import datasets

    columns = {
        "input_ids": split.input_ids,
        "attention_mask": [[1] * len(ids) for ids in split.input_ids],
        "labels": split.labels,
    }
    if split.token_type_ids is not None:
        columns["token_type_ids"] = split.token_type_ids
    return datasets.Dataset.from_dict(columns)


def trainer_model(setup: Setup, seed: int):
    transformers.set_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("packaged:minilm"),
        num_labels=setup.task.data.num_labels,
        attn_implementation="eager",
    )
    if setup.method == "lora":
        config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, bias="none", **LORA)
        model = peft.get_peft_model(model, config)
    return model


def run_trainer(setup: Setup, dataset, seed: int, out_dir: str, optim: str | None) -> Run:
    args = trainer_arguments(
        setup, out_dir, seed, LR[setup.method], WEIGHT_DECAY, MAX_GRAD_NORM, warmup_steps=0,
        **({"optim": optim} if optim else {}),
    )  # fmt: skip
    collator = CountingCollator(setup.tokenizer)
    seconds = timed_trainer_train(setup, trainer_model(setup, seed), args, dataset, collator)
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    return Run(seconds, len(dataset), tokens, collator.padded)


# --------------------------------------------------------------------------------------
# measurement and report


def row(method: str, label: str, runs: list[Run]) -> str:
    ex = spread([r.examples_per_s for r in runs])
    tok = spread([r.tokens_per_s for r in runs])
    pad = pad_percent(runs)
    secs = statistics.median(r.seconds for r in runs)
    best = min(r.seconds for r in runs)
    return f"{method:5s} {label:10s} {ex:>22s} {tok:>25s} {secs:8.2f} {best:7.2f} {pad:6.1f}"


HEADER = (
    f"{'':5s} {'setup':10s} {'examples/s med [min-max]':>22s} {'tokens/s med [min-max]':>25s} "
    f"{'median s':>8s} {'best s':>7s} {'pad %':>6s}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=800, help="training examples (1 epoch)")
    p.add_argument("--method", choices=("full", "lora", "both"), default="both")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setup")
    p.add_argument("--task", default="sst2", help="a shipped classification task")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--warmup-examples", type=int, default=64, help="untimed warm-up run per setup (0: none)"
    )
    p.add_argument(
        "--trainer-optim",
        default=None,
        help="TrainingArguments.optim for the Trainer side (default: the Trainer's own default,\n"
        "adamw_torch_fused on torch >= 2.8; adamw_torch isolates the fused-kernel gain)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument(
        "--dropout-masks",
        choices=("torch", "bits"),
        default="torch",
        help="forgetlab's training.dropout_masks (the Trainer keeps torch's dropout)",
    )
    return p.parse_args(argv)


def bench_method(method: str, args: argparse.Namespace, tmp: str) -> list[str]:
    setup = setup_for(method, args.task, args.examples, args.bf16, tmp, args.dropout_masks)
    split = setup.task.train
    dataset = hf_dataset(split)
    n_tokens = sum(split.lengths)
    print(
        f"\n{method}: {args.task}, {len(split)} examples, {n_tokens} real tokens "
        f"({n_tokens / len(split):.1f}/example), {-(-len(split) // BATCH_SIZE)} steps",
        flush=True,
    )
    ours, theirs = race(
        setup,
        split,
        dataset,
        lambda data, seed: run_trainer(setup, data, seed, tmp, args.trainer_optim),
        first_n,
        args.warmup_examples,
        args.repeats,
        lambda r: f"{r.seconds:6.2f} s {r.examples_per_s:6.1f} ex/s",
    )
    return [
        row(method, "forgetlab", ours),
        row(method, "HF Trainer", theirs),
        ratio_line(method, ours, theirs, "examples_per_s"),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    methods = start(args)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    optim = args.trainer_optim or transformers.TrainingArguments.optim
    print(machine())
    print(f"optimizer: forgetlab: the AdamW train_stage builds; Trainer: optim={optim}")
    print(
        f"setting: batch {BATCH_SIZE}, 1 epoch, {precision}, AdamW wd {WEIGHT_DECAY}, "
        f"clip {MAX_GRAD_NORM}, dynamic padding + length grouping, {args.repeats} repeats "
        f"interleaved; forgetlab's dropout_masks: {args.dropout_masks}"
    )
    bench_methods(methods, bench_method, args, "forgetlab-bench-", HEADER)
    # both sides train in this one process, so this is the larger of the two trials' peaks
    print(f"peak RSS of the benchmark process: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
