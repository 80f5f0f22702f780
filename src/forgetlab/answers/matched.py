"""Forgetting at matched learning: per method, forgetting fitted as a non-decreasing function
of learning across its points (isotonic regression on the points' means over seeds), with
bootstrap CIs over seeds, compared between methods at learning levels both reach.

A method reaches a level when it lies within [its lowest, its highest] mean learning; the fit
interpolates linearly between its points there and is never extrapolated beyond them.

Past the peak: a point at a learning rate above the best of its series (the method's points
that differ only in `training.lr`) that learns less *and* forgets more than that best is left
out of the fit, and listed. Training there no longer trades learning for forgetting — the rate
broke it — and isotonic regression would pool such a point (low learning, high forgetting)
with every point above it: one diverged rate read as the method forgetting more at every
level. Decided once on the points' means, before the bootstrap.

Bootstrap: each replicate resamples, within every point, that point's seeds with replacement
(a seed's learning and forgetting together), recomputes the means, refits, and predicts at
the levels; a replicate whose resampled range misses a level gives nothing there. The CI is
the 2.5–97.5 percentile of the replicates that reach it. Each method draws from its own
generator seeded with `seed`, so its CI does not depend on which other methods are compared.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from forgetlab.answers.best import by_method
from forgetlab.answers.points import Point

RESAMPLES = 1000
RATE_KEY = "training.lr"  # the series along which a point can be past its peak
# Two methods "span enough learning levels" for `compare` to print this unasked when each has
# at least MIN_POINTS points of distinct learning and their ranges overlap by MIN_SPAN.
MIN_POINTS = 2
MIN_SPAN = 0.02
N_LEVELS = 5


@dataclass(frozen=True)
class Fit:
    """A fitted non-decreasing curve: knots (learning, forgetting), linear between them."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, levels: Sequence[float]) -> np.ndarray:
        """Forgetting at `levels`; NaN outside [lowest, highest] learning (not reached)."""
        at = np.asarray(levels, float)
        inside = (at >= self.x[0]) & (at <= self.x[-1])
        return np.where(inside, np.interp(at, self.x, self.y), np.nan)


def isotonic_fit(learning: Sequence[float], forgetting: Sequence[float]) -> Fit:
    """Forgetting as a non-decreasing function of learning (pool-adjacent-violators; points of
    equal learning are averaged)."""
    x, y = np.asarray(learning, float), np.asarray(forgetting, float)
    if len(np.unique(x)) == 1:  # one learning level: its mean, nowhere else
        return Fit(x[:1], np.array([y.mean()]))
    fit = IsotonicRegression(increasing=True).fit(x, y)
    return Fit(fit.X_thresholds_, fit.y_thresholds_)


def past_peak(group: Sequence[Point], rate_key: str = RATE_KEY) -> list[Point]:
    """The points of one method past their series' peak along `rate_key` (see the module's
    docstring)."""
    series: dict[tuple, list[Point]] = {}
    for p in group:
        if isinstance(p.config.get(rate_key), (int, float)) and p.complete():
            others = tuple(sorted((k, repr(v)) for k, v in p.settings.items() if k != rate_key))
            series.setdefault(others, []).append(p)
    out = []
    for members in series.values():
        peak = max(members, key=lambda p: p.mean("learning"))
        learn, forget, rate = peak.mean("learning"), peak.mean("forgetting"), peak.config[rate_key]
        out += [
            p
            for p in members
            if p.config[rate_key] > rate
            and p.mean("learning") < learn
            and p.mean("forgetting") > forget
        ]
    return out


def fitted_groups(
    points: Sequence[Point], rate_key: str = RATE_KEY
) -> dict[str, tuple[list[Point], list[Point]]]:
    """Per method: (the points the fit uses, the points left out past their peak)."""
    out = {}
    for method, group in by_method(points).items():
        left = past_peak(group, rate_key)
        out[method] = ([p for p in group if all(p is not q for q in left)], left)
    return out


def _arrays(group: Sequence[Point]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(p.learning, float), np.asarray(p.forgetting, float)) for p in group]


def bootstrap_predictions(
    group: Sequence[Point], levels: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """(resamples, len(levels)) forgetting predictions, one row per replicate (NaN where that
    replicate's fit does not reach the level)."""
    rng = np.random.default_rng(seed)
    # (resamples, points) resampled means; a seed's learning and forgetting drawn together
    xs = np.empty((resamples, len(group)))
    ys = np.empty((resamples, len(group)))
    for i, (learn, forget) in enumerate(_arrays(group)):
        idx = rng.integers(0, len(learn), (resamples, len(learn)))
        xs[:, i], ys[:, i] = learn[idx].mean(axis=1), forget[idx].mean(axis=1)
    return np.array([isotonic_fit(x, y)(levels) for x, y in zip(xs, ys)]).reshape(
        resamples, len(levels)
    )


def _interval(replicates: np.ndarray) -> list[float] | None:
    kept = replicates[np.isfinite(replicates)]
    return None if kept.size == 0 else [float(v) for v in np.percentile(kept, [2.5, 97.5])]


def _range(group: Sequence[Point]) -> tuple[float, float]:
    means = [p.mean("learning") for p in group]
    return min(means), max(means)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return max(a[0], b[0]), min(a[1], b[1])


def _distinct_levels(group: Sequence[Point]) -> int:
    return len({round(p.mean("learning"), 12) for p in group})


def spans_enough(
    points: Sequence[Point],
    min_points: int = MIN_POINTS,
    min_span: float = MIN_SPAN,
    rate_key: str = RATE_KEY,
) -> tuple[bool, str]:
    """Whether the points allow a comparison at matched learning: two methods, each with at
    least `min_points` points of distinct learning, whose learning ranges overlap by at least
    `min_span`. Returns (answer, why)."""
    return _spans_enough(_kept(fitted_groups(points, rate_key)), min_points, min_span)


def _kept(fitted: dict[str, tuple[list[Point], list[Point]]]) -> dict[str, list[Point]]:
    return {m: group for m, (group, _) in fitted.items()}


def _spans_enough(
    kept: dict[str, list[Point]], min_points: int = MIN_POINTS, min_span: float = MIN_SPAN
) -> tuple[bool, str]:
    groups = {m: g for m, g in kept.items() if _distinct_levels(g) >= min_points}
    if len(groups) < 2:
        return False, (
            f"fewer than two methods have {min_points} or more points of distinct learning"
        )
    pairs = itertools.combinations(groups.items(), 2)
    overlaps = [(ma, mb, _overlap(_range(a), _range(b))) for (ma, a), (mb, b) in pairs]
    width, ma, mb, (lo, hi) = max((o[1] - o[0], ma, mb, o) for ma, mb, o in overlaps)
    if width < min_span - 1e-12:  # float slack: 0.70 - 0.68 < 0.02 in binary
        return False, (
            f"no two methods' learning ranges overlap by {min_span:g} or more "
            f"(widest: {ma} and {mb}, {max(width, 0.0):.3g})"
        )
    return True, f"{ma} and {mb} both reach learning {lo:.3g} … {hi:.3g}"


def default_levels(
    points: Sequence[Point], n_levels: int = N_LEVELS, rate_key: str = RATE_KEY
) -> list[float]:
    """`n_levels` evenly spaced learning levels over the hull of the pairwise overlaps of the
    methods' learning ranges (over the hull of all ranges when no two overlap)."""
    return _default_levels(_kept(fitted_groups(points, rate_key)), n_levels)


def _default_levels(kept: dict[str, list[Point]], n_levels: int = N_LEVELS) -> list[float]:
    ranges = [_range(g) for g in kept.values()]
    overlaps = [o for a, b in itertools.combinations(ranges, 2) if (o := _overlap(a, b))[1] > o[0]]
    spans = overlaps or ranges
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    if hi <= lo:
        return [float(lo)]
    return [float(v) for v in np.linspace(lo, hi, n_levels)]


def matched_learning(
    points: Sequence[Point],
    levels: Sequence[float] | None = None,
    n_levels: int = N_LEVELS,
    resamples: int = RESAMPLES,
    seed: int = 0,
    rate_key: str = RATE_KEY,
) -> dict[str, Any]:
    """Forgetting of each method at each learning level, with bootstrap CIs, and the
    difference between every two methods at the levels both reach (points past their
    rate's peak left out: see the module's docstring)."""
    fitted = fitted_groups(points, rate_key)  # decided once: levels, fits and spans share it
    levels = list(levels) if levels is not None else _default_levels(_kept(fitted), n_levels)
    methods: dict[str, Any] = {}
    estimates: dict[str, np.ndarray] = {}
    replicates: dict[str, np.ndarray] = {}
    for method, (group, left_out) in fitted.items():
        x = [p.mean("learning") for p in group]
        y = [p.mean("forgetting") for p in group]
        fit = isotonic_fit(x, y)
        estimates[method] = fit(levels)
        replicates[method] = bootstrap_predictions(group, levels, resamples, seed)
        order = np.argsort(x, kind="stable")
        methods[method] = {
            "points": len(group),
            "range": list(_range(group)),
            "fit": [[x[i], float(fit([x[i]])[0])] for i in order],
            "min_seeds": min(len(p.seeds) for p in group),
            "past_peak": [p.label for p in left_out],
        }
    rows = []
    for k, level in enumerate(levels):
        for method in methods:
            value = estimates[method][k]
            reached = bool(np.isfinite(value))
            reps = replicates[method][:, k]
            rows.append(
                {
                    "level": level,
                    "method": method,
                    "reached": reached,
                    "forgetting": float(value) if reached else None,
                    "ci95": _interval(reps) if reached else None,
                    "replicates_reaching": int(np.isfinite(reps).sum()) if reached else 0,
                }
            )
    differences = []
    for k, level in enumerate(levels):
        for a, b in itertools.combinations(methods, 2):
            fa, fb = estimates[a][k], estimates[b][k]
            if not (np.isfinite(fa) and np.isfinite(fb)):
                continue
            differences.append(
                {
                    "level": level,
                    "a": a,
                    "b": b,
                    "difference": float(fa - fb),
                    "ci95": _interval(replicates[a][:, k] - replicates[b][:, k]),
                }
            )
    enough, why = _spans_enough(_kept(fitted))
    notes = []
    for method, m in methods.items():
        if m["past_peak"]:
            notes.append(
                f"{method}: left out of the fit, past its rate's peak (learns less and forgets "
                f"more than the best rate of its series): {', '.join(m['past_peak'])}"
            )
    if any(m["min_seeds"] < 2 for m in methods.values()):
        notes.append("a point with one seed has no spread to resample: its CI is 0 wide")
    return {
        "levels": levels,
        "resamples": resamples,
        "seed": seed,
        "spans_enough": enough,
        "why": why,
        "methods": methods,
        "rows": rows,
        "differences": differences,
        "notes": notes,
    }
