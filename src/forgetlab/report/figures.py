"""Figures for the HTML report, each returned as PNG bytes.

Drawn with matplotlib's object API (`matplotlib.figure.Figure` on an Agg canvas), never
pyplot: no global figure registry, no GUI backend chosen from the environment, and safe to
call from several threads. Inputs are the run summary (metrics.json) and the analysis JSON
files; a malformed analysis raises KeyError/TypeError/ValueError/IndexError, which the page
builder turns into a note instead of a failed report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: PNG output without any backend
    buf = io.BytesIO()
    # No "Software" metadata: the same inputs give the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _t(value: object) -> str:
    """A user string as literal text: matplotlib would parse `$...$` as mathtext."""
    return str(value).replace("$", r"\$")


def _annotate(ax, values: np.ndarray, fmt: str, dark: np.ndarray, size: float = 8) -> None:
    """Write each cell's value on a heatmap; white text where the cell colour is dark."""
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            color = "white" if dark[i, j] else "black"
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=size, color=color)


# --------------------------------------------------------------------------------------------
# Learning vs forgetting across runs
# --------------------------------------------------------------------------------------------


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (forgetting, learning) points are on the Pareto frontier.

    Less forgetting and more learning are better: a point is on the frontier unless another
    point has forgetting <= and learning >= with at least one of the two strict. Equal points
    do not dominate each other, so both stay on the frontier.
    """
    return [
        not any(
            f2 <= f and g2 >= g and (f2 < f or g2 > g)
            for k, (f2, g2) in enumerate(points)
            if k != i
        )
        for i, (f, g) in enumerate(points)
    ]


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
            _t(p.label), (p.forgetting, p.learning), xytext=(6, 6), textcoords="offset points"
        )
    front = sorted((p.forgetting, p.learning) for p, best in zip(shown, frontier) if best)
    if front:
        xs, ys = zip(*front)
        ax.plot(xs, ys, "--", color="0.3", lw=1.2, label="Pareto frontier (★)", zorder=0)
        ax.legend(loc="lower right")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("forgetting: avg_forgetting (mean over seeds; lower is better)")
    floor = "mean floor (majority or base)" if floorless else "mean majority baseline"
    ax.set_ylabel(f"learning: initial_acc − {floor} (higher is better)")
    ax.set_title("Learning vs forgetting (error bars: 95% CI over seeds)")
    missing = [p.label for p, flag in zip(points, flags) if flag is None]
    if missing:  # supxlabel: constrained layout makes room for it below the axis label
        note = "not plotted, forgetting undefined (single task): " + ", ".join(missing)
        fig.supxlabel(_t(note), fontsize=8, color="0.35")
    if not shown:
        ax.text(0.5, 0.5, "no run has a defined forgetting", ha="center", transform=ax.transAxes)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# One run: accuracy matrix and training loss
# --------------------------------------------------------------------------------------------


def std_matrix(summary: dict, shape: tuple[int, ...]) -> np.ndarray | None:
    """The std over seeds of R, or None for one seed (or a std that does not fit R)."""
    std = summary.get("accuracy_matrix_std")
    if std is None:
        return None
    std = np.asarray(std, float)  # null entries become NaN and print as "nan"
    return std if std.shape == shape else None


def accuracy_figure(summary: dict) -> bytes:
    """R as a heatmap coloured by accuracy − majority baseline, the majority row below it."""
    R = np.asarray(summary["accuracy_matrix"], float)
    std = std_matrix(summary, R.shape)
    majority = np.array([np.nan if m is None else m for m in summary["majority_baseline"]])
    tasks = [_t(t) for t in summary["tasks"]]
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
    _annotate(ax_maj, majority[None, :], ".3f", np.zeros((1, T), bool))
    for j in np.flatnonzero(~np.isfinite(majority)):  # no chance level: compared with base
        ax_maj.text(j, 0, "none (vs base)", ha="center", va="center", fontsize=8, color="0.4")
    ax_maj.set_yticks([0], ["majority"])
    ax_maj.set_xticks(range(T), tasks, rotation=30 if T > 4 else 0)
    label = "score − majority baseline" + ("" if np.isfinite(majority).all() else " (or base)")
    fig.colorbar(im, ax=[ax, ax_maj], label=label, shrink=0.9)
    return _png(fig)


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
        ax.set_title(_t(f"stage {i + 1}: {summary['tasks'][i]}"), fontsize=10)
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
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Analyses
# --------------------------------------------------------------------------------------------


def cka_figure(cka: dict) -> bytes:
    """Layer × stage heatmap of CKA to the base model (fixed 0..1) and 1 − CKA per layer."""
    M = np.asarray(cka["cka"], float)  # stages × layers
    layers, stages = [_t(x) for x in cka["layers"]], [_t(x) for x in cka["stages"]]
    if M.shape != (len(stages), len(layers)):
        raise ValueError(f"cka is {M.shape}, expected {len(stages)} stages × {len(layers)} layers")
    debiased = cka.get("cka_debiased")
    fig = Figure(figsize=(5 + 0.9 * len(stages) + 0.35 * len(layers), 4.8), layout="constrained")
    ax_heat, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(stages) + 1.5, 4]})
    im = ax_heat.imshow(M.T, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    _annotate(ax_heat, M.T, ".3f", M.T < 0.5)  # 3 digits: small drifts (0.998) still show
    ax_heat.set_yticks(range(len(layers)), layers)
    ax_heat.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax_heat.set_title("CKA to the base model (1 = unchanged)", fontsize=10)
    fig.colorbar(im, ax=ax_heat, shrink=0.8)
    x = np.arange(len(layers))
    for s, label in enumerate(stages):
        ax_line.plot(x, 1 - M[s], "o-", color=f"C{s % 10}", label=label)
        if debiased is not None:
            ax_line.plot(x, 1 - np.asarray(debiased[s], float), ":", color=f"C{s % 10}")
    ax_line.set_xticks(x, layers, rotation=45, ha="right")
    ax_line.set_ylabel("1 − CKA (drift from the base model)")
    title = "Drift per layer" + (" (dotted: debiased CKA)" if debiased is not None else "")
    ax_line.set_title(title, fontsize=10)
    ax_line.legend(fontsize=7)
    return _png(fig)


def _task_heatmap(fig: Figure, ax, M: np.ndarray, tasks: list[str], title: str, signed: bool):
    if signed:  # cosines: diverging around 0, blue = aligned, as in the accuracy heatmaps
        im = ax.imshow(M, cmap="RdBu", vmin=-1, vmax=1)
        dark = np.abs(M) > 0.6
    else:
        lo = min(0.0, float(np.nanmin(M)))
        im = ax.imshow(M, cmap="viridis", vmin=lo, vmax=1)
        dark = (M - lo) < 0.5 * (1 - lo)  # lower half of the scale
    _annotate(ax, M, ".2f", dark)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


def similarity_figure(sim: dict, accuracy: bool = True) -> bytes:
    """Representation similarity, gradient cosine and the interference (R[i] − R[i−1]);
    `accuracy` False: the tasks' scores are not all accuracy (−NLL...)."""
    tasks = [_t(t) for t in sim["tasks"]]
    T = len(tasks)
    rep = np.asarray(sim["representation"], float)
    grad = np.asarray(sim["gradient_cosine"], float)
    if rep.shape != (T, T) or grad.shape != (T, T):
        raise ValueError(f"similarity matrices must be {T}×{T}")
    inter = sim.get("interference")
    inter = None if inter is None else np.asarray(inter, float)
    if inter is not None and inter.shape != (T, T):
        raise ValueError(f"interference must be {T}×{T} (stage × task)")
    panels = 2 if inter is None else 3
    fig = Figure(figsize=(1 + (1.6 + 0.75 * T) * panels, 2.6 + 0.45 * T), layout="constrained")
    axes = fig.subplots(1, panels)
    _task_heatmap(fig, axes[0], rep, tasks, "Representation similarity", signed=False)
    _task_heatmap(fig, axes[1], grad, tasks, "Gradient cosine", signed=True)
    if inter is not None:
        _interference_heatmap(fig, axes[2], inter, tasks, accuracy)
    return _png(fig)


def _interference_heatmap(
    fig: Figure, ax, inter: np.ndarray, tasks: list[str], accuracy: bool = True
) -> None:
    """Row i: how training stage i changed the accuracy on each task, R[i] − R[i−1]."""
    span = max(0.05, float(np.nanmax(np.abs(inter))))
    im = ax.imshow(inter, cmap="RdBu", vmin=-span, vmax=span)
    _annotate(ax, inter, "+.2f", np.abs(inter) > 0.6 * span)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), [f"stage {i + 1}" for i in range(len(tasks))])
    title = "Accuracy change per stage, R[i] − R[i−1]"
    ax.set_title(title if accuracy else "Score change per stage\nR[i] − R[i−1]", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)


class NothingToDraw(ValueError):
    """The analysis is well formed but has nothing to plot (e.g. no weight changed)."""


@dataclass(frozen=True)
class RankSummary:
    """rank90 of the weight updates ΔW at a run's final stage: median and quartiles over the
    changed matrices (all 0 when none changed)."""

    stage: int
    task: str
    n_matrices: int
    median: float
    q25: float
    q75: float
    random_median: float | None


def rank90_summary(spectrum: dict) -> RankSummary:
    if not spectrum["stages"]:
        raise NothingToDraw("no stage was analysed")
    final = spectrum["stages"][-1]
    ranks = np.asarray([m["rank90"] for m in final["matrices"]], float)
    if ranks.size == 0:  # nothing changed (frozen backbone): rank 0 is the true answer
        return RankSummary(final["stage"], str(final["task"]), 0, 0.0, 0.0, 0.0, None)
    random = [m["random_rank90"] for m in final["matrices"] if m.get("random_rank90") is not None]
    q25, median, q75 = (float(q) for q in np.percentile(ranks, [25, 50, 75]))
    rand = float(np.median(random)) if random else None
    return RankSummary(final["stage"], str(final["task"]), ranks.size, median, q25, q75, rand)


def spectrum_figure(spectrum: dict) -> bytes:
    """Normalised singular values s_i/s_0 of every update ΔW at the final stage (log y)."""
    summary = rank90_summary(spectrum)
    final = spectrum["stages"][-1]
    if summary.n_matrices == 0:
        raise NothingToDraw(f"no weight matrix changed by stage {final['stage']}")
    fig = Figure(figsize=(7, 4.3), layout="constrained")
    ax = fig.subplots()
    for m in final["matrices"]:
        s = np.asarray(m["singular_values"], float)
        s = s[s > 0]  # zeros have no place on a log axis
        if s.size:
            ax.plot(np.arange(1, s.size + 1), s / s[0], color="C0", alpha=0.25, lw=0.8)
    energy = float(spectrum.get("energy", 0.9))
    label = f"median rank{energy:.0%} = {summary.median:g}"
    ax.axvline(summary.median, color="C1", lw=1.5, label=label)
    if summary.random_median is not None:
        label = f"random-matrix reference = {summary.random_median:g}"
        ax.axvline(summary.random_median, color="0.4", ls="--", lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index i")
    ax.set_ylabel("s_i / s_0 of ΔW")
    unchanged = final.get("n_unchanged")
    title = (
        f"Spectra of ΔW after stage {final['stage']} ({final['task']}), "
        f"{summary.n_matrices} matrices" + (f", {unchanged} unchanged" if unchanged else "")
    )
    ax.set_title(_t(title), fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


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
    ax.set_xticks(x, [_t(label) for label, _ in entries], rotation=20 if len(entries) > 3 else 0)
    ax.set_ylabel("singular values for 90% of the energy of ΔW")
    ax.set_title("Effective rank of the weight update ΔW (error bars: quartiles)", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def hessian_figure(hessian: dict) -> bytes:
    """λ_max per module (hatched: not converged), λ_min where given, and the convergence."""
    results = hessian["results"]
    if not results:
        raise ValueError("no results")
    names = [_t(r["name"]) for r in results]
    fig = Figure(figsize=(10, 1.6 + 0.32 * len(results)), layout="constrained")
    ax_bar, ax_conv = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(results))
    lmax = np.array([float(r["lambda_max"]) for r in results])
    # One colour per module, the same in both panels.
    colors = [f"C{k % 10}" for k in range(len(results))]
    bars = ax_bar.barh(y, lmax, color=colors, label="λ_max")
    for bar, r in zip(bars, results):
        if not r.get("converged", True):
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    lmin = [(k, r["lambda_min"]) for k, r in enumerate(results) if r.get("lambda_min") is not None]
    if lmin:
        ks, vs = zip(*lmin)
        ax_bar.plot(vs, ks, "k|", markersize=10, label="λ_min")
    ax_bar.set_yticks(y, names, fontsize=7)
    ax_bar.invert_yaxis()
    ax_bar.axvline(0, color="0.5", lw=0.8)
    ax_bar.set_xlabel("Hessian eigenvalue")
    ax_bar.legend(fontsize=8)
    for k, r in enumerate(results):
        history = np.asarray(r.get("history") or [], float)
        if history.size:
            ax_conv.plot(np.arange(1, history.size + 1), history, color=f"C{k % 10}", lw=1)
    ax_conv.set_xlabel("iteration")
    ax_conv.set_ylabel("λ_max estimate")
    ax_conv.set_title("Convergence", fontsize=10)
    stage = int(hessian["stage"])
    when = "of the base model (stage 0)" if stage == 0 else f"after stage {stage}"
    title = (
        f"Hessian {when}, loss of {hessian['task']}, group {hessian['group']}, "
        f"{hessian['method']}, {hessian['n_examples']} examples"
    )
    fig.suptitle(_t(title), fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Language models: the probes (source side), curves during training, output diversity
# --------------------------------------------------------------------------------------------

NLL_SIGN = "−ΔNLL: up = NLL fell, down = NLL rose"


def all_accuracy(summary: dict) -> bool:
    """Whether every task is scored by accuracy (encoder runs write no `metrics` at all)."""
    return all(m == "accuracy" for m in summary.get("metrics") or ["accuracy"])


def probe_sources(summary: dict) -> list[bool]:
    """Which probes show what the base model could do, so that a drop is forgetting: the run's
    own `probe_source` where metrics.json has it; otherwise (as the runner decides) a probe the
    base model passed above chance, every neg_nll probe, and a probe without a chance level
    (exact match, pass@1) that the base model scores above 0."""
    probes = summary.get("probes") or []
    given = summary.get("probe_source")
    if isinstance(given, list) and len(given) == len(probes):
        return [bool(x) for x in given]
    above = summary.get("probe_base_above_chance") or [None] * len(probes)
    metrics = summary.get("probe_metrics") or [None] * len(probes)
    base = np.asarray(summary["probe_matrix"], float)[0]
    return [
        bool(a) if a is not None else (m == "neg_nll" or bool(base[k] > 0))
        for k, (a, m) in enumerate(zip(above, metrics))
    ]


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
    R = np.asarray(summary["accuracy_matrix"], float)
    T = R.shape[1]
    gain = float(np.mean([R[j + 1, j] for j in range(T)] - floors(summary)))
    if not summary.get("probes"):
        return gain, None
    used = [c for c, keep in zip(probe_changes(summary), probe_sources(summary)) if keep]
    return gain, (-float(np.mean(used)) if used else None)


def source_target_figure(points: list[tuple[str, float, float | None]]) -> bytes:
    """One point per run: source loss (x, lower is better) against target gain (y)."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    shown = [(label, gain, loss) for label, gain, loss in points if loss is not None]
    flags = pareto_frontier([(loss, gain) for _, gain, loss in shown])
    for k, ((label, gain, loss), best) in enumerate(zip(shown, flags)):
        ax.plot(loss, gain, "*" if best else "o", markersize=14 if best else 8, color=f"C{k % 10}")
        ax.annotate(_t(label), (loss, gain), xytext=(6, 6), textcoords="offset points")
    front = sorted((loss, gain) for (_, gain, loss), best in zip(shown, flags) if best)
    if front:
        xs, ys = zip(*front)
        ax.plot(xs, ys, "--", color="0.3", lw=1.2, label="Pareto frontier (★)", zorder=0)
        ax.legend(loc="lower right")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.margins(0.2)  # room for the labels right of the points
    ax.set_xlabel("source loss: −mean probe change, final − base (lower is better)")
    ax.set_ylabel("target gain: mean R[j][j] − floor_j (higher is better)")
    ax.set_title("Learns less, forgets less? Target gain vs source loss")
    missing = [label for label, _, loss in points if loss is None]
    if missing:
        note = "not plotted, no probe the base model could do: " + ", ".join(missing)
        fig.supxlabel(_t(note), fontsize=8, color="0.35")
    if not shown:
        ax.text(0.5, 0.5, "no run has a source loss", ha="center", transform=ax.transAxes)
    return _png(fig)


def _probe_label(name: str, metric: object, above: object, source: bool) -> str:
    what = NLL_SIGN if metric == "neg_nll" else str(metric)
    note = ", base at chance: noise" if above is False else ""
    if above is None and not source:  # exact match, pass@1 at 0: nothing to lose
        note = ", base scores 0: nothing to lose"
    return _t(f"{name} ({what}{note})")


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
    ax.set_xticks(x, ["base"] + [_t(f"after {t}") for t in tasks[: P.shape[0] - 1]])
    ax.set_ylabel("score − base score (below 0 = lost)")
    ax.set_title(
        "Probes (never trained): change from the base model\n"
        "filled: the base model could do it (can show forgetting); hollow: it could not",
        fontsize=10,
    )
    ax.margins(x=0.08)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    return _png(fig)


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
        ax.plot(curves.x, curves.Y[:, k], style, marker=".", color=f"C{k % 10}", label=_t(label))
    start = 0.0
    for end, task in zip(curves.ends, summary["tasks"]):
        ax.axvline(end, color="0.6", lw=0.8)
        ax.text((start + end) / 2, 1.0, _t(task), transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="0.3")  # fmt: skip
        start = end
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlim(0, max(curves.ends[-1] if curves.ends else 1.0, 1.0))
    ax.set_xlabel("training step, cumulative over stages (grey lines: stage ends)")
    ax.set_ylabel("score − base score (−ΔNLL for NLL scores)")
    seeds = f"mean over {curves.n_seeds} seeds" if curves.n_seeds > 1 else "one seed"
    ax.set_title(f"Learning and forgetting during training ({seeds})", fontsize=10, pad=16)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


DIVERSITY_BARS = (
    ("distinct-1", lambda r, k: r["distinct_1"]),
    ("distinct-2", lambda r, k: r["distinct_2"]),
    ("self-BLEU / 100", lambda r, k: r["self_bleu"] / 100),
    ("distinct answers / k", lambda r, k: r["distinct_answers"] / k),
)


def diversity_figure(data: dict) -> bytes:
    """Grouped bars per diversity measure: the base model and after each stage in the file."""
    rows = data["rows"]
    if not rows:
        raise NothingToDraw("no rows")
    k = float(data["k"])
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(DIVERSITY_BARS))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [_bar(get, row, k) for _, get in DIVERSITY_BARS]
        label = str(row.get("label") or f"stage {row.get('stage')}")
        words, empty = row.get("mean_words"), row.get("empty_samples")
        if isinstance(words, (int, float)) and isinstance(empty, (int, float)):
            label += f" ({words:.1f} words, {empty:.0%} empty)"  # low self-BLEU from empties?
        offset = (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, color=f"C{i % 10}", label=_t(label))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [name for name, _ in DIVERSITY_BARS])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction")
    ax.text(0.01, 0.98, "distinct: higher = more diverse; self-BLEU: higher = less diverse",
            transform=ax.transAxes, va="top", fontsize=7, color="0.35")  # fmt: skip
    title = (
        f"Output diversity on {data.get('task')}: {data.get('n_prompts')} prompts × "
        f"{data.get('k')} samples, temperature {data.get('temperature')}"
    )
    ax.set_title(_t(title), fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def _bar(get, row: dict, k: float) -> float:
    try:
        return float(get(row, k))
    except TypeError:  # a null measure: no bar
        return float("nan")
