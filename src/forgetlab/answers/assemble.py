"""All the answers for a set of finished runs in one JSON-able dict (what a sweep saves as
`<output.dir>/answers.json`), its tables in any format, and what `compare` prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forgetlab.answers import tables
from forgetlab.answers.best import TOLERANCE, best_table
from forgetlab.answers.frontier import frontier
from forgetlab.answers.matched import N_LEVELS, RESAMPLES, matched_learning
from forgetlab.answers.paired import find_point, paired_at_best, paired_test
from forgetlab.answers.points import NotComparable, Point, load_points
from forgetlab.atomic import atomic_write_json
from forgetlab.errors import ForgetlabError

ANSWERS_FILE = "answers.json"
SECTIONS = ("best", "frontier", "hypervolume", "matched", "paired", "pairs")


def _point_json(p: Point) -> dict[str, Any]:
    return {
        "run": p.run,
        "name": p.name,
        "method": p.method,
        "label": p.label,
        "settings": p.settings,
        "seeds": p.seeds,
        "learning": p.summary("learning"),
        "forgetting": p.summary("forgetting"),
    }


def _why_excluded(p: Point, learning: str, forgetting: str) -> str:
    if not p.seeds:
        return "no finished seed"
    missing = [m for m, v in ((learning, p.learning), (forgetting, p.forgetting)) if None in v]
    return f"{' and '.join(missing)} undefined for some seed (one task? no probes?)"


def answers(
    run_dirs: Sequence[str | Path],
    learning: str | None = None,
    forgetting: str | None = None,
    metric: str = "learning",
    reference: str | None = "lora",
    rate_key: str = "training.lr",
    tolerance: float = TOLERANCE,
    reference_point: tuple[float, float] | None = None,
    levels: Sequence[float] | None = None,
    n_levels: int = N_LEVELS,
    resamples: int = RESAMPLES,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Best setting per method, the frontier and hypervolumes, forgetting at matched learning
    and the paired tests, for finished run directories of one task sequence.

    `learning` / `forgetting` name the per-seed metrics (see forgetlab.answers.points);
    None: initial_acc and avg_forgetting, or — where no run has avg_forgetting (one trained
    task) but every seed has source_loss (a decoder's probes) — target_gain and source_loss;
    `metric` (learning or forgetting) picks each method's best point; `reference` is the
    method label gaps and paired tests are taken against; `pairs` names further (a, b) runs
    to test (by directory, run name or label). Runs without both metrics for every seed are
    listed under `excluded`. Raises ForgetlabError when no run is left.
    """
    if metric not in ("learning", "forgetting"):
        raise ForgetlabError(f"metric must be learning or forgetting, not {metric!r}")
    everything, learning, forgetting = _load(run_dirs, learning, forgetting)
    points = [p for p in everything if p.complete()]
    excluded = [
        {"run": p.run, "why": _why_excluded(p, learning, forgetting)}
        for p in everything
        if not p.complete()
    ]
    learned = [p for p in everything if p.seeds and None not in p.learning]
    one_task = forgetting != "source_loss" and all(set(p.forgetting) == {None} for p in learned)
    if not points and learned and one_task:
        # One task (or no probes for source_loss): nothing can be forgotten, and what is left
        # is the study's first question — each method at its own tuned rate.
        return _learning_only(learned, learning, forgetting, reference, rate_key, tolerance)
    if not points:
        raise NotComparable(
            f"no run has {learning} and {forgetting} for every seed: "
            + "; ".join(f"{e['run']}: {e['why']}" for e in excluded)
        )
    return {
        "learning": learning,
        "forgetting": forgetting,
        "swept": list(dict.fromkeys(k for p in points for k in p.settings)),
        "points": [_point_json(p) for p in points],
        "excluded": excluded,
        "best": best_table(points, metric, reference, rate_key, tolerance),
        "frontier": frontier(points, reference_point),
        "matched": matched_learning(points, levels, n_levels, resamples, seed, rate_key),
        "paired": paired_at_best(points, metric, reference),
        "pairs": [
            paired_test(find_point(points, a), find_point(points, b), which)
            for a, b in pairs
            for which in ("learning", "forgetting")
        ],
    }


def _learning_only(
    points: list, learning: str, forgetting: str, reference, rate_key: str, tolerance: float
) -> dict[str, Any]:
    why = f"{forgetting} is undefined for every run (one task: nothing to forget): learning only"
    return {
        "learning": learning,
        "forgetting": forgetting,
        "swept": list(dict.fromkeys(k for p in points for k in p.settings)),
        "points": [_point_json(p) for p in points],
        "excluded": [],
        "best": best_table(points, "learning", reference, rate_key, tolerance),
        "frontier": {"reference_point": None, "hypervolume": {}, "points": [], "note": why},
        "matched": {
            "levels": [],
            "resamples": 0,
            "seed": 0,
            "spans_enough": False,
            "why": why,
            "notes": [why],
            "methods": {},
            "rows": [],
            "differences": [],
        },
        "paired": [
            t for t in paired_at_best(points, "learning", reference) if t["metric"] == "learning"
        ],  # fmt: skip
        "pairs": [],
    }


def save_answers(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `answers()`'s result to <out_dir>/answers.json (atomically); returns the path."""
    path = Path(out_dir) / ANSWERS_FILE
    atomic_write_json(path, result)
    return path


def answer_tables(result: dict[str, Any], sections: Sequence[str] = SECTIONS) -> list:
    """The tables of `answers()`'s result, for the named sections (in SECTIONS order)."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ForgetlabError(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    best = tables.best_rows(result["best"], result["learning"], result["forgetting"])
    best.notes += [f"left out: {e['run']}: {e['why']}" for e in result["excluded"]]
    built = {
        "best": [best],
        "frontier": [tables.frontier_rows(result["frontier"])],
        "hypervolume": (
            [tables.hypervolume_rows(result["frontier"])]
            if result["frontier"]["reference_point"] is not None
            else []
        ),
        "matched": [
            tables.matched_rows(result["matched"]),
            tables.difference_rows(result["matched"]),
        ],
        "paired": [tables.paired_rows(result["paired"])],
        "pairs": [tables.paired_rows(result["pairs"], "pairs", "Paired tests between named runs")],
    }
    # a table with no rows (no level both methods reach, one method, no named pair): left out
    return [t for s in SECTIONS if s in sections for t in built[s] if t.rows]


def format_answers(
    result: dict[str, Any], fmt: str = "table", sections: Sequence[str] = SECTIONS
) -> str:
    """`answers()`'s result as table (plain text), markdown, csv or json tables."""
    return tables.render(answer_tables(result, sections), fmt)


def shown_sections(result: dict[str, Any]) -> list[str]:
    """The sections `forgetlab compare`, `forgetlab sweep` and the report show: forgetting at
    matched learning only where the runs span enough learning to match on (answers.json
    keeps it either way)."""
    return [s for s in SECTIONS if s != "matched" or result["matched"]["spans_enough"]]


def left_out_line(result: dict[str, Any]) -> str | None:
    """Why `shown_sections` leaves forgetting at matched learning out; None where it is shown."""
    matched = result["matched"]
    if matched["spans_enough"]:
        return None
    return (
        "Forgetting at matched learning: not shown, the runs do not span enough learning "
        f"levels ({matched['why']})"
    )


def format_shown(result: dict[str, Any], fmt: str = "table") -> str:
    """`format_answers` over `shown_sections`; in a table or markdown, the `left_out_line`
    after them, where there is one."""
    text = format_answers(result, fmt, shown_sections(result))
    if fmt in ("table", "markdown") and (line := left_out_line(result)) is not None:
        text += f"\n\n{line}"
    return text


def _load(
    run_dirs: Sequence[str | Path], learning: str | None, forgetting: str | None
) -> tuple[list, str, str]:
    """The points and the metrics they were read with (see `answers` for the defaults)."""
    chosen = (learning or "initial_acc", forgetting or "avg_forgetting")
    points = load_points(run_dirs, *chosen)
    if forgetting is None and not any(p.complete() for p in points):
        decoder = (learning or "target_gain", "source_loss")
        with_probes = load_points(run_dirs, *decoder)
        if any(p.complete() for p in with_probes):
            return with_probes, *decoder
    return points, *chosen


def compare_answers(run_dirs: Sequence[str | Path], fmt: str = "table", **options: Any) -> str:
    """What `forgetlab compare` prints after its table: the best setting per method, the
    frontier, the paired tests and — only when the runs span enough learning levels — the
    forgetting at matched learning. Empty for fewer than two runs; one line saying why where
    the runs cannot be answered together (e.g. different tasks). `options` go to answers()."""
    if len(run_dirs) < 2:
        return ""
    try:
        result = answers(run_dirs, **options)
    except NotComparable as e:
        return f"answers: none for these runs: {e}"
    return format_shown(result, fmt)
