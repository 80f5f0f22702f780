"""What a whole "Learning Rate Matters" study costs: a 2-method slice of its grid run three ways,
and the study's hours extrapolated from it.

The study (issue 14, goal 7): 7 methods x 13 rates x 2 seeds on MiniLM, 2,000 SST-2 examples,
3 epochs: 182 trials. The slice: full FT and LoRA x `--rates` rates x 1 seed, on `--examples`
SST-2 examples for `--epochs` epochs, as the real command line, each side into its own fresh
sweep directory, wall time from start to exit (process start, model loads, evaluation, the
study included):

- `--workers 1`: one trial after another, in the sweep's own process;
- `--workers 2`: two worker processes, one thread each;
- `--workers 2` + `sweep.stack: R`: each worker asks for R grid points and trains those that
  stack (a method's rates) as one stacked model.

Extrapolation (printed): a trial's seconds on the slice, times 182 trials, times the study's
examples x epochs over the slice's — the whole per-trial time scaled, loading and evaluation
included, so an upper bound — with any of the study's methods that cannot stack (none since
DoRA stacks; forgetlab's `stackable` methods decide) at the unstacked side's rate.

    python benchmarks/study_cost.py [--rates 4] [--examples 500] [--epochs 1]
                                    [--dropout-masks torch|bits]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import load_average, machine, timed_sweep

from forgetlab.recipe.stacked.run import stackable_methods

STUDY_TRIALS = 7 * 13 * 2
STUDY_EXAMPLES = 2000 * 3  # examples x epochs per trial
STUDY_METHODS = ("full", "lora", "pissa", "olora", "dora", "milora", "rslora")
# of the study's 7 methods, those whose class declares `stackable` (all 7 since DoRA stacks;
# 3 when the first README figures were measured)
STACKABLE = sum(m in stackable_methods() for m in STUDY_METHODS)


def sweep_config(
    out: Path, rates: int, examples: int, epochs: int, stack: int, masks: str = "torch"
) -> dict:
    lora = [round(1e-4 * 3**k, 8) for k in range(rates)]
    full = [round(1e-5 * 3**k, 8) for k in range(rates)]
    return {
        "name": "study-slice",
        "tasks": ["sst2"],
        "model": {"name": "packaged:minilm", "max_length": 64, "pooling": "mean"},
        "data": {"max_train_examples": examples, "max_eval_examples": 300},
        "method": {"name": "lora"},
        "training": {"epochs": epochs, "batch_size": 16, "warmup_ratio": 0.1,
                     "mixed_precision": "bf16", "dropout_masks": masks},
        "output": {"dir": str(out), "store": str(out / "store.sqlite"), "checkpoints": "none"},
        "sweep": {"methods": ["full", "lora"], "space": {"training.lr": lora},
                  "per_method": {"full": {"training.lr": full}}, "seeds": [1],
                  "objectives": ["learning"], "pruner": "none", "stack": stack},
    }  # fmt: skip


def one_sweep(workdir: Path, label: str, workers: int, stack: int, args) -> dict:
    raw = sweep_config(
        workdir / label, args.rates, args.examples, args.epochs, stack, args.dropout_masks
    )
    wall, complete = timed_sweep(raw, workdir / f"{label}.yaml", workers)
    return {"label": label, "wall_s": wall, "trials": complete}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=int, default=4, help="rates per method")
    p.add_argument("--examples", type=int, default=500, help="SST-2 training examples")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dropout-masks", choices=("torch", "bits"), default="torch",
                   help="the trials' training.dropout_masks")  # fmt: skip
    args = p.parse_args()
    print(machine())
    n = 2 * args.rates
    print(f"slice: full + LoRA x {args.rates} rates x 1 seed = {n} trials, "
          f"{args.examples} SST-2 examples x {args.epochs} epoch(s), "
          f"dropout masks {args.dropout_masks}")  # fmt: skip
    sides = [("workers 1", 1, 1), ("workers 2", 2, 1), (f"workers 2 + stack {args.rates}", 2,
             args.rates)]  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory(prefix="study-cost-") as tmp:
        for label, workers, stack in sides:
            r = one_sweep(Path(tmp), label.replace(" ", "-").replace("+", ""), workers, stack, args)
            if r["trials"] != n:
                raise SystemExit(f"{label}: {r['trials']} of {n} trials completed")
            results[label] = r
            print(f"  {label}: {r['wall_s']:.1f} s (load avg {load_average():.1f})", flush=True)
    scale = STUDY_TRIALS * STUDY_EXAMPLES / (args.examples * args.epochs) / 3600
    plain = results["workers 2"]["wall_s"] / n
    print(f"\n{'side':22s}{'slice s':>9s}{'s/trial':>9s}{'ratio':>7s}{'study h (extrap.)':>19s}")
    base = results["workers 1"]["wall_s"]
    for label, r in results.items():
        per_trial = r["wall_s"] / n
        stacked_share = STACKABLE / len(STUDY_METHODS) if "stack" in label else 1.0
        hours = scale * (stacked_share * per_trial + (1 - stacked_share) * plain)
        print(f"{label:22s}{r['wall_s']:9.1f}{per_trial:9.2f}{base / r['wall_s']:6.2f}x"
              f"{hours:19.2f}")  # fmt: skip
    print("goal: <= 1 h for the whole study (7 methods x 13 rates x 2 seeds, 2,000 x 3 epochs)")


if __name__ == "__main__":
    main()
