"""How many trials the predicted learning rate saves: on a finished full grid (a sweep
directory), the trials each strategy needs to get within 1 point (0.01) of the grid's best
learning metric, per method, using the grid's own results as the oracle (no new training).

- grid: the sweep's own rate grid, every value run (that is how a grid finds its best);
- predicted: `sampler: predicted` — the grid values nearest the predicted rate, `--around`
  each side (spec.search_values), run nearest first; "first within" is the trial at which
  one of them is within 1 point, the window is what the sampler runs in any case.

The prediction is lr_m = lr_ref · λ_ref / λ_m per definition (forgetlab.predict_lr), computed
here from the sweep's config (its sweep.yaml) unless --prediction gives a saved one (the JSON
of `forgetlab predict-lr --json`, or a sweep's predict_lr.json). The reference defaults to the
reference method at its swept best rate. The issue's goal: >= 4x fewer trials than a
4-per-decade grid. Methods where the window misses the best, or whose prediction lies outside the
grid, are listed with the ratio of the swept best to the predicted rate: where the
prediction fails. "grid 1st" is the grid's trial, low rate to high, at which it first comes
within 1 point (optimistic: a grid knows its best only once every value has run).

    python benchmarks/predict_lr.py SWEEP_DIR                      # λ_max computed here
    python benchmarks/predict_lr.py SWEEP_DIR --prediction pred.json --around 1
    python benchmarks/predict_lr.py SWEEP_DIR --reference lora=1e-3 --examples 16 --iters 8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import quiet

import forgetlab
from forgetlab.answers import load_points
from forgetlab.sweeps.result import trial_run_dirs
from forgetlab.sweeps.spec import RATE_KEY, search_values

TOLERANCE = 0.01
# a prediction more than this factor beyond the grid's ends is "outside the grid": its window
# is the grid's edge, found or not, and says little about the prediction
STEP_SLACK = 1.5


def curves(sweep_dir: Path) -> dict[str, dict[float, float]]:
    """Per method: rate -> the best mean learning at that rate (over the other swept keys)."""
    points = [
        p
        for p in load_points(trial_run_dirs(sweep_dir))
        if p.learning and None not in p.learning and isinstance(p.config.get(RATE_KEY), float)
    ]
    out: dict[str, dict[float, float]] = {}
    for p in points:
        rate, value = float(p.config[RATE_KEY]), p.mean("learning")
        curve = out.setdefault(p.method, {})
        curve[rate] = max(value, curve.get(rate, -math.inf))
    return {m: dict(sorted(c.items())) for m, c in out.items()}


def per_decade(rates: list[float]) -> float:
    """The grid's density: values per decade of rate."""
    span = math.log10(max(rates) / min(rates))
    return (len(rates) - 1) / span if span > 0 else float("nan")


def predicted_trials(curve: dict[float, float], rate: float, around: int) -> dict:
    """The window `predicted` runs around `rate` and the first of its trials within
    TOLERANCE of the curve's best (None: none of them is)."""
    best = max(curve.values())
    window = search_values(list(curve), rate, around)
    first = next(
        (k + 1 for k, v in enumerate(window) if curve[v] >= best - TOLERANCE - 1e-12), None
    )
    return {"window": len(window), "first_within": first, "found": max(curve[v] for v in window)}


def grid_first_within(curve: dict[float, float]) -> int:
    """Trials of the grid, run low to high, until one is within TOLERANCE (an optimistic
    count: a grid does not know it has found the best until it has run every value)."""
    best = max(curve.values())
    return next(k + 1 for k, v in enumerate(curve.values()) if v >= best - TOLERANCE - 1e-12)


def report(curves_: dict, prediction: dict, around: int) -> list[str]:
    methods = [m for m in prediction["methods"] if m in curves_]
    definitions = prediction["options"]["definitions"]
    ref = prediction["reference"]
    lines = [
        f"reference {ref['method']} at {ref['lr']:g}; tolerance {TOLERANCE} of the grid's best "
        f"learning; predicted: {2 * around + 1} grid values around the prediction",
        f"{'method':<10}{'grid':>6}{'/dec':>6}{'grid 1st':>9}{'best lr':>10}{'best':>7}  "
        + "".join(f"{d + ' lr':>14}{'1st/win':>9}" for d in definitions),
    ]
    totals = {d: [0, 0, 0] for d in definitions}  # window trials, methods found, grid trials
    failures = []
    for m in methods:
        curve = curves_[m]
        best_lr = max(curve, key=curve.get)
        cells = ""
        for d in definitions:
            rate = prediction["methods"][m]["predicted"][d]
            t = predicted_trials(curve, rate, around)
            first = "-" if t["first_within"] is None else str(t["first_within"])
            cells += f"{rate:>14.3g}{first + '/' + str(t['window']):>9}"
            totals[d][0] += t["window"]
            totals[d][1] += t["first_within"] is not None
            totals[d][2] += len(curve)
            if not min(curve) / STEP_SLACK <= rate <= max(curve) * STEP_SLACK:
                failures.append(
                    f"  {d}: {m} predicted {rate:.3g} is outside its grid "
                    f"({min(curve):.3g} … {max(curve):.3g}): the window sits at the grid's "
                    f"edge (swept best {best_lr:.3g}, x{best_lr / rate:.3g} the prediction)"
                )
            elif t["first_within"] is None:
                failures.append(
                    f"  {d}: {m} predicted {rate:.3g}, swept best {best_lr:.3g} "
                    f"(x{best_lr / rate:.3g}); the window's best {t['found']:.3f} vs "
                    f"{curve[best_lr]:.3f}"
                )
        lines.append(
            f"{m:<10}{len(curve):>6}{per_decade(list(curve)):>6.1f}{grid_first_within(curve):>9}"
            f"{best_lr:>10.3g}{curve[best_lr]:>7.3f}  {cells}"
        )
    lines.append("")
    for d, (window, found, grid) in totals.items():
        factor = grid / window if window else float("nan")
        goal = "meets" if factor >= 4 and found == len(methods) else "misses"
        lines.append(
            f"{d}: {window} trials vs the grid's {grid} ({factor:.1f}x fewer), within 1 point "
            f"for {found}/{len(methods)} methods: {goal} the goal (>= 4x fewer, every method)"
        )
    lines += ["where the prediction fails:", *(failures or ["  nowhere"])]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path, help="a finished grid sweep directory")
    p.add_argument("--prediction", type=Path, help="a saved prediction (JSON)")
    p.add_argument("--reference", help="METHOD=RATE (default: lora, else the first method, at "
                   "its swept best rate)")  # fmt: skip
    p.add_argument("--definition", default="module,trainable,warmup")
    p.add_argument("--around", type=int, default=2, help="grid values each side (default 2)")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--device")
    args = p.parse_args(argv)
    quiet()
    found = curves(args.sweep_dir)
    if not found:
        print(f"{args.sweep_dir}: no finished trial with a learning rate", file=sys.stderr)
        return 2
    if args.prediction:
        prediction = json.loads(args.prediction.read_text(encoding="utf-8"))
    else:
        ref_method = "lora" if "lora" in found else next(iter(found))
        curve = found[ref_method]
        reference = args.reference or f"{ref_method}={max(curve, key=curve.get)!r}"
        prediction = forgetlab.predict_lr(
            args.sweep_dir / "sweep.yaml",
            list(found),
            reference,
            definitions=args.definition,
            examples=args.examples,
            iters=args.iters,
            warmup_steps=args.warmup_steps,
            device=args.device,
        )
    print("\n".join(report(found, prediction, args.around)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
