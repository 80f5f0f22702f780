"""What the two training-throughput benchmarks (throughput.py: an encoder on a classification
task; lm_throughput.py: a causal LM on GSM8K) share: forgetlab's timed `train_stage`, the
HF Trainer's timed `trainer.train()`, and the warm-up + interleaved repeats around them.

Imported by those scripts (run as `python benchmarks/<name>.py`, which puts this folder on
sys.path)."""

from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from common import interleave, quiet

from forgetlab.config import Config
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method, method_config
from forgetlab.models.loading import load_tokenizer
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import PreparedTask, prepare_tasks
from forgetlab.recipe.train import make_accelerator, stage_seed, train_stage
from forgetlab.resolve import load_config


@dataclass
class Run:
    """One timed training pass."""

    seconds: float
    examples: int
    tokens: int  # real (non-pad) tokens fed to the model
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
    bf16: bool = True


def make_setup(method: str, raw: dict, bf16: bool = True) -> Setup:
    """Load the config `raw`, its tokenizer and its first task, encoded (untimed)."""
    config = load_config(raw=raw)
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    task = prepare_tasks(config, tokenizer)[0]
    return Setup(method, config, task, tokenizer, pad_id, bf16)


def training_section(lr: float, batch_size: int, weight_decay: float, max_grad_norm: float,
                     mixed_precision: str, **extra) -> dict:  # fmt: skip
    """The `training` section both benchmarks give forgetlab: one epoch on the CPU."""
    return {
        "lr": lr,
        "epochs": 1,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "max_grad_norm": max_grad_norm,
        **extra,
        "mixed_precision": mixed_precision,
        "group_by_length": True,
        "device": "cpu",
        "progress_bar": False,  # the Trainer side runs with disable_tqdm too
    }


def ours_padded_cells(setup: Setup, split, seed: int) -> int:
    """Batch cells train_stage pads to: it draws its first epoch from Random(stage_seed)."""
    batches = KINDS[setup.task.kind].train_batches(
        split.lengths, setup.config.training.batch_size, random.Random(stage_seed(seed, 1)), True
    )
    return sum(len(b) * max(split.lengths[i] for i in b) for b in batches)


def ours_model(setup: Setup, seed: int):
    """(model, method, method config) as a forgetlab run builds them for `seed`."""
    method = get_method(setup.method)
    mcfg = method_config(setup.config.method)
    return build_model(setup.config, [setup.task], method, mcfg, seed), method, mcfg


def run_ours(setup: Setup, split, seed: int) -> Run:
    """One epoch of forgetlab's `train_stage` over `split`; only that call is timed."""
    model, method, mcfg = ours_model(setup, seed)
    accelerator = make_accelerator(setup.config.training)
    start = time.perf_counter()
    stats = train_stage(
        model,
        method,
        mcfg,
        setup.task.name,
        setup.task.kind,
        split,
        setup.config.training,
        accelerator,
        seed=seed,
        stage=1,
        pad_id=setup.pad_id,
    )
    seconds = time.perf_counter() - start
    assert stats.examples == len(split), (stats.examples, len(split))
    return Run(seconds, stats.examples, stats.tokens, ours_padded_cells(setup, split, seed))


def sampling_args() -> dict:
    """transformers 5 renamed `group_by_length=True` to `train_sampling_strategy=...`."""
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def trainer_arguments(setup: Setup, out_dir: str, seed: int, lr: float, weight_decay: float,
                      max_grad_norm: float, **extra) -> transformers.TrainingArguments:  # fmt: skip
    """TrainingArguments of the Trainer side: one epoch on the CPU, no eval/save/logging."""
    return transformers.TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=setup.config.training.batch_size,
        num_train_epochs=1,
        learning_rate=lr,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        lr_scheduler_type="linear",
        **extra,
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
    )


def timed_trainer_train(setup: Setup, model, args, dataset, collator) -> float:
    """Seconds of `trainer.train()` over one epoch of `dataset`."""
    trainer = transformers.Trainer(
        model=model,
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
    assert steps == -(-len(dataset) // args.per_device_train_batch_size), steps
    return seconds


def race(setup: Setup, split, dataset, run_trainer: Callable[[object, int], Run],
         first_n: Callable, warmup_examples: int, repeats: int,
         describe: Callable[[Run], str]) -> tuple[list[Run], list[Run]]:  # fmt: skip
    """An untimed warm-up of each side on the first `warmup_examples` (first-call costs:
    oneDNN kernel setup, allocator growth), then `repeats` interleaved timed runs."""
    if warmup_examples > 0:
        n = min(warmup_examples, len(split))
        run_ours(setup, first_n(split, n), seed=0)
        run_trainer(dataset.select(range(n)), 0)
        print(f"  warm-up done ({n} examples each)", flush=True)
    return interleave(
        lambda seed: run_ours(setup, split, seed),
        lambda seed: run_trainer(dataset, seed),
        repeats,
        describe,
    )


def pad_percent(runs: list[Run]) -> float:
    """Share of batch cells that were padding, over all runs."""
    return 100 * (1 - sum(r.tokens for r in runs) / sum(r.padded for r in runs))


def ratio_line(method: str, ours: list[Run], theirs: list[Run], rate: str, unit: str = "") -> str:
    """Ratios of `rate` (a Run property); contention only ever slows a run, so best-of is
    reported too."""

    def med(runs: list[Run]) -> float:
        return statistics.median(getattr(r, rate) for r in runs)

    def best(runs: list[Run]) -> float:
        return max(getattr(r, rate) for r in runs)

    pairs = ", ".join(f"{getattr(o, rate) / getattr(t, rate):.2f}" for o, t in zip(ours, theirs))
    return (
        f"{method:5s} ratio ours/trainer{unit}: {med(ours) / med(theirs):.2f} (medians), "
        f"{best(ours) / best(theirs):.2f} (best runs); per pair {pairs}"
    )


def start(args) -> list[str]:
    """Threads and quiet libraries as asked; the methods to benchmark."""
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    return ["full", "lora"] if args.method == "both" else [args.method]


def bench_methods(methods: list[str], bench_method: Callable, args, prefix: str, header: str):
    """Run `bench_method(method, args, tmp)` for every method, then print the table."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for method in methods:
            rows += bench_method(method, args, tmp)
    print("\n" + header)
    print("\n".join(rows))
