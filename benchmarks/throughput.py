"""Training throughput: forgetlab's loop vs the best-configured HF Trainer + PEFT script.

Both sides train the packaged MiniLM for one epoch over the same N examples of a shipped task,
batch 16, AdamW, linear schedule, weight decay 0.01, grad-norm clip 1.0, the same precision,
dynamic padding and length-grouped batches. Model loading and tokenization are untimed; the
timer wraps only `train_stage(...)` and `trainer.train()`. Runs alternate (ours, trainer, ours,
trainer, ...) after one untimed warm-up of each, and the table reports median and min-max.

    python benchmarks/throughput.py [--examples 800] [--method full|lora|both] [--repeats 3]
                                    [--task sst2] [--bf16/--no-bf16] [--threads T]
                                    [--trainer-optim adamw_torch] [--warmup-examples 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import peft
import torch
import transformers
from common import interleave, machine, quiet, spread

from forgetlab.config import Config
from forgetlab.kinds import KINDS, EncodedSplit
from forgetlab.methods import get_method, method_config
from forgetlab.models.loading import load_tokenizer, resolve_model_path
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import PreparedTask, prepare_tasks
from forgetlab.recipe.train import make_accelerator, stage_seed, train_stage
from forgetlab.resolve import load_config

BATCH_SIZE = 16
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
# Speed does not depend on the learning rate; these only keep both runs finite.
LR = {"full": 2e-5, "lora": 5e-4}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["query", "value"]}


@dataclass
class Run:
    """One timed training pass."""

    seconds: float
    examples: int
    tokens: int  # real (non-pad) tokens
    padded: int  # batch cells including padding

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Setup:
    """Everything both sides share for one method: config, encoded data, tokenizer."""

    method: str
    config: Config
    task: PreparedTask
    tokenizer: object
    pad_id: int
    bf16: bool


# --------------------------------------------------------------------------------------
# shared preparation (untimed)


def make_setup(method: str, task: str, examples: int, bf16: bool, out_dir: str) -> Setup:
    method_section = {"name": method, **(LORA if method == "lora" else {})}
    raw = {
        "name": f"throughput-{method}",
        "tasks": [task],
        "model": {"name": "packaged:minilm", "max_length": 128, "attn_implementation": "eager"},
        "data": {"max_train_examples": examples, "max_eval_examples": BATCH_SIZE},
        "method": method_section,
        "training": {
            "lr": LR[method],
            "epochs": 1,
            "batch_size": BATCH_SIZE,
            "weight_decay": WEIGHT_DECAY,
            "max_grad_norm": MAX_GRAD_NORM,
            "mixed_precision": "bf16" if bf16 else "no",
            "group_by_length": True,
            "device": "cpu",
            "progress_bar": False,  # the Trainer side runs with disable_tqdm too
        },
        "output": {"dir": out_dir, "store": os.path.join(out_dir, "store.sqlite")},
    }
    config = load_config(raw=raw)
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prepared = prepare_tasks(config, tokenizer)[0]
    return Setup(method, config, prepared, tokenizer, pad_id, bf16)


def first_n(split: EncodedSplit, n: int) -> EncodedSplit:
    types = split.token_type_ids[:n] if split.token_type_ids is not None else None
    return EncodedSplit(split.input_ids[:n], types, split.labels[:n])


# --------------------------------------------------------------------------------------
# forgetlab


def ours_padded_cells(split: EncodedSplit, seed: int) -> int:
    """Batch cells train_stage pads to: it draws its first epoch from Random(stage_seed)."""
    batches = KINDS["classification"].train_batches(
        split.lengths, BATCH_SIZE, random.Random(stage_seed(seed, 1)), True
    )
    return sum(len(b) * max(split.lengths[i] for i in b) for b in batches)


def run_ours(setup: Setup, split: EncodedSplit, seed: int) -> Run:
    config = setup.config
    method = get_method(setup.method)
    mcfg = method_config(config.method)
    model = build_model(config, [setup.task], method, mcfg, seed)
    accelerator = make_accelerator(config.training)
    task = setup.task
    start = time.perf_counter()
    stats = train_stage(
        model,
        method,
        mcfg,
        task.name,
        task.kind,
        split,
        config.training,
        accelerator,
        seed=seed,
        stage=1,
        pad_id=setup.pad_id,
    )
    seconds = time.perf_counter() - start
    assert stats.examples == len(split), (stats.examples, len(split))
    return Run(seconds, stats.examples, stats.tokens, ours_padded_cells(split, seed))


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


def sampling_args() -> dict:
    """transformers 5 renamed `group_by_length=True` to `train_sampling_strategy=...`."""
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


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
    args = transformers.TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        learning_rate=LR[setup.method],
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        warmup_steps=0,
        bf16=setup.bf16,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        **sampling_args(),
        **({"optim": optim} if optim else {}),
    )
    collator = CountingCollator(setup.tokenizer)
    trainer = transformers.Trainer(
        model=trainer_model(setup, seed),
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=setup.tokenizer,
    )
    # With tqdm off, Trainer prints its final metrics dict; the table reports them instead.
    trainer.remove_callback(transformers.PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    assert steps == -(-len(dataset) // BATCH_SIZE), steps
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    return Run(seconds, len(dataset), tokens, collator.padded)


# --------------------------------------------------------------------------------------
# measurement and report


def row(method: str, label: str, runs: list[Run]) -> str:
    ex = spread([r.examples_per_s for r in runs])
    tok = spread([r.tokens_per_s for r in runs])
    pad = 100 * (1 - sum(r.tokens for r in runs) / sum(r.padded for r in runs))
    secs = statistics.median(r.seconds for r in runs)
    best = min(r.seconds for r in runs)
    return f"{method:5s} {label:10s} {ex:>22s} {tok:>25s} {secs:8.2f} {best:7.2f} {pad:6.1f}"


def ratio_line(method: str, ours: list[Run], theirs: list[Run]) -> str:
    """Ratios of examples/s; contention only ever slows a run, so best-of is reported too."""

    def med(runs: list[Run]) -> float:
        return statistics.median(r.examples_per_s for r in runs)

    def best(runs: list[Run]) -> float:
        return max(r.examples_per_s for r in runs)

    paired = [o.examples_per_s / t.examples_per_s for o, t in zip(ours, theirs)]
    pairs = ", ".join(f"{p:.2f}" for p in paired)
    return (
        f"{method:5s} ratio ours/trainer: {med(ours) / med(theirs):.2f} (medians), "
        f"{best(ours) / best(theirs):.2f} (best runs); per pair {pairs}"
    )


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
    return p.parse_args(argv)


def bench_method(method: str, args: argparse.Namespace, tmp: str) -> list[str]:
    setup = make_setup(method, args.task, args.examples, args.bf16, tmp)
    split = setup.task.train
    dataset = hf_dataset(split)
    n_tokens = sum(split.lengths)
    print(
        f"\n{method}: {args.task}, {len(split)} examples, {n_tokens} real tokens "
        f"({n_tokens / len(split):.1f}/example), {-(-len(split) // BATCH_SIZE)} steps",
        flush=True,
    )
    if args.warmup_examples > 0:  # first-call costs (oneDNN kernel setup, allocator growth)
        n = min(args.warmup_examples, len(split))
        run_ours(setup, first_n(split, n), seed=0)
        run_trainer(setup, dataset.select(range(n)), 0, tmp, args.trainer_optim)
        print(f"  warm-up done ({n} examples each)", flush=True)
    ours, theirs = interleave(
        lambda seed: run_ours(setup, split, seed),
        lambda seed: run_trainer(setup, dataset, seed, tmp, args.trainer_optim),
        args.repeats,
        lambda r: f"{r.seconds:6.2f} s {r.examples_per_s:6.1f} ex/s",
    )
    return [
        row(method, "forgetlab", ours),
        row(method, "HF Trainer", theirs),
        ratio_line(method, ours, theirs),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    methods = ["full", "lora"] if args.method == "both" else [args.method]
    precision = "bf16 autocast" if args.bf16 else "fp32"
    optim = args.trainer_optim or transformers.TrainingArguments.optim
    print(machine())
    print(f"optimizer: forgetlab: the AdamW train_stage builds; Trainer: optim={optim}")
    print(
        f"setting: batch {BATCH_SIZE}, 1 epoch, {precision}, AdamW wd {WEIGHT_DECAY}, "
        f"clip {MAX_GRAD_NORM}, dynamic padding + length grouping, {args.repeats} repeats "
        "interleaved"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="forgetlab-bench-") as tmp:
        for method in methods:
            rows += bench_method(method, args, tmp)
    print("\n" + HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
