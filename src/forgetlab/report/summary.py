"""What the report computes from a run summary (metrics.json): each task's floor, the run's
point in the learning-vs-forgetting plane, the Pareto frontier, the source side (which
probes show forgetting, target gain against source loss)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forgetlab import metrics
from forgetlab.answers.frontier import non_dominated
from forgetlab.metrics import probe_is_source


def all_accuracy(summary: dict) -> bool:
    """Whether every task is scored by accuracy (encoder runs write no `metrics` at all)."""
    return all(m == "accuracy" for m in summary.get("metrics") or ["accuracy"])


def is_lm(summary: dict) -> bool:
    """A language-model run: probes, or scores other than accuracy (−NLL, exact match)."""
    return bool(summary.get("probes")) or not all_accuracy(summary)


def has_floorless(summary: dict) -> bool:
    """A task without a majority baseline (−NLL): compared with the base model instead."""
    return any(m is None for m in summary["majority_baseline"])


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (forgetting, learning) points are on the Pareto frontier.

    Less forgetting and more learning are better: a point is on the frontier unless another
    point has forgetting <= and learning >= with at least one of the two strict. Equal points
    do not dominate each other, so both stay on the frontier.
    """
    return non_dominated([(g, f) for f, g in points])


@dataclass(frozen=True)
class RunPoint:
    """One run in the learning-vs-forgetting plane (ci = 95% CI half-width, None for 1 seed)."""

    label: str
    forgetting: float | None
    forgetting_ci: float | None
    learning: float
    learning_ci: float | None


def _mean_ci(aggregate: dict, key: str) -> tuple[float | None, float | None]:
    item = aggregate.get(key) or {}
    ci = item.get("ci95") if (item.get("n") or 0) > 1 else None
    return item.get("mean"), ci


def floors(summary: dict) -> np.ndarray:
    """What each task's score is compared with: its majority baseline (chance), or, for a
    score without one (−NLL of a language model), the base model's own score — so that
    "learning" is the gain over where the task started."""
    R = np.asarray(summary["accuracy_matrix"], float)
    return np.array(
        [R[0, j] if m is None else float(m) for j, m in enumerate(summary["majority_baseline"])]
    )


def target_gain(summary: dict) -> float:
    """Mean over tasks of R[j][j] minus its floor: the majority baseline, or (a score with
    none, e.g. −NLL) the base model's own score — what was learned."""
    return metrics.target_gain(summary["accuracy_matrix"], summary["majority_baseline"])


def run_point(summary: dict) -> RunPoint:
    """Learning = initial_acc − mean floor (above the majority baseline, or the gain over the
    base model where a score has no baseline); forgetting = avg_forgetting."""
    agg = summary.get("aggregate") or {}
    forgetting, f_ci = _mean_ci(agg, "avg_forgetting")
    initial, i_ci = _mean_ci(agg, "initial_acc")
    if initial is None:  # older summaries: recompute from the matrix diagonal
        R = np.asarray(summary["accuracy_matrix"], float)
        initial = float(np.mean([R[j + 1, j] for j in range(R.shape[1])]))
    learning = initial - float(np.mean(floors(summary)))
    label = f"{summary['name']} ({summary['method']})"
    return RunPoint(label, forgetting, f_ci, learning, i_ci)


def _plottable(p: RunPoint) -> bool:
    return p.forgetting is not None and math.isfinite(p.forgetting) and math.isfinite(p.learning)


def frontier_flags(points: list[RunPoint]) -> list[bool | None]:
    """Pareto flag per run; None where forgetting is undefined (a single task)."""
    shown = [p for p in points if _plottable(p)]
    flags = iter(pareto_frontier([(p.forgetting, p.learning) for p in shown]))
    return [next(flags) if _plottable(p) else None for p in points]


def std_matrix(summary: dict, shape: tuple[int, ...]) -> np.ndarray | None:
    """The std over seeds of R, or None for one seed (or a std that does not fit R)."""
    std = summary.get("accuracy_matrix_std")
    if std is None:
        return None
    std = np.asarray(std, float)  # null entries become NaN and print as "nan"
    return std if std.shape == shape else None


def probe_sources(summary: dict) -> list[bool]:
    """Which probes show what the base model could do, so that a drop is forgetting: the run's
    own `probe_source` where metrics.json has it; otherwise the runner's rule,
    `forgetlab.metrics.probe_is_source`, on the base model's scores: a probe the base model
    passed above chance, every neg_nll probe, and a probe without a chance level (exact
    match, pass@1) that the base model scores above 0."""
    probes = summary.get("probes") or []
    given = summary.get("probe_source")
    if isinstance(given, list) and len(given) == len(probes):
        return [bool(x) for x in given]
    above = summary.get("probe_base_above_chance") or [None] * len(probes)
    metrics = summary.get("probe_metrics") or [None] * len(probes)
    base = np.asarray(summary["probe_matrix"], float)[0]
    # metrics.json keeps only whether p < 0.05, which is all the rule reads of the p-value
    cells = [
        {"metric": m, "score": base[k], **({} if a is None else {"p_value": 0.0 if a else 1.0})}
        for k, (a, m) in enumerate(zip(above, metrics))
    ]
    return [bool(probe_is_source(cell)) for cell in cells]


def probe_changes(summary: dict) -> np.ndarray:
    """Final − base score per probe (mean over seeds), from metrics.json or the matrix."""
    change = summary.get("probe_change")
    if change is not None:
        return np.asarray(change, float)
    P = np.asarray(summary["probe_matrix"], float)
    return P[-1] - P[0]


def source_target_point(summary: dict) -> tuple[float, float | None]:
    """(target gain, source loss) of one run: "learns less, forgets less".

    target gain = mean over tasks of R[j][j] − floor_j (the majority baseline, or the base
    model's score where a task has none); source loss = −(mean final − base change of the
    probes in probe_sources), None without probes or without any such probe.
    """
    gain = target_gain(summary)
    if not summary.get("probes"):
        return gain, None
    used = [c for c, keep in zip(probe_changes(summary), probe_sources(summary)) if keep]
    return gain, (-float(np.mean(used)) if used else None)
