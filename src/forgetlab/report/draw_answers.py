"""The Answers section's figures, as PNG bytes, drawn from `forgetlab.answers.answers()`'s
dict: the metric against the learning rate per method (95% CI bands, log x axis), and the
learning–forgetting frontier (every point labelled by its settings, the non-dominated set as
a step line, one marker per method)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from forgetlab.plotting import literal, png

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")


def _positive_numbers(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)


def rate_curves_figure(result: dict[str, Any]) -> bytes | None:
    """The best-setting metric against `best.rate_key` per method: mean over seeds with its
    95% CI band, the best value starred. None where no method swept the rate (no curve)."""
    best = result["best"]
    drawn = [
        r
        for r in best["rows"]
        if r["curve"] and _positive_numbers([c["value"] for c in r["curve"]])
    ]
    if not drawn:
        return None
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for k, row in enumerate(best["rows"]):
        if row not in drawn:
            continue
        color = f"C{k % 10}"
        x = np.array([c["value"] for c in row["curve"]], float)
        mean = np.array([c["mean"] for c in row["curve"]], float)
        ci = np.array([c["ci95"] or 0.0 for c in row["curve"]], float)
        marker = MARKERS[k % len(MARKERS)]
        ax.plot(x, mean, "-", marker=marker, color=color, label=literal(row["method"]))
        if np.any(ci > 0):
            ax.fill_between(x, mean - ci, mean + ci, color=color, alpha=0.2, lw=0)
        at = [i for i, c in enumerate(row["curve"]) if c["run"] == row["run"]]
        if at:
            ax.plot(x[at], mean[at], "*", color=color, markersize=15, mec="black", zorder=3)
    ax.set_xscale("log")
    metric = result[best["metric"]]  # the learning or forgetting metric's name
    better = "higher" if best["metric"] == "learning" else "lower"
    ax.set_xlabel(f"{literal(best['rate_key'])} (log scale)")
    ax.set_ylabel(f"{best['metric']}: {metric} ({better} is better)")
    ax.set_title(
        f"{metric} vs {literal(best['rate_key'])} per method (band: 95% CI over seeds; ★ best)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    missing = [r["method"] for r in best["rows"] if r not in drawn]
    if missing:
        note = f"not drawn, {best['rate_key']} not swept: " + ", ".join(missing)
        fig.supxlabel(literal(note), fontsize=8, color="0.35")
    return png(fig)


def _step(ax, front: list[tuple[float, float]]) -> None:
    """The non-dominated set as a staircase: at forgetting ≥ f, learning up to that point's."""
    if not front:
        return
    xs, ys = zip(*sorted(front))
    ax.step(xs, ys, where="post", color="0.25", ls="--", lw=1.2, zorder=1,
            label="non-dominated (all methods)")  # fmt: skip


def frontier_figure(result: dict[str, Any]) -> bytes:
    """Every point as (forgetting, learning) means with 95% CI error bars, labelled by its
    settings; one marker and colour per method; points on the overall frontier outlined, the
    frontier drawn as a step line; the hypervolume reference point marked."""
    frontier = result["frontier"]
    ci = {p["run"]: (p["learning"]["ci95"], p["forgetting"]["ci95"]) for p in result["points"]}
    methods = list(dict.fromkeys(p["method"] for p in frontier["points"]))
    fig = Figure(figsize=(8.5, 5.8), layout="constrained")
    ax = fig.subplots()
    for p in frontier["points"]:
        k = methods.index(p["method"])
        learning_ci, forgetting_ci = ci.get(p["run"], (None, None))
        ax.errorbar(
            p["forgetting"],
            p["learning"],
            xerr=forgetting_ci or None,
            yerr=learning_ci or None,
            fmt=MARKERS[k % len(MARKERS)],
            color=f"C{k % 10}",
            markersize=10 if p["frontier"] else 7,
            mec="black" if p["frontier"] else f"C{k % 10}",
            mew=1.5 if p["frontier"] else 1.0,
            capsize=2,
            zorder=2,
        )
        ax.annotate(literal(p["label"]), (p["forgetting"], p["learning"]), xytext=(5, 5),
                    textcoords="offset points", fontsize=7)  # fmt: skip
    for k, method in enumerate(methods):  # legend entries: one per method
        ax.plot([], [], MARKERS[k % len(MARKERS)], color=f"C{k % 10}", label=literal(method))
    _step(ax, [(p["forgetting"], p["learning"]) for p in frontier["points"] if p["frontier"]])
    ref = frontier["reference_point"]
    ax.plot(ref["forgetting"], ref["learning"], "x", color="0.45", markersize=9, mew=2,
            label="hypervolume reference point")  # fmt: skip
    ax.margins(0.15)  # room for the labels right of the points
    ax.set_xlabel(f"forgetting: {result['forgetting']} (mean over seeds; lower is better)")
    ax.set_ylabel(f"learning: {result['learning']} (mean over seeds; higher is better)")
    ax.set_title(
        "Learning–forgetting frontier (outlined: non-dominated; error bars: 95% CI)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="best")
    return png(fig)
