"""Each method at its own tuned setting ("Learning Rate Matters"): the best point per method,
its metric as mean ± 95% CI over seeds, the gap to a reference method, the window of rates
within `tolerance` of the peak, and a warning when the best sits on the edge of the grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forgetlab.answers.points import Point, format_value, swept_keys

# How far below the peak (learning) or above it (forgetting) a rate still counts as "at the
# peak": 1 point of accuracy.
TOLERANCE = 0.01
# float slack so that a value exactly `tolerance` from the peak is inside the window
EPS = 1e-12


def by_method(points: Sequence[Point]) -> dict[str, list[Point]]:
    """Points grouped by method label, in first-seen order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.method, []).append(p)
    return groups


def better(metric: str) -> int:
    """+1 where larger is better (learning), -1 where smaller is (forgetting)."""
    return 1 if metric == "learning" else -1


def best_point(points: Sequence[Point], metric: str) -> Point:
    """The point with the best mean metric; ties go to the first."""
    sign = better(metric)
    return max(points, key=lambda p: sign * p.mean(metric))


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _edges(method: str, group: list[Point], best: Point, keys: list[str]) -> list[str]:
    warnings = []
    for key in keys:
        values = [p.config.get(key) for p in group]
        if None in values or not _numeric(values):
            continue
        grid = sorted(set(values))
        value = best.config[key]
        if value not in (grid[0], grid[-1]):
            continue
        side = "lowest" if value == grid[0] else "highest"
        warnings.append(
            f"{method}: the best {key} = {format_value(value)} is the {side} of the "
            f"{len(grid)} values tried ({format_value(grid[0])} … {format_value(grid[-1])}): "
            "the grid was too narrow to show the peak; widen it"
        )
    return warnings


def _profile(group: list[Point], key: str, metric: str) -> dict[Any, Point] | None:
    """For each value of `key` (sorted), the point with the best metric there (over the other
    swept keys); None when `key` was not swept for this method."""
    values = [p.config.get(key) for p in group]
    if None in values or len(set(values)) < 2:
        return None
    sign = better(metric)
    best: dict[Any, Point] = {}
    for v, p in zip(values, group):
        if v not in best or sign * p.mean(metric) > sign * best[v].mean(metric):
            best[v] = p
    return {v: best[v] for v in sorted(best)}


def _window(profile: dict[Any, Point], key: str, metric: str, tolerance: float) -> dict:
    """The values of `key` whose best metric is within `tolerance` of the peak."""
    sign = better(metric)
    peak = max(sign * p.mean(metric) for p in profile.values())
    inside = [v for v, p in profile.items() if sign * p.mean(metric) >= peak - tolerance - EPS]
    return {"key": key, "values": inside, "lo": inside[0], "hi": inside[-1]}


def _curve(profile: dict[Any, Point], metric: str) -> list[dict[str, Any]]:
    """The metric against the rate (its best point at each value), mean ± CI: what the
    report draws with CI bands."""
    return [{"value": v, "run": p.run, **_stat(p, metric)} for v, p in profile.items()]


def _stat(p: Point, metric: str) -> dict[str, Any]:
    s = p.summary(metric)
    return {"mean": s["mean"], "ci95": s["ci95"], "n": s["n"]}


def best_table(
    points: Sequence[Point],
    metric: str = "learning",
    reference: str | None = "lora",
    rate_key: str = "training.lr",
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """One row per method at its best point (by `metric`, learning or forgetting).

    A row's `settings` are the best point's (see points.point_settings); `gap` is its
    metric minus the reference method's (None when no method is labelled `reference`);
    `window` is the `rate_key` values within `tolerance` of the peak and `curve` the metric
    (mean, ci95, n) at each `rate_key` value (both None when the rate was not swept for that
    method); `edge` lists a warning per swept numeric key whose best value
    is the smallest or largest tried.
    """
    rows = []
    for method, group in by_method(points).items():
        best = best_point(group, metric)
        keys = swept_keys(group)
        profile = _profile(group, rate_key, metric)
        rows.append(
            {
                "method": method,
                "points": len(group),
                "run": best.run,
                "name": best.name,
                "settings": best.settings,
                "seeds": best.seeds,
                "value": _stat(best, metric),
                "learning": _stat(best, "learning"),
                "forgetting": _stat(best, "forgetting"),
                "window": None
                if profile is None
                else _window(profile, rate_key, metric, tolerance),
                "curve": None if profile is None else _curve(profile, metric),
                "edge": _edges(method, group, best, keys),
            }
        )
    ref = next((r for r in rows if r["method"] == reference), None)
    for r in rows:
        r["gap"] = None if ref is None else r["value"]["mean"] - ref["value"]["mean"]
    notes = [w for r in rows for w in r["edge"]]
    if reference and ref is None:
        notes.append(f"no method is labelled {reference!r}: no gap column")
    return {
        "metric": metric,
        "reference": reference if ref is not None else None,
        "rate_key": rate_key,
        "tolerance": tolerance,
        "rows": rows,
        "notes": notes,
    }
