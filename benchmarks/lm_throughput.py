"""Causal-LM training throughput: forgetlab's loop vs the best-configured HF Trainer (+ PEFT).

Both sides fine-tune SmolLM2-135M-Instruct (`packaged:smollm2`, fp32 master weights, eager
attention) for one epoch over the same N GSM8K training examples, encoded once by forgetlab's
instruction kind (chat template, prompt + worked answer + eos, loss on the answer tokens only),
batch 8, bf16 autocast, AdamW (fused), linear warmup (1 step) then linear decay, grad-norm clip
1.0, no weight decay; LoRA r=16, alpha=32, dropout 0.05 on every linear layer (not the output
head), or full fine-tuning. Model loading and tokenization are untimed; the timer wraps only
`train_stage(...)` and `trainer.train()`. After one untimed warm-up step per side, the timed runs
alternate (ours, trainer, ours, trainer, ...); the table reports medians and min-max.

    python benchmarks/lm_throughput.py [--examples 48] [--method lora|full|both] [--repeats 2]
                                       [--threads T] [--max-length 384] [--warmup-examples 8]
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
from common import interleave, load_average, machine, quiet, spread

from forgetlab.config import Config
from forgetlab.kinds import KINDS
from forgetlab.kinds.lm import LMSplit
from forgetlab.kinds.lm_text import IGNORE
from forgetlab.methods import get_method, method_config
from forgetlab.methods.base import count_parameters
from forgetlab.models.loading import load_tokenizer, resolve_model_path
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import PreparedTask, prepare_tasks
from forgetlab.recipe.train import make_accelerator, stage_seed, train_stage
from forgetlab.resolve import load_config

MODEL = "packaged:smollm2"
ATTN = "eager"  # forgetlab's default (model.attn_implementation); the Trainer side gets it too
BATCH_SIZE = 8
WEIGHT_DECAY = 0.0  # as configs/smollm2_math.yaml
MAX_GRAD_NORM = 1.0
WARMUP_STEPS = 1
# configs/smollm2_math.yaml's rates; speed does not depend on them.
LR = {"full": 2e-5, "lora": 2e-4}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


@dataclass
class Run:
    """One timed training pass."""

    seconds: float
    examples: int
    tokens: int  # real (non-pad) tokens fed to the model
    padded: int  # batch cells including padding

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds


@dataclass
class Setup:
    method: str
    config: Config
    task: PreparedTask
    tokenizer: object
    pad_id: int


# --------------------------------------------------------------------------------------
# shared preparation (untimed)


def make_setup(method: str, examples: int, max_length: int, out_dir: str) -> Setup:
    # forgetlab's decoder default for target_modules: every linear layer but the output head
    method_section = {"name": method, **(LORA if method == "lora" else {})}
    raw = {
        "name": f"lm-throughput-{method}",
        "tasks": [{"name": "gsm8k", "max_train_examples": examples, "max_eval_examples": 1}],
        "model": {"name": MODEL, "max_length": max_length, "attn_implementation": ATTN},
        "method": method_section,
        "training": {
            "lr": LR[method],
            "epochs": 1,
            "batch_size": BATCH_SIZE,
            "weight_decay": WEIGHT_DECAY,
            "max_grad_norm": MAX_GRAD_NORM,
            "warmup_steps": WARMUP_STEPS,
            "mixed_precision": "bf16",
            "group_by_length": True,
            "device": "cpu",
            "progress_bar": False,
        },
        "output": {"dir": out_dir, "store": os.path.join(out_dir, "store.sqlite")},
    }
    config = load_config(raw=raw)
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    task = prepare_tasks(config, tokenizer)[0]
    return Setup(method, config, task, tokenizer, pad_id)


def first_n(split: LMSplit, n: int) -> LMSplit:
    return LMSplit(split.input_ids[:n], split.labels[:n])


# --------------------------------------------------------------------------------------
# forgetlab


def ours_padded_cells(split: LMSplit, seed: int) -> int:
    """Batch cells train_stage pads to: its first epoch is drawn from Random(stage_seed)."""
    batches = KINDS["instruction"].train_batches(
        split.lengths, BATCH_SIZE, random.Random(stage_seed(seed, 1)), True
    )
    return sum(len(b) * max(split.lengths[i] for i in b) for b in batches)


def ours_model(setup: Setup, seed: int):
    method = get_method(setup.method)
    mcfg = method_config(setup.config.method)
    return build_model(setup.config, [setup.task], method, mcfg, seed), method, mcfg


def run_ours(setup: Setup, split: LMSplit, seed: int) -> Run:
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
    return Run(seconds, stats.examples, stats.tokens, ours_padded_cells(split, seed))


# --------------------------------------------------------------------------------------
# HF Trainer + PEFT, as a careful user writes it


class CountingCollator:
    """DataCollatorForSeq2Seq (pads input_ids with the pad token, labels with -100, to the
    longest row of the batch) that also counts real tokens and padded cells."""

    def __init__(self, tokenizer) -> None:
        self.inner = transformers.DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=IGNORE
        )
        self.tokens = 0
        self.padded = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.padded += batch["input_ids"].numel()
        return batch


def hf_dataset(split: LMSplit):
    import datasets

    return datasets.Dataset.from_dict(
        {
            "input_ids": split.input_ids,
            "attention_mask": [[1] * len(ids) for ids in split.input_ids],
            "labels": split.labels,  # IGNORE (-100) on the prompt, as forgetlab encodes it
        }
    )


def sampling_args() -> dict:
    """transformers 5 renamed `group_by_length=True` to `train_sampling_strategy=...`."""
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def fused_optim() -> str:
    names = {o.value for o in transformers.training_args.OptimizerNames}
    return "adamw_torch_fused" if "adamw_torch_fused" in names else "adamw_torch"


def trainer_model(setup: Setup, seed: int):
    transformers.set_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        resolve_model_path(MODEL), dtype=torch.float32, attn_implementation=ATTN
    )
    if setup.method == "lora":
        config = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM, bias="none", target_modules="all-linear", **LORA
        )
        model = peft.get_peft_model(model, config)
    return model


def run_trainer(setup: Setup, dataset, seed: int, out_dir: str) -> Run:
    args = transformers.TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        learning_rate=LR[setup.method],
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP_STEPS,
        optim=fused_optim(),
        bf16=True,
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
    collator = CountingCollator(setup.tokenizer)
    trainer = transformers.Trainer(
        model=trainer_model(setup, seed),
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=setup.tokenizer,
    )
    trainer.remove_callback(transformers.PrinterCallback)  # its final metrics dict
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    assert steps == -(-len(dataset) // BATCH_SIZE), steps
    return Run(seconds, len(dataset), collator.tokens, collator.padded)


def check_same_job(setup: Setup) -> str:
    """Both sides train the same parameters (LoRA: the same layers at the same rank)."""
    ours, _, _ = ours_model(setup, 0)
    theirs = trainer_model(setup, 0)
    a, total = count_parameters(ours)
    b = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert a == b, f"trainable parameters differ: forgetlab {a:,}, Trainer {b:,}"
    return f"{a:,} of {total:,} parameters trainable on both sides"


# --------------------------------------------------------------------------------------
# measurement and report


def row(method: str, label: str, runs: list[Run]) -> str:
    tok = spread([r.tokens_per_s for r in runs])
    ex = spread([r.examples_per_s for r in runs])
    cells = statistics.median(r.padded / r.seconds for r in runs)
    pad = 100 * (1 - sum(r.tokens for r in runs) / sum(r.padded for r in runs))
    secs = statistics.median(r.seconds for r in runs)
    return f"{method:5s} {label:10s} {tok:>24s} {ex:>18s} {cells:9.1f} {pad:6.1f} {secs:8.2f}"


def ratio_line(method: str, ours: list[Run], theirs: list[Run]) -> str:
    def med(runs: list[Run]) -> float:
        return statistics.median(r.tokens_per_s for r in runs)

    def best(runs: list[Run]) -> float:
        return max(r.tokens_per_s for r in runs)

    pairs = ", ".join(f"{o.tokens_per_s / t.tokens_per_s:.2f}" for o, t in zip(ours, theirs))
    return (
        f"{method:5s} ratio ours/trainer (tokens/s): {med(ours) / med(theirs):.2f} (medians), "
        f"{best(ours) / best(theirs):.2f} (best runs); per pair {pairs}"
    )


HEADER = (
    f"{'':5s} {'setup':10s} {'tokens/s med [min-max]':>24s} {'examples/s':>18s} "
    f"{'cells/s':>9s} {'pad %':>6s} {'median s':>8s}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=48, help="GSM8K training examples (1 epoch)")
    p.add_argument("--method", choices=("full", "lora", "both"), default="lora")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side and method")
    p.add_argument("--max-length", type=int, default=384, help="model.max_length")
    p.add_argument(
        "--warmup-examples", type=int, default=8, help="untimed warm-up run per side (0: none)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    return p.parse_args(argv)


def bench_method(method: str, args: argparse.Namespace, tmp: str) -> list[str]:
    setup = make_setup(method, args.examples, args.max_length, tmp)
    split = setup.task.train
    dataset = hf_dataset(split)
    n_tokens = sum(split.lengths)
    n_labels = sum(sum(t != IGNORE for t in row) for row in split.labels)
    print(
        f"\n{method}: gsm8k, {len(split)} examples, {n_tokens} real tokens "
        f"({n_tokens / len(split):.1f}/example, {n_labels} of them answer tokens with a loss), "
        f"{-(-len(split) // BATCH_SIZE)} steps; {check_same_job(setup)}",
        flush=True,
    )
    if args.warmup_examples > 0:  # first-call costs (oneDNN kernels, allocator growth)
        n = min(args.warmup_examples, len(split))
        run_ours(setup, first_n(split, n), seed=0)
        run_trainer(setup, dataset.select(range(n)), 0, tmp)
        print(f"  warm-up done ({n} examples each)", flush=True)
    ours, theirs = interleave(
        lambda seed: run_ours(setup, split, seed),
        lambda seed: run_trainer(setup, dataset, seed, tmp),
        args.repeats,
        lambda r: f"{r.seconds:7.2f} s {r.tokens_per_s:6.1f} tokens/s",
    )
    for r in ours + theirs:  # the same job: every real token trained once on both sides
        assert r.tokens == n_tokens, (r.tokens, n_tokens)
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
    print(machine())
    print(
        f"model: {MODEL} (SmolLM2-135M-Instruct), fp32 weights, {ATTN} attention; "
        f"optimizer: forgetlab: the AdamW train_stage builds (fused); "
        f"Trainer: optim={fused_optim()}"
    )
    print(
        f"setting: batch {BATCH_SIZE}, 1 epoch, bf16 autocast, AdamW wd {WEIGHT_DECAY}, "
        f"linear schedule, warmup {WARMUP_STEPS} step, clip {MAX_GRAD_NORM}, dynamic padding + "
        f"length grouping, LoRA r={LORA['r']} alpha={LORA['lora_alpha']} on all linear layers, "
        f"{args.repeats} repeats interleaved"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="forgetlab-lm-bench-") as tmp:
        for method in methods:
            rows += bench_method(method, args, tmp)
    print("\n" + HEADER)
    print("\n".join(rows))
    print(f"load avg at the end: {load_average():.2f}")


if __name__ == "__main__":
    main()
