"""The learning–forgetting frontier ("Learns Less, Forgets Less"): every point as (mean
learning, mean forgetting) over seeds, the non-dominated set overall and per method, and the
hypervolume each method's points dominate up to a stated reference point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forgetlab.answers.best import by_method
from forgetlab.answers.points import Point

Pair = tuple[float, float]  # (learning, forgetting)


def non_dominated(pairs: Sequence[Pair]) -> list[bool]:
    """Which (learning, forgetting) pairs no other pair dominates. q dominates p when q learns
    at least as much and forgets at most as much, one of the two strictly; equal pairs do not
    dominate each other, so both stay."""
    return [
        not any(
            lq >= lp and fq <= fp and (lq > lp or fq < fp)
            for k, (lq, fq) in enumerate(pairs)
            if k != i
        )
        for i, (lp, fp) in enumerate(pairs)
    ]


def hypervolume(pairs: Sequence[Pair], reference: Pair) -> float:
    """Area of the (learning, forgetting) region the pairs dominate, bounded by `reference`
    (learning no lower, forgetting no higher): the union of the rectangles
    [ref_learning, l] × [f, ref_forgetting]. A pair beyond the reference adds nothing."""
    ref_l, ref_f = reference
    inside = sorted(((lp, fp) for lp, fp in pairs if lp > ref_l and fp < ref_f), reverse=True)
    area, lowest_f = 0.0, ref_f
    # sweep learning downwards: between one pair's learning and the next, the dominated
    # forgetting range is [the lowest forgetting of the pairs seen so far, ref_forgetting]
    for k, (learning, forgetting) in enumerate(inside):
        lowest_f = min(lowest_f, forgetting)
        next_l = inside[k + 1][0] if k + 1 < len(inside) else ref_l
        area += (learning - next_l) * (ref_f - lowest_f)
    return area


def frontier(points: Sequence[Point], reference_point: Pair | None = None) -> dict[str, Any]:
    """Frontier flags per point and hypervolume per method.

    The default reference point is the worst learning and the worst forgetting over all the
    points (stated in the output): a method whose only point is the worst in either has
    hypervolume 0.
    """
    pairs = [(p.mean("learning"), p.mean("forgetting")) for p in points]
    if reference_point is None:
        reference_point = (min(lp for lp, _ in pairs), max(fp for _, fp in pairs))
        stated = "the worst learning and the worst forgetting over all points"
    else:
        stated = "given"
    overall = non_dominated(pairs)
    rows = [
        {
            "run": p.run,
            "label": p.label,
            "method": p.method,
            "settings": p.settings,
            "learning": learning,
            "forgetting": forgetting,
            "frontier": on,
            "method_frontier": False,
        }
        for p, (learning, forgetting), on in zip(points, pairs, overall)
    ]
    volumes = {}
    for method in by_method(points):
        mine = [i for i, p in enumerate(points) if p.method == method]
        for i, on in zip(mine, non_dominated([pairs[i] for i in mine])):
            rows[i]["method_frontier"] = on
        volumes[method] = hypervolume([pairs[i] for i in mine], reference_point)
    return {
        "reference_point": {
            "learning": reference_point[0],
            "forgetting": reference_point[1],
            "chosen": stated,
        },
        "points": rows,
        "hypervolume": volumes,
    }
