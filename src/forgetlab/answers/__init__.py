"""Answers from many finished runs (a sweep's trials, a `variants:` comparison, runs made by
hand): each method at its tuned setting, the learning–forgetting frontier, forgetting at
matched learning, and paired tests between methods — with their tables.

    answers(run_dirs, ...) -> dict        everything, JSON-able (a sweep's answers.json)
    format_answers(result, fmt) -> str    its tables: table | markdown | csv | json
    format_shown(result, fmt) -> str      the tables compare, sweep and the report show
    compare_answers(run_dirs, fmt) -> str what `forgetlab compare` prints after its table
    save_answers(result, out_dir) -> Path <out_dir>/answers.json
"""

from forgetlab.answers.assemble import (
    answer_tables,
    answers,
    compare_answers,
    format_answers,
    format_shown,
    left_out_line,
    save_answers,
    shown_sections,
)
from forgetlab.answers.best import best_table
from forgetlab.answers.frontier import frontier, hypervolume, non_dominated
from forgetlab.answers.matched import matched_learning, spans_enough
from forgetlab.answers.paired import paired_at_best, paired_test
from forgetlab.answers.points import NotComparable, Point, load_points

__all__ = [
    "NotComparable",
    "Point",
    "answer_tables",
    "answers",
    "best_table",
    "compare_answers",
    "format_answers",
    "format_shown",
    "frontier",
    "hypervolume",
    "left_out_line",
    "load_points",
    "matched_learning",
    "non_dominated",
    "paired_at_best",
    "paired_test",
    "save_answers",
    "shown_sections",
    "spans_enough",
]
