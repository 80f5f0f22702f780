"""The report's own figures, each returned as PNG bytes: across runs (learning vs forgetting,
target gain vs source loss, rank90) and per run (accuracy matrix, training loss, curves during
training, probes). The analyses draw their own figures (see `forgetlab.analyses`).

Inputs are run summaries (metrics.json); a malformed optional key raises KeyError/TypeError/
ValueError/IndexError, which the page builder turns into a note instead of a failed report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from forgetlab.analyses.spectrum import RankSummary
from forgetlab.plotting import annotate, literal, png
from forgetlab.report.summary import (
    RunPoint,
    floors,
    frontier_flags,
    pareto_frontier,
    probe_sources,
    std_matrix,
)


def _frontier(ax, front: list[tuple[float, float]]) -> None:
    """The Pareto frontier through the starred points, and the axes through 0."""
    if front:
        xs, ys = zip(*sorted(front))
        ax.plot(xs, ys, "--", color="0.3", lw=1.2, label="Pareto frontier (★)", zorder=0)
        ax.legend(loc="lower right")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)


def scatter_figure(points: list[RunPoint], floorless: bool = False) -> bytes:
    """Forgetting against learning; `floorless`: some task's floor is its base score."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    flags = frontier_flags(points)
    shown = [p for p, flag in zip(points, flags) if flag is not None]
    frontier = [flag for flag in flags if flag is not None]
    for k, (p, best) in enumerate(zip(shown, frontier)):
        ax.errorbar(
            p.forgetting,
            p.learning,
            xerr=p.forgetting_ci,
            yerr=p.learning_ci,
            fmt="*" if best else "o",
            markersize=14 if best else 8,
            color=f"C{k % 10}",
            capsize=3,
        )
        ax.annotate(
            literal(p.label), (p.forgetting, p.learning), xytext=(6, 6), textcoords="offset points"
        )
    _frontier(ax, [(p.forgetting, p.learning) for p, best in zip(shown, frontier) if best])
    ax.set_xlabel("forgetting: avg_forgetting (mean over seeds; lower is better)")
    floor = "mean floor (majority or base)" if floorless else "mean majority baseline"
    ax.set_ylabel(f"learning: initial_acc − {floor} (higher is better)")
    ax.set_title("Learning vs forgetting (error bars: 95% CI over seeds)")
    missing = [p.label for p, flag in zip(points, flags) if flag is None]
    if missing:  # supxlabel: constrained layout makes room for it below the axis label
        note = "not plotted, forgetting undefined (single task): " + ", ".join(missing)
        fig.supxlabel(literal(note), fontsize=8, color="0.35")
    if not shown:
        ax.text(0.5, 0.5, "no run has a defined forgetting", ha="center", transform=ax.transAxes)
    return png(fig)


def accuracy_figure(summary: dict) -> bytes:
    """R as a heatmap coloured by accuracy − majority baseline, the majority row below it."""
    R = np.asarray(summary["accuracy_matrix"], float)
    std = std_matrix(summary, R.shape)
    majority = np.array([np.nan if m is None else m for m in summary["majority_baseline"]])
    tasks = [literal(t) for t in summary["tasks"]]
    T = len(tasks)
    above = R - floors(summary)[None, :]  # no baseline: coloured by the change from base
    span = max(0.05, float(np.nanmax(np.abs(above))))
    fig = Figure(figsize=(2.6 + 1.25 * T, 1.5 + 0.5 * (T + 2)), layout="constrained")
    ax, ax_maj = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [T + 1, 1]})
    im = ax.imshow(above, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    dark = np.abs(above) > 0.6 * span
    for (i, j), v in np.ndenumerate(R):
        text = f"{v:.3f}" + (f"\n±{std[i, j]:.3f}" if std is not None else "")
        color = "white" if dark[i, j] else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    for j in range(T):  # outline R[j][j]: the accuracy right after learning task j
        ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, lw=2, ec="black"))
    ax.set_yticks(range(T + 1), ["base"] + [f"after {t}" for t in tasks])
    metrics = summary.get("metrics") or ["accuracy"] * T
    name = "Accuracy" if set(metrics) == {"accuracy"} else "Score (" + ", ".join(
        dict.fromkeys(metrics)) + ")"  # fmt: skip
    ax.set_title(f"{name} R[stage, task] (outlined: R[j][j])", fontsize=10)
    ax_maj.imshow(majority[None, :], cmap="Greys", vmin=0, vmax=2, aspect="auto")
    annotate(ax_maj, majority[None, :], ".3f", np.zeros((1, T), bool))
    for j in np.flatnonzero(~np.isfinite(majority)):  # no chance level: compared with base
        ax_maj.text(j, 0, "none (vs base)", ha="center", va="center", fontsize=8, color="0.4")
    ax_maj.set_yticks([0], ["majority"])
    ax_maj.set_xticks(range(T), tasks, rotation=30 if T > 4 else 0)
    label = "score − majority baseline" + ("" if np.isfinite(majority).all() else " (or base)")
    fig.colorbar(im, ax=[ax, ax_maj], label=label, shrink=0.9)
    return png(fig)


def _curves(summary: dict) -> list[list[tuple[str, np.ndarray]]]:
    """Per stage: (seed label, array of [step, loss, penalty] rows) for each seed."""
    per_stage: list[list[tuple[str, np.ndarray]]] = [[] for _ in summary["tasks"]]
    for seed, metrics in (summary.get("per_seed") or {}).items():
        for i, stage in enumerate((metrics or {}).get("stages") or []):
            rows = [list(r) + [0.0] * (3 - len(r)) for r in stage.get("loss_curve") or []]
            if rows and i < len(per_stage):
                per_stage[i].append((f"seed {seed}", np.asarray(rows, float)))
    return per_stage


def loss_figure(summary: dict) -> bytes | None:
    """Training loss per stage (one line per seed); the penalty on a second axis if non-zero."""
    per_stage = _curves(summary)
    if not any(per_stage):
        return None
    cols = min(4, len(per_stage))
    rows = math.ceil(len(per_stage) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for i, (ax, curves) in enumerate(zip(axes, per_stage)):
        ax.set_title(literal(f"stage {i + 1}: {summary['tasks'][i]}"), fontsize=10)
        ax.set_xlabel("step")
        for k, (label, c) in enumerate(curves):
            dots = "." if len(c) < 3 else None  # a stage of one or two logged steps
            color = f"C{k % 10}"
            ax.plot(c[:, 0], c[:, 1], color=color, lw=1.2, marker=dots, label=f"loss, {label}")
        if any(np.any(c[:, 2] != 0) for _, c in curves):
            twin = ax.twinx()
            for k, (_, c) in enumerate(curves):
                twin.plot(c[:, 0], c[:, 2], "--", color=f"C{k % 10}", lw=1, label="penalty")
            twin.set_ylabel("penalty (dashed)", fontsize=8)
        if i == 0 and curves:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("task loss")
    for ax in axes[len(per_stage) :]:
        ax.set_visible(False)
    return png(fig)


NLL_SIGN = "−ΔNLL: up = NLL fell, down = NLL rose"


def source_target_figure(points: list[tuple[str, float, float | None]]) -> bytes:
    """One point per run: source loss (x, lower is better) against target gain (y)."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    shown = [(label, gain, loss) for label, gain, loss in points if loss is not None]
    flags = pareto_frontier([(loss, gain) for _, gain, loss in shown])
    for k, ((label, gain, loss), best) in enumerate(zip(shown, flags)):
        ax.plot(loss, gain, "*" if best else "o", markersize=14 if best else 8, color=f"C{k % 10}")
        ax.annotate(literal(label), (loss, gain), xytext=(6, 6), textcoords="offset points")
    _frontier(ax, [(loss, gain) for (_, gain, loss), best in zip(shown, flags) if best])
    ax.margins(0.2)  # room for the labels right of the points
    ax.set_xlabel("source loss: −mean probe change, final − base (lower is better)")
    ax.set_ylabel("target gain: mean R[j][j] − floor_j (higher is better)")
    ax.set_title("Learns less, forgets less? Target gain vs source loss")
    missing = [label for label, _, loss in points if loss is None]
    if missing:
        note = "not plotted, no probe the base model could do: " + ", ".join(missing)
        fig.supxlabel(literal(note), fontsize=8, color="0.35")
    if not shown:
        ax.text(0.5, 0.5, "no run has a source loss", ha="center", transform=ax.transAxes)
    return png(fig)


def _probe_label(name: str, metric: object, above: object, source: bool) -> str:
    what = NLL_SIGN if metric == "neg_nll" else str(metric)
    note = ", base at chance: noise" if above is False else ""
    if above is None and not source:  # exact match, pass@1 at 0: nothing to lose
        note = ", base scores 0: nothing to lose"
    return literal(f"{name} ({what}{note})")


def probes_figure(summary: dict) -> bytes | None:
    """Each probe's score − its base score after every stage: filled markers for the probes
    that show forgetting (probe_sources), hollow and dotted for the others."""
    probes = summary.get("probes")
    if not probes:
        return None
    P = np.asarray(summary["probe_matrix"], float)
    if P.ndim != 2 or P.shape[1] != len(probes):
        raise ValueError(f"probe_matrix is {P.shape}, expected (stages, {len(probes)} probes)")
    metrics = summary.get("probe_metrics") or [None] * len(probes)
    above = summary.get("probe_base_above_chance") or [None] * len(probes)
    sources = probe_sources(summary)
    tasks = summary["tasks"]
    fig = Figure(figsize=(max(7.0, 3.0 + 1.6 * P.shape[0]), 4.4 + 0.22 * len(probes)),
                 layout="constrained")  # fmt: skip
    ax = fig.subplots()
    x = np.arange(P.shape[0])
    for k, name in enumerate(probes):
        solid, color = sources[k], f"C{(len(tasks) + k) % 10}"  # the colours of curves_figure
        ax.plot(
            x,
            P[:, k] - P[0, k],
            "o-" if solid else "o:",
            color=color,
            mfc=color if solid else "white",
            markersize=7,
            label=_probe_label(name, metrics[k], above[k], solid),
        )
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(x, ["base"] + [literal(f"after {t}") for t in tasks[: P.shape[0] - 1]])
    ax.set_ylabel("score − base score (below 0 = lost)")
    ax.set_title(
        "Probes (never trained): change from the base model\n"
        "filled: the base model could do it (can show forgetting); hollow: it could not",
        fontsize=10,
    )
    ax.margins(x=0.08)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    return png(fig)


@dataclass(frozen=True)
class Curves:
    """Scores during training as changes from the base model: x = cumulative step, Y[i, k] =
    score of series k (the tasks, then the probes) at x[i] minus its base score."""

    names: list[str]
    n_tasks: int
    x: np.ndarray
    Y: np.ndarray
    ends: list[float]  # the cumulative step at which each stage ended
    n_seeds: int


def _seed_curve(metrics: dict) -> tuple[np.ndarray, np.ndarray, list[float]] | None:
    """One seed's matrix rows joined by its curve points: row k−1 at step 0 of stage k, the
    points, row k at the stage's last step."""
    points = metrics.get("curves") or []
    if not points:
        return None
    R = metrics["accuracy_matrix"]
    P = metrics.get("probe_matrix") or [[] for _ in R]
    if len(P) != len(R):
        raise ValueError("probe_matrix and accuracy_matrix have different numbers of rows")
    rows = [list(r) + list(p) for r, p in zip(R, P)]
    stages = metrics.get("stages") or []
    x, ys, ends, offset = [0.0], [rows[0]], [], 0.0
    for k in range(1, len(rows)):
        here = sorted((c for c in points if c["stage"] == k), key=lambda c: c["step"])
        if here:
            total = float(here[0]["total_steps"])
        elif k - 1 < len(stages):
            total = float(stages[k - 1]["steps"])
        else:
            total = 1.0
        for c in here:
            x.append(offset + float(c["step"]))
            ys.append(c["scores"])
        offset += total
        x.append(offset)
        ys.append(rows[k])
        ends.append(offset)
    Y = np.asarray(ys, float)
    return np.asarray(x), Y - Y[0], ends


def training_curves(summary: dict) -> Curves | None:
    """The mean over seeds of the curves (seeds evaluated at the same steps; otherwise the
    first seed's alone), or None without any curve point (eval.every unset)."""
    per_seed = [c for m in (summary.get("per_seed") or {}).values() if (c := _seed_curve(m))]
    if not per_seed:
        return None
    x, _, ends = per_seed[0]
    same = [c for c in per_seed if c[0].shape == x.shape and np.array_equal(c[0], x)]
    names = [str(t) for t in summary["tasks"]] + [str(p) for p in summary.get("probes") or []]
    Y = np.mean([c[1] for c in same], axis=0)
    if Y.shape[1] != len(names):
        raise ValueError(f"curve scores have {Y.shape[1]} entries for {len(names)} series")
    return Curves(names, len(summary["tasks"]), x, Y, ends, len(same))


def curves_figure(summary: dict) -> bytes | None:
    """Score − base during training, across all stages: tasks solid, probes dashed."""
    curves = training_curves(summary)
    if curves is None:
        return None
    metrics = list(summary.get("metrics") or ["accuracy"] * curves.n_tasks)
    n_probes = len(curves.names) - curves.n_tasks
    metrics += list(summary.get("probe_metrics") or [None] * n_probes)
    above = summary.get("probe_base_above_chance") or [None] * n_probes
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax = fig.subplots()
    for k, name in enumerate(curves.names):
        probe = k >= curves.n_tasks
        label = ("probe " if probe else "task ") + name
        if metrics[k] == "neg_nll":
            label += " (−ΔNLL)"
        if probe and above[k - curves.n_tasks] is False:
            label += " (base at chance: noise)"
        style = "--" if probe else "-"
        ax.plot(
            curves.x, curves.Y[:, k], style, marker=".", color=f"C{k % 10}", label=literal(label)
        )
    start = 0.0
    for end, task in zip(curves.ends, summary["tasks"]):
        ax.axvline(end, color="0.6", lw=0.8)
        ax.text((start + end) / 2, 1.0, literal(task), transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="0.3")  # fmt: skip
        start = end
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlim(0, max(curves.ends[-1] if curves.ends else 1.0, 1.0))
    ax.set_xlabel("training step, cumulative over stages (grey lines: stage ends)")
    ax.set_ylabel("score − base score (−ΔNLL for NLL scores)")
    seeds = f"mean over {curves.n_seeds} seeds" if curves.n_seeds > 1 else "one seed"
    ax.set_title(f"Learning and forgetting during training ({seeds})", fontsize=10, pad=16)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return png(fig)


def rank90_figure(entries: list[tuple[str, RankSummary]]) -> bytes:
    """Median rank90 per run (bars, quartiles as error bars) beside the random reference."""
    fig = Figure(figsize=(max(5.0, 1.6 * len(entries) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(entries))
    med = np.array([e.median for _, e in entries])
    err = np.array([[e.median - e.q25 for _, e in entries], [e.q75 - e.median for _, e in entries]])
    ax.bar(x - 0.2, med, 0.4, yerr=err, capsize=3, color="C0", label="rank90, median over matrices")
    rand = [np.nan if e.random_median is None else e.random_median for _, e in entries]
    ax.bar(x + 0.2, rand, 0.4, color="0.8", hatch="//", ec="0.4", label="random matrix, same shape")
    for xi, (_, e) in zip(x, entries):  # above the upper quartile, clear of the error bar
        ax.text(xi - 0.2, e.q75, f"{e.median:g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        x, [literal(label) for label, _ in entries], rotation=20 if len(entries) > 3 else 0
    )
    ax.set_ylabel("singular values for 90% of the energy of ΔW")
    ax.set_title("Effective rank of the weight update ΔW (error bars: quartiles)", fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)
