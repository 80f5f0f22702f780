"""The report's figures as `Plot`s (id, alt text, caption, PNG), built from tables: the
per-run figures from `RUN_FIGURES`, each analysis's from its own module's `figure` (see
`forgetlab.analyses`), and those across runs from `overview_plots`."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass

from forgetlab.analyses import BY_NAME
from forgetlab.analyses.spec import FigureContext
from forgetlab.plotting import NothingToDraw
from forgetlab.report import draw
from forgetlab.report.data import ANALYSIS_ERRORS, RunData, rank_entries, slug, source_loss
from forgetlab.report.format import e
from forgetlab.report.summary import all_accuracy, has_floorless, run_point, source_target_point


@dataclass(frozen=True)
class Plot:
    fig_id: str
    alt: str
    caption: str
    png: bytes

    @property
    def file_name(self) -> str:
        return self.fig_id.removeprefix("fig-") + ".png"


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    return struct.unpack(">II", png[16:24])


def figure_html(plot: Plot) -> str:
    """The plot as an HTML figure: an inline data: URI PNG with its alt text and caption."""
    width, height = png_size(plot.png)
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img id="{plot.fig_id}" alt="{e(plot.alt)}" width="{width}" '
        f'height="{height}" src="data:image/png;base64,{data}">'
        f"<figcaption>{e(plot.caption)}</figcaption></figure>"
    )


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def accuracy_plot(run: RunData) -> Plot:
    name = run.summary["name"]
    if all_accuracy(run.summary):
        return Plot(
            f"fig-{run.slug}-accuracy",
            f"Accuracy matrix of run {name}: rows base model and after each stage, columns "
            "tasks, with the majority baseline below",
            "Accuracy on each task (columns) after each stage (rows; row 0 = the base model), "
            "mean over seeds (± std when there are several). Colour = accuracy minus the "
            "task's majority baseline (blue: above chance). Outlined cells are R[j][j], what "
            "each task reached right after training on it.",
            draw.accuracy_figure(run.summary),
        )
    metrics = ", ".join(f"{t}: {m}" for t, m in zip(run.summary["tasks"], run.summary["metrics"]))
    return Plot(
        f"fig-{run.slug}-accuracy",
        f"Score matrix of run {name}: rows base model and after each stage, columns tasks, "
        "with the majority baseline (where there is one) below",
        f"Score on each task ({metrics}; higher is better) after each stage (rows; row 0 = the "
        "base model), mean over seeds (± std when there are several). Colour = score minus "
        "the task's majority baseline, or minus the base model's score for a task without one "
        "(blue: better). Outlined cells are R[j][j], each task right after training on it.",
        draw.accuracy_figure(run.summary),
    )


@dataclass(frozen=True)
class RunFigure:
    """A per-run figure that only some runs have: `draw` returns None without its data."""

    draw: Callable[[dict], bytes | None]
    alt: str  # with {name}, the run's name
    caption: str


RUN_FIGURES = {
    "loss": RunFigure(
        draw.loss_figure,
        "Training loss curves of run {name}, one panel per stage",
        "Training loss per stage, one line per seed; what is added to it (dashed, right axis: "
        "the regularizer's penalty, the strategies' losses) where it is non-zero.",
    ),
    "curves": RunFigure(
        draw.curves_figure,
        "Scores of run {name} during training, relative to the base model, over the "
        "cumulative training step",
        "Every task (solid) and probe (dashed) scored during training (eval.every) and at "
        "each stage's end, minus its base-model score: learning is a line rising while its "
        "task trains, forgetting one falling afterwards. Grey lines: stage ends. For −NLL "
        "scores the change is −ΔNLL (up = the NLL fell).",
    ),
    "probes": RunFigure(
        draw.probes_figure,
        "Change of each probe's score from the base model after every stage of run {name}",
        "Each probe (never trained) after every stage, minus its base-model score (mean over "
        "seeds): below 0 = lost. Filled markers: probes the base model could do (above chance, "
        "or −NLL); hollow and dotted: at chance or scoring 0, their change is noise. For −NLL "
        "probes the change is −ΔNLL: up = the NLL fell, down = it rose.",
    ),
}


def run_plot(run: RunData, suffix: str) -> Plot | None:
    """The run's figure `suffix` of RUN_FIGURES, None where the run has no data for it."""
    spec = RUN_FIGURES[suffix]
    alt = spec.alt.format(name=run.summary["name"])
    png = spec.draw(run.summary)
    return None if png is None else Plot(f"fig-{run.slug}-{suffix}", alt, spec.caption, png)


def analysis_plots(run: RunData) -> tuple[list[tuple[str, Plot]], list[str]]:
    """(analysis file stem, plot) for every drawable analysis, and notes for the others."""
    plots, notes = [], []
    for stem, data in run.analyses.items():
        about = FigureContext(str(run.summary["name"]), stem, all_accuracy(run.summary))
        try:
            fig = BY_NAME[data["analysis"]].figure(data, about)
        except NothingToDraw as e:
            notes.append(f"analyses/{stem}.json: nothing to draw, {e}.")
        except ANALYSIS_ERRORS as e:
            notes.append(f"analyses/{stem}.json could not be drawn ({type(e).__name__}: {e})")
        else:
            plots.append(
                (stem, Plot(f"fig-{run.slug}-{slug(stem)}", fig.alt, fig.caption, fig.png))
            )
    return plots, notes


# --------------------------------------------------------------------------------------------
# Across runs
# --------------------------------------------------------------------------------------------

FLOORLESS = " For a task without a majority baseline (−NLL), the floor is the base model's score."


def _source_target_plot(runs: list[RunData]) -> Plot | None:
    """Across runs with probes: what the run learned (target) against what it lost (source)."""
    if not any(r.summary.get("probes") for r in runs):
        return None
    points = []
    for run in runs:
        s = run.summary
        gain = source_target_point(s)[0]
        points.append((f"{s['name']} ({s['method']})", gain, source_loss(s)))
    return Plot(
        "fig-source-target",
        "Scatter of target gain against source loss, one point per run, with the Pareto "
        "frontier: learns less, forgets less",
        "Each run: source loss (x) = −mean change, final − base, of the probes the base model "
        "could do (above chance, −NLL, or a generation probe it scores above 0); target gain "
        "(y) = mean over the trained tasks of R[j][j] − floor_j (majority baseline, or the "
        "base model's score). Stars and the dashed line: the Pareto frontier (no other run "
        "gains more while losing less). Changes of −NLL and of accuracy share the axis. Runs "
        "without such probes are named under the plot.",
        draw.source_target_figure(points),
    )


def _scatter_plot(runs: list[RunData]) -> Plot:
    """Learning above the majority baseline against forgetting, one point per run."""
    points = [run_point(r.summary) for r in runs]
    floorless = any(has_floorless(r.summary) for r in runs)
    return Plot(
        "fig-learning-vs-forgetting",
        "Scatter of learning above the majority baseline against forgetting, one point per "
        "run, with the Pareto frontier",
        "Each run: forgetting (avg_forgetting) against learning (initial_acc minus the mean "
        "majority baseline). Stars and the dashed line: the Pareto frontier (no other run "
        "learns more while forgetting less). Error bars: 95% CI over seeds."
        + (FLOORLESS if floorless else ""),
        draw.scatter_figure(points, floorless=floorless),
    )


def overview_plots(runs: list[RunData], scatter: bool = True) -> list[Plot]:
    """The figures across runs; `scatter`: with the learning-vs-forgetting scatter (left out
    where the Answers section draws the frontier instead)."""
    plots = [_scatter_plot(runs)] if scatter else []
    source = _source_target_plot(runs)
    plots += [source] if source else []
    entries = rank_entries(runs)
    if entries:
        labels = [(f"{r.summary['name']} ({r.summary['method']})", s) for r, s in entries]
        plots.append(
            Plot(
                "fig-rank90",
                "Bar chart of the median rank90 of the weight updates per run, with the "
                "random-matrix reference",
                "rank90 = number of singular values holding 90% of the energy (Σ s²) of a weight "
                "update ΔW = W(final) − W(base), median over the changed matrices (error bars: "
                "quartiles; 0 = nothing changed), beside the same for a random matrix of the "
                "same shape and norm.",
                draw.rank90_figure(labels),
            )
        )
    return plots
