"""`forgetlab analyze --cka`, representation drift: linear CKA between the base model and the
model after each stage, layer by layer, on a fixed probe set drawn from every task's held-out
split.

CKA = 1 means the layer's representation is unchanged up to rotation and scale; the reference
study saw full fine-tuning destabilise the last layers most, which the layer × stage map shows.
"""

from __future__ import annotations

import numpy as np

from forgetlab.analyses.features import POOLINGS, layer_features, layer_names
from forgetlab.analyses.maths.cka import linear_cka
from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spec import AnalysisFigure, CliOption, FigureContext
from forgetlab.errors import ForgetlabError
from forgetlab.plotting import annotate, literal, new_figure, png

NAME = "cka"
FLAG = "representation drift per layer"  # help of `forgetlab analyze --cka`
REPORT_ORDER = 1
DEFAULTS = {"examples_per_task": 64, "pooling": "mean", "max_tokens": 2048, "batch_size": 32}
CLI = (
    CliOption("--examples", "examples_per_task", int, "probe examples per task"),
    CliOption("--pooling", "pooling", help="per example or token", choices=POOLINGS),
)


def check(run: OpenRun, seed: int, params: dict) -> None:
    if params["pooling"] not in POOLINGS:
        raise ForgetlabError(f"pooling must be one of {', '.join(POOLINGS)}")
    if params["examples_per_task"] < 2:
        raise ForgetlabError("examples_per_task must be at least 2 for CKA")
    run.require_checkpoints(seed, list(range(1, len(run.tasks) + 1)), "CKA drift")


def _features(run: OpenRun, seed: int, stage: int, batches: list[dict], params: dict):
    model = run.model_at(seed, stage)
    feats = layer_features(model, batches, params["pooling"], params["max_tokens"], seed)
    del model
    return feats


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    batches = [
        b
        for t in run.tasks
        for b in run.probe_batches(t, params["examples_per_task"], params["batch_size"])
    ]
    base = _features(run, seed, 0, batches, params)
    # The debiased estimator needs n >= 4 and an n × n Gram: fine for the capped probe set.
    debias = len(base[0]) >= 4
    cka, cka_debiased = [], []
    for stage in range(1, len(run.tasks) + 1):
        feats = _features(run, seed, stage, batches, params)
        cka.append([linear_cka(b, f) for b, f in zip(base, feats)])
        cka_debiased.append(
            [linear_cka(b, f, debiased=True) if debias else None for b, f in zip(base, feats)]
        )
    return {
        "seed": seed,
        "pooling": params["pooling"],
        "n_examples": len(base[0]),
        "probe_tasks": run.task_names,
        "layers": layer_names(len(base)),
        "stages": [f"after {t}" for t in run.task_names],
        "cka": cka,
        "cka_debiased": cka_debiased,
    }


def format_text(r: dict) -> list[str]:
    width = max(10, *(len(s) + 2 for s in r["stages"]))
    lines = [
        f"CKA with the base model, per layer ({r['pooling']} pooling, {r['n_examples']} probe "
        f"rows from {', '.join(r['probe_tasks'])}; 1 = unchanged):",
        f"{'layer':<12}" + "".join(f"{s:>{width}}" for s in r["stages"]),
    ]
    for i, layer in enumerate(r["layers"]):
        lines.append(f"{layer:<12}" + "".join(f"{row[i]:>{width}.3f}" for row in r["cka"]))
    return lines


def figure(data: dict, about: FigureContext) -> AnalysisFigure:
    return AnalysisFigure(
        f"CKA between the base model and run {about.run_name} after each stage, per layer",
        f"Linear CKA of each layer's representations to the base model ({data.get('pooling')} "
        f"pooling, {data.get('n_examples')} examples, seed {data.get('seed')}). Left: 1 = "
        "unchanged, fixed 0–1 scale. Right: 1 − CKA per layer, one line per stage.",
        draw(data),
    )


def draw(cka: dict) -> bytes:
    """Layer × stage heatmap of CKA to the base model (fixed 0..1) and 1 − CKA per layer."""
    M = np.asarray(cka["cka"], float)  # stages × layers
    layers, stages = [literal(x) for x in cka["layers"]], [literal(x) for x in cka["stages"]]
    if M.shape != (len(stages), len(layers)):
        raise ValueError(f"cka is {M.shape}, expected {len(stages)} stages × {len(layers)} layers")
    debiased = cka.get("cka_debiased")
    fig = new_figure(
        figsize=(5 + 0.9 * len(stages) + 0.35 * len(layers), 4.8), layout="constrained"
    )
    ax_heat, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(stages) + 1.5, 4]})
    im = ax_heat.imshow(M.T, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    annotate(ax_heat, M.T, ".3f", M.T < 0.5)  # 3 digits: small drifts (0.998) still show
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
    return png(fig)
