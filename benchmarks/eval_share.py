"""Evaluation's share of training time in a whole run: the quickstart's setting, scaled down.

A run scores every task after every stage (and the base model first), so evaluation grows
with tasks x stages while training grows with the examples trained. This runs the quickstart
(packaged MiniLM, full fine-tuning, RTE -> MRPC -> CoLA -> SST-2, 3 epochs, batch 16) with
N training and N/4 eval examples per task (the quickstart's 2,000 / 500 ratio), once per
variant, and prints each stage's eval_s / train_s (from the run's metrics.json) and the whole
run's, where evaluation counts the base row too. Variants come in pairs, the code's behaviour
before a change and with it:

- fp32 training: `eval.dtype: auto` (scoring in fp32, as the training) against
  `eval.dtype: bf16` (bf16 autocast inference); the two train the same weights (scoring draws
  no random numbers), so the difference of their matrices is bf16's effect on the scores;
- bf16 training (the quickstart's): `eval.batch_size` 64 (the default) against
  `--eval-batch` (256).

Every eval batch is length-sorted already (`kinds/batches.eval_batches`). A run's tasks score
different inputs, so one backbone pass shared by heads that score the same inputs does not
apply here.

    python benchmarks/eval_share.py [--examples 300] [--pair fp32|bf16|both]
                                     [--eval-batch 256] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from common import load_average, machine, quiet

import forgetlab

TASKS = ["rte", "mrpc", "cola", "sst2"]
# (label, overrides): pairs of (before, with the change)
PAIRS = [
    (
        "fp32 training",
        ("eval fp32 (auto)", {"training": {"mixed_precision": "no"}}),
        ("eval bf16", {"training": {"mixed_precision": "no"}, "eval": {"dtype": "bf16"}}),
    ),
    (
        "bf16 training",
        ("eval batch 64", {"training": {"mixed_precision": "bf16"}}),
        ("eval batch {n}", {"training": {"mixed_precision": "bf16"}, "eval": {"batch_size": 0}}),
    ),
]


def config(examples: int, out: str, extra: dict) -> dict:
    raw = {
        "name": "eval-share",
        "model": {"name": "packaged:minilm", "max_length": 128, "pooling": "mean"},
        "tasks": TASKS,
        "data": {"max_train_examples": examples, "max_eval_examples": max(1, examples // 4)},
        "method": {"name": "full"},
        "heads": "per_task",
        "training": {
            "lr": 5e-5,
            "epochs": 3,
            "batch_size": 16,
            "warmup_ratio": 0.1,
            "weight_decay": 0.01,
            "device": "cpu",
            "progress_bar": False,
        },  # fmt: skip
        "eval": {},
        "seeds": [1],
        "output": {"dir": out, "store": f"{out}.sqlite", "checkpoints": "none"},
    }
    for section, keys in extra.items():
        raw[section].update(keys)
    return raw


def one_run(examples: int, tmp: str, name: str, extra: dict) -> dict:
    out = f"{tmp}/{name.replace(' ', '-')}"
    result = forgetlab.run(forgetlab.load_config(raw=config(examples, out, extra)))
    return result.seed_metrics[1]


def shares(metrics: dict) -> tuple[list[float], float, dict]:
    stages = metrics["stages"]
    timing = metrics["timing"]
    return [s["eval_s"] / s["train_s"] for s in stages], timing["eval_share"], timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="training examples per task")
    parser.add_argument("--pair", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--eval-batch", type=int, default=256, help="bf16 pair: against 64")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    print(machine())
    print(
        f"quickstart setting: {len(TASKS)} tasks x {args.examples} training / "
        f"{args.examples // 4} eval examples, 3 epochs, full fine-tuning"
    )
    header = f"{'variant':34s}" + "".join(f"{t:>8s}" for t in TASKS) + f"{'run':>8s}"
    lines = ["", "eval_s / train_s per stage and for the whole run (base row included)", header]
    with tempfile.TemporaryDirectory(prefix="eval-share-") as tmp:
        for label, before, after in PAIRS:
            if args.pair not in ("both", label.split()[0]):
                continue
            got = []
            if label.startswith("bf16"):  # the batch size to compare with the default 64
                after = (
                    after[0].format(n=args.eval_batch),
                    {**after[1], "eval": {"batch_size": args.eval_batch}},
                )
            for name, extra in (before, after):
                metrics = one_run(args.examples, tmp, f"{label} {name}", extra)
                per_stage, overall, timing = shares(metrics)
                got.append((per_stage, overall, np.array(metrics["accuracy_matrix"])))
                print(
                    f"  {label}, {name}: train {timing['train_s']:.1f} s, eval "
                    f"{timing['eval_s']:.1f} s (load avg {load_average():.1f})",
                    flush=True,
                )
                lines.append(
                    f"{label + ', ' + name:34s}"
                    + "".join(f"{100 * s:7.1f}%" for s in per_stage)
                    + f"{100 * overall:7.1f}%"
                )
            (_, a, ra), (_, b, rb) = got
            lines.append(
                f"  -> share {100 * a:.1f}% -> {100 * b:.1f}% ({a / b:.2f}x less evaluation "
                f"per training second); max |score change| {np.abs(ra - rb).max():.4f}"
            )
    print("\n".join(lines))
    print("goal: evaluation <= 15% of training time for a whole run")


if __name__ == "__main__":
    main()
