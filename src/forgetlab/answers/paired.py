"""Paired tests between two points over the seeds they share: a paired t-test and the
Wilcoxon signed-rank test (two-sided) on the per-seed differences a − b."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import ttest_rel, wilcoxon

from forgetlab.answers.best import best_point, by_method
from forgetlab.answers.points import Point
from forgetlab.errors import ForgetlabError

# Below this many common seeds the tests are weak: with n seeds the smallest two-sided
# Wilcoxon p is 2 / 2**n (0.0625 at n = 5).
WEAK_BELOW = 5
# Per-seed differences this close (relative) are the same difference.
SAME = 1e-9


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def paired_test(a: Point, b: Point, metric: str) -> dict[str, Any]:
    """Tests of `metric` (learning or forgetting) between a and b on their common seeds."""
    va, vb = a.per_seed(metric), b.per_seed(metric)
    seeds = [s for s in a.seeds if s in vb and va[s] is not None and vb[s] is not None]
    x = np.asarray([va[s] for s in seeds], float)
    y = np.asarray([vb[s] for s in seeds], float)
    n = len(seeds)
    row: dict[str, Any] = {
        "a": a.label,
        "b": b.label,
        "run_a": a.run,
        "run_b": b.run,
        "metric": metric,
        "seeds": seeds,
        "n": n,
        "mean_difference": float(np.mean(x - y)) if n else None,
        "t": None,
        "t_p": None,
        "wilcoxon": None,
        "wilcoxon_p": None,
        "notes": [],
    }
    if n < 2:
        row["notes"].append(f"{n} common seed(s): no test")
        return row
    if n < WEAK_BELOW:
        row["notes"].append(
            f"only {n} common seeds (< {WEAK_BELOW}): the tests are weak; the smallest "
            f"two-sided Wilcoxon p with {n} seeds is {2 / 2**n:.3g}"
        )
    d = x - y
    if np.all(d == 0):
        row["notes"].append("every seed's difference is 0: no test")
        return row
    with warnings.catch_warnings():  # near-constant differences: scipy warns, the answer stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t = ttest_rel(x, y)
        w = wilcoxon(x, y)
    row["wilcoxon"], row["wilcoxon_p"] = _finite(w.statistic), _finite(w.pvalue)
    # equal differences (up to float rounding: 0.8 − 0.7 vs 0.81 − 0.71) leave no spread
    # to divide by: t would be infinite or a rounding artefact of 1e15
    if np.ptp(d) <= SAME * max(1.0, float(np.max(np.abs(d)))):
        row["notes"].append("the differences are the same for every seed: t is undefined")
    else:
        row["t"], row["t_p"] = _finite(t.statistic), _finite(t.pvalue)
    return row


def find_point(points: Sequence[Point], name: str) -> Point:
    """The point whose run directory, run name or label is `name`."""
    found = [p for p in points if name in (p.run, p.name, p.label)]
    if len(found) != 1:
        what = "no run" if not found else f"{len(found)} runs"
        raise ForgetlabError(
            f"{what} named {name!r} among {', '.join(p.name for p in points)} "
            "(name a run by its directory, its name or its label)"
        )
    return found[0]


def paired_at_best(
    points: Sequence[Point], metric: str = "learning", reference: str | None = "lora"
) -> list[dict[str, Any]]:
    """At each method's best point (by `metric`): learning and forgetting tested against the
    reference method's best point, or between every two methods when no method is the
    reference."""
    best = {m: best_point(g, metric) for m, g in by_method(points).items()}
    if reference in best:
        pairs = [(m, reference) for m in best if m != reference]
    else:
        names = list(best)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [
        paired_test(best[a], best[b], which)
        for a, b in pairs
        for which in ("learning", "forgetting")
    ]
