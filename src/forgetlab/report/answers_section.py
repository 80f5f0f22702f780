"""The report's Answers section: `forgetlab.answers.answers()` over the report's runs (the
same numbers `forgetlab compare` prints) as HTML tables — best setting per method, the
frontier and hypervolumes, forgetting at matched learning (only where the runs span enough
learning levels), paired tests — with two figures: the metric against the learning rate per
method, and the learning–forgetting frontier.

Runs that cannot be answered together (different tasks, no run with forgetting) get a
one-line section saying so; a single run gets none. Every cell is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetlab.answers import (
    NotComparable,
    answer_tables,
    answers,
    left_out_line,
    shown_sections,
)
from forgetlab.answers.tables import Table
from forgetlab.errors import ForgetlabError
from forgetlab.report.data import ANALYSIS_ERRORS
from forgetlab.report.draw_answers import frontier_figure, rate_curves_figure
from forgetlab.report.figures import Plot, figure_html
from forgetlab.report.format import e
from forgetlab.report.tables import table

CI = " ±CI95"  # the answers' name for a mean's CI column, right after the mean's
FRONTIER_ID = "fig-frontier"
RATE_ID = "fig-rate-curves"


@dataclass
class AnswersView:
    """The section's HTML and its figures, in page order (none where the runs could not be
    answered together)."""

    html: str
    plots: list[Plot] = field(default_factory=list)

    @property
    def frontier_drawn(self) -> bool:
        return any(p.fig_id == FRONTIER_ID for p in self.plots)


def _cell(value: Any, text: str) -> str:
    if isinstance(value, bool):  # the frontier flags
        return "<span class=yes>yes</span>" if value else "no"
    return e(text)


def html_table(t: Table, warnings: Sequence[str] = ()) -> str:
    """One answers table: its title, the cells as the text format shows them (a mean and the
    CI column after it joined as "mean ± ci", the mean alone for one seed), and its notes
    (`warnings` highlighted)."""
    names = [c.name for c in t.columns]
    joined = [i for i in range(len(names) - 1) if names[i + 1].endswith(CI)]
    header, keep = [], []
    for i, name in enumerate(names):
        if i - 1 in joined:
            continue
        header.append(f"{name} ± CI95" if i in joined else name)
        keep.append(i)
    rows = []
    for values, cells in zip(t.rows, t.cells()):
        row = []
        for i in keep:
            text = _cell(values[i], cells[i])
            if i in joined and values[i + 1] is not None:  # one seed: no interval
                text += f" ± {e(cells[i + 1])}"
            row.append(text)
        rows.append(row)
    notes = "".join(f"<li class={'warn' if n in warnings else 'note'}>{e(n)}</li>" for n in t.notes)
    return (
        f'<h3 id="answers-{t.key.replace("_", "-")}">{e(t.title)}</h3>'
        + table(header, rows)
        + (f"<ul>{notes}</ul>" if notes else "")
    )


def _plots(result: dict[str, Any]) -> list[Plot]:
    rate_key, learning, forgetting = (
        result["best"]["rate_key"],
        result["learning"],
        result["forgetting"],
    )
    plots = []
    curves = rate_curves_figure(result)
    if curves is not None:
        plots.append(
            Plot(
                RATE_ID,
                f"Line chart of {result[result['best']['metric']]} against {rate_key} per "
                "method, log x axis, with 95% CI bands",
                f"Per method: at each {rate_key} value, its best point's {result['best']['metric']}"
                " (mean over seeds, band: 95% Student-t CI); star: the method's best setting, "
                "as in the best-setting table, which warns where a best is on the edge of the "
                "grid. Methods that did not sweep the rate are named under the plot.",
                curves,
            )
        )
    ref = result["frontier"]["reference_point"]
    if ref is None:  # one task: nothing can be forgotten, no frontier to draw
        return plots
    plots.append(
        Plot(
            FRONTIER_ID,
            "Scatter of learning against forgetting, one labelled point per run, markers per "
            "method, with the non-dominated set as a step line",
            f"Each run (mean over seeds; error bars: 95% CI): forgetting = {forgetting} (x), "
            f"learning = {learning} (y), labelled by its method and the settings that tell it "
            "apart. Outlined points and the dashed staircase: the non-dominated set over all "
            "methods (no other point learns at least as much while forgetting at most as much). "
            f"×: the hypervolume reference point (learning {ref['learning']:.4g}, forgetting "
            f"{ref['forgetting']:.4g}; {ref['chosen']}).",
            frontier_figure(result),
        )
    )
    return plots


def answers_view(
    run_dirs: Sequence[str | Path], learning: str | None = None, forgetting: str | None = None
) -> AnswersView | None:
    """The Answers section over the runs (on these metrics; None: answers()' defaults);
    None for fewer than two runs."""
    if len(run_dirs) < 2:
        return None
    head = '<section id="answers"><h2>Answers</h2>'
    try:
        result = answers(run_dirs, learning=learning, forgetting=forgetting)
    except NotComparable as error:
        return AnswersView(
            f"{head}<p class=note>No answers for these runs: {e(error)}</p></section>"
        )
    except (ForgetlabError, *ANALYSIS_ERRORS) as error:  # a malformed metrics.json: a note
        why = f"{type(error).__name__}: {error}"
        return AnswersView(
            f"{head}<p class=note>Answers could not be computed ({e(why)})</p></section>"
        )
    sections = shown_sections(result)
    edges = [w for r in result["best"]["rows"] for w in r["edge"]]
    plots = _plots(result)
    parts = [
        head,
        "<p class=note>What these runs show together (the tables of <code>forgetlab "
        "compare</code>): each method at its best setting, the learning–forgetting frontier, "
        "forgetting at matched learning and paired tests between methods.</p>",
    ]
    tables = answer_tables(result, sections)
    for t in tables:
        parts.append(html_table(t, edges))
        if t.key == "best" and plots and plots[0].fig_id == RATE_ID:
            parts.append(figure_html(plots[0]))
        if t.key == "hypervolume":
            parts.append(figure_html(plots[-1]))
    if (line := left_out_line(result)) is not None:
        parts.append(f"<p class=note>{e(line)}.</p>")
    parts.append("</section>")
    return AnswersView("\n".join(parts), plots)
