"""What a whole "Learning Rate Matters" study costs: a slice of its grid with the study's own
method mix, run three ways, and the study's hours extrapolated from it.

The study (issue 14, goal 7): 7 methods x 13 rates x 2 seeds on MiniLM, 2,000 SST-2 examples,
3 epochs: 182 trials. The slice: the same 7 methods (`--methods`) x `--rates` rates x 1 seed,
on `--examples` SST-2 examples for `--epochs` epochs, as the real command line, each side into
its own fresh sweep directory, wall time from start to exit (process start, model loads, the
methods' own inits such as PiSSA's SVD, evaluation, the study included):

- `--workers 1`: one trial after another, in the sweep's own process;
- `--workers 2`: two worker processes, one thread each;
- `--workers 2` + `sweep.stack: R`: each worker asks for R grid points and trains those that
  stack (a method's rates) as one stacked model; a method that cannot stack trains alone.

Why the study's methods and not two: full FT trains at about 0.6x LoRA's examples/s and DoRA
slower than LoRA, so a full + LoRA slice (half of it full FT) weighs full FT 3.5x more than the
study does (1 method in 7) and says nothing of DoRA. With every method at the same number of
rates, the slice's mean seconds per trial is the study's.

Extrapolation (printed), two ways:

- *scaled* (an upper bound): a trial's seconds on the slice, times 182 trials, times the
  study's examples x epochs over the slice's: loading and evaluation scaled with training;
- *fitted* (with two `--examples` sizes): each side's seconds per trial as a line a + b n
  through the two sizes (n: examples x epochs), taken at the study's n = 6,000, times 182
  trials: the fixed part a (process, model loads, evaluation on `--eval-examples`, 872 as the
  study's) counted once per trial, the part b n that grows with training at its measured rate.

    python benchmarks/study_cost.py [--methods full lora ...] [--rates 2]
                                    [--examples 500 [1500]] [--epochs 1]
                                    [--eval-examples 872] [--dropout-masks torch|bits]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import load_average, machine, timed_sweep

from forgetlab.methods import METHODS
from forgetlab.recipe.stacked.run import stackable_methods

STUDY_TRIALS = 7 * 13 * 2
STUDY_EXAMPLES = 2000 * 3  # examples x epochs per trial
STUDY_METHODS = ("full", "lora", "pissa", "olora", "dora", "milora", "rslora")


def sweep_config(
    out: Path,
    methods: list[str],
    rates: int,
    examples: int,
    epochs: int,
    stack: int,
    masks: str = "torch",
    eval_examples: int = 300,
) -> dict:
    lora = [round(1e-4 * 3**k, 8) for k in range(rates)]
    full = [round(1e-5 * 3**k, 8) for k in range(rates)]
    return {
        "name": "study-slice",
        "tasks": ["sst2"],
        "model": {"name": "packaged:minilm", "max_length": 64, "pooling": "mean"},
        "data": {"max_train_examples": examples, "max_eval_examples": eval_examples},
        "method": {"name": "lora"},
        "training": {"epochs": epochs, "batch_size": 16, "warmup_ratio": 0.1,
                     "mixed_precision": "bf16", "dropout_masks": masks},
        "output": {"dir": str(out), "store": str(out / "store.sqlite"), "checkpoints": "none"},
        "sweep": {"methods": list(methods), "space": {"training.lr": lora},
                  "per_method": {"full": {"training.lr": full}} if "full" in methods else {},
                  "seeds": [1],
                  "objectives": ["learning"], "pruner": "none", "stack": stack},
    }  # fmt: skip


def one_sweep(workdir: Path, label: str, workers: int, stack: int, examples: int, args) -> dict:
    raw = sweep_config(workdir / label, args.methods, args.rates, examples, args.epochs, stack,
                       args.dropout_masks, args.eval_examples)  # fmt: skip
    wall, complete = timed_sweep(raw, workdir / f"{label}.yaml", workers)
    return {"label": label, "wall_s": wall, "trials": complete}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(STUDY_METHODS),
                   help="the slice's methods (default: the study's 7)")  # fmt: skip
    p.add_argument("--rates", type=int, default=2, help="rates per method")
    p.add_argument(
        "--examples",
        type=int,
        nargs="+",
        default=[500],
        help="SST-2 training examples; two sizes: the fitted extrapolation too",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--eval-examples",
        type=int,
        default=300,
        help="SST-2 dev sentences scored per trial (the study: 872)",
    )
    p.add_argument("--dropout-masks", choices=("torch", "bits"), default="torch",
                   help="the trials' training.dropout_masks")  # fmt: skip
    args = p.parse_args()
    if len(args.examples) > 2:
        raise SystemExit("--examples: one size, or two for the fitted extrapolation")
    if args.rates < 1:
        raise SystemExit(f"--rates {args.rates}: at least one rate per method")
    if unknown := sorted(set(args.methods) - set(METHODS)):
        raise SystemExit(f"--methods: {unknown[0]!r} is not a method ({', '.join(METHODS)})")
    print(machine())
    n = len(args.methods) * args.rates
    alone = [m for m in args.methods if m not in stackable_methods()]
    print(f"slice: {' + '.join(args.methods)} x {args.rates} rates x 1 seed = {n} trials, "
          f"{' and '.join(map(str, args.examples))} SST-2 examples x {args.epochs} epoch(s), "
          f"{args.eval_examples} scored, dropout masks {args.dropout_masks}")  # fmt: skip
    if alone:
        print(f"not stackable, so trained alone on the stack side: {', '.join(alone)}")
    if sorted(args.methods) != sorted(STUDY_METHODS):
        print("note: not the study's methods, so the hours below are those of a study of these")
    sides = [("workers 1", 1, 1), ("workers 2", 2, 1), (f"workers 2 + stack {args.rates}", 2,
             args.rates)]  # fmt: skip
    walls: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    with tempfile.TemporaryDirectory(prefix="study-cost-") as tmp:
        for examples in args.examples:
            for label, workers, stack in sides:
                tag = f"{label.replace(' ', '-').replace('+', '')}-{examples}"
                r = one_sweep(Path(tmp), tag, workers, stack, examples, args)
                if r["trials"] != n:
                    raise SystemExit(f"{label}: {r['trials']} of {n} trials completed")
                walls[label].append(r["wall_s"])
                print(f"  {label}, {examples} examples: {r['wall_s']:.1f} s "
                      f"(load avg {load_average():.1f})", flush=True)  # fmt: skip
    sizes = [e * args.epochs for e in args.examples]
    fitted = len(sizes) == 2
    print(f"\n{'side':22s}{'slice s':>16s}{'s/trial':>16s}{'ratio':>7s}"
          f"{'study h scaled':>16s}{'study h fitted' if fitted else '':>16s}")  # fmt: skip
    base = walls["workers 1"][0]
    for label, wall in walls.items():
        # the slice's methods in the study's proportions: its mean trial is the study's
        per_trial = [w / n for w in wall]
        scaled = STUDY_TRIALS * per_trial[0] * STUDY_EXAMPLES / sizes[0] / 3600
        line = (f"{label:22s}{' / '.join(f'{w:.1f}' for w in wall):>16s}"
                f"{' / '.join(f'{t:.2f}' for t in per_trial):>16s}{base / wall[0]:6.2f}x"
                f"{scaled:16.2f}")  # fmt: skip
        if fitted:
            slope = (per_trial[1] - per_trial[0]) / (sizes[1] - sizes[0])
            fixed = per_trial[0] - slope * sizes[0]
            line += f"{STUDY_TRIALS * (fixed + slope * STUDY_EXAMPLES) / 3600:16.2f}"
            line += f"   (a {fixed:.2f} s + {slope * 1e3:.2f} ms/example)"
        print(line)
    print("goal: <= 1 h for the whole study (7 methods x 13 rates x 2 seeds, 2,000 x 3 epochs)")


if __name__ == "__main__":
    main()
