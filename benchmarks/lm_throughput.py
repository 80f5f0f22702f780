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
import os
import statistics

import peft
import torch
import transformers
from common import load_average, machine, peak_rss_gib, spread
from trainer_comparison import (
    Run,
    Setup,
    bench_methods,
    make_setup,
    ours_model,
    pad_percent,
    race,
    ratio_line,
    start,
    timed_trainer_train,
    trainer_arguments,
    training_section,
)

from forgetlab.kinds.next_token import LMSplit
from forgetlab.kinds.scorers.nll import IGNORE
from forgetlab.methods.base import count_parameters
from forgetlab.models.loading import resolve_model_path

MODEL = "packaged:smollm2"
ATTN = "eager"  # forgetlab's default (model.attn_implementation); the Trainer side gets it too
BATCH_SIZE = 8
WEIGHT_DECAY = 0.0  # as configs/smollm2_math.yaml
MAX_GRAD_NORM = 1.0
WARMUP_STEPS = 1
# configs/smollm2_math.yaml's rates; speed does not depend on them.
LR = {"full": 2e-5, "lora": 2e-4}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


# --------------------------------------------------------------------------------------
# shared preparation (untimed)


def setup_for(method: str, examples: int, max_length: int, out_dir: str) -> Setup:
    # forgetlab's decoder default for target_modules: every linear layer but the output head
    method_section = {"name": method, **(LORA if method == "lora" else {})}
    raw = {
        "name": f"lm-throughput-{method}",
        "tasks": [{"name": "gsm8k", "max_train_examples": examples, "max_eval_examples": 1}],
        "model": {"name": MODEL, "max_length": max_length, "attn_implementation": ATTN},
        "method": method_section,
        "training": training_section(
            LR[method], BATCH_SIZE, WEIGHT_DECAY, MAX_GRAD_NORM, "bf16", warmup_steps=WARMUP_STEPS
        ),
        "output": {"dir": out_dir, "store": os.path.join(out_dir, "store.sqlite")},
    }
    return make_setup(method, raw)


def first_n(split: LMSplit, n: int) -> LMSplit:
    return LMSplit(split.input_ids[:n], split.labels[:n])


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
    args = trainer_arguments(
        setup, out_dir, seed, LR[setup.method], WEIGHT_DECAY, MAX_GRAD_NORM,
        warmup_steps=WARMUP_STEPS, optim=fused_optim(),
    )  # fmt: skip
    collator = CountingCollator(setup.tokenizer)
    seconds = timed_trainer_train(setup, trainer_model(setup, seed), args, dataset, collator)
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
    pad = pad_percent(runs)
    secs = statistics.median(r.seconds for r in runs)
    return f"{method:5s} {label:10s} {tok:>24s} {ex:>18s} {cells:9.1f} {pad:6.1f} {secs:8.2f}"


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
    setup = setup_for(method, args.examples, args.max_length, tmp)
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
    ours, theirs = race(
        setup,
        split,
        dataset,
        lambda data, seed: run_trainer(setup, data, seed, tmp),
        first_n,
        args.warmup_examples,
        args.repeats,
        lambda r: f"{r.seconds:7.2f} s {r.tokens_per_s:6.1f} tokens/s",
    )
    for r in ours + theirs:  # the same job: every real token trained once on both sides
        assert r.tokens == n_tokens, (r.tokens, n_tokens)
    return [
        row(method, "forgetlab", ours),
        row(method, "HF Trainer", theirs),
        ratio_line(method, ours, theirs, "tokens_per_s", " (tokens/s)"),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    methods = start(args)
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
    bench_methods(methods, bench_method, args, "forgetlab-lm-bench-", HEADER)
    print(f"load avg at the end: {load_average():.2f}")
    # both sides train in this one process, so this is the larger of the two trials' peaks
    print(f"peak RSS of the benchmark process: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
