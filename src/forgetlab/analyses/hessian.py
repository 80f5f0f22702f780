"""`forgetlab hessian`: the largest Hessian eigenvalue of the training loss, over a parameter
group, at init or after any saved stage: Lanczos (or power iteration) on Hessian-vector
products.

λ_max bounds the stable learning rate of gradient descent (lr < 2/λ_max), which is why it
predicts how the best learning rate shifts between LoRA variants (study 4). The loss is the
mean over `examples` training examples of the task trained at that stage (stage 0: the first
task), dropout off; attention runs eagerly because fused kernels have no double backward.
"""

from __future__ import annotations

import numpy as np

from forgetlab.analyses.model_hessian import largest_eigenvalue, parameter_groups
from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spec import AnalysisFigure, CliOption, FigureContext
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS
from forgetlab.plotting import literal, new_figure, png

NAME = "hessian"
FLAG = None  # not a `forgetlab analyze` flag: the Hessian has its own command
REPORT_ORDER = 4
FILES = "hessian-*.json"  # one result per stage and group (see `cache_name`)
METHODS = ("lanczos", "power")
DEFAULTS = {
    "stage": 0,
    "task": None,  # default: the task trained in the next stage (stage 0 → the first task)
    "group": "trainable",
    "examples": 32,
    "batch_size": 16,
    "method": "lanczos",
    "iters": 20,
    "tol": 1e-3,
}
CLI = (  # the options of `forgetlab hessian`
    CliOption("--stage", "stage", int, "0 = before training (default), k = after stage k"),
    CliOption("--task", "task", help="whose training loss (default: the next stage's task)"),
    CliOption(
        "--group",
        "group",
        help="trainable (default) | modules | layers | a regex over parameter names",
    ),
    CliOption("--examples", "examples", int, "training examples in the loss (default 32)"),
    CliOption("--batch-size", "batch_size", int),
    CliOption("--method", "method", choices=METHODS),
    CliOption("--iters", "iters", int, "Krylov / power iterations (default 20)"),
    CliOption("--tol", "tol", float, "relative change that counts as converged"),
)


def cache_name(params: dict) -> str:
    group = "".join(c if c.isalnum() else "_" for c in params["group"])[:40]
    return f"hessian-stage{params['stage']}-{group}"


def owns_file(stem: str) -> bool:
    """Whether analyses/<stem>.json may hold a Hessian result."""
    return stem.startswith("hessian")


def _task(run: OpenRun, params: dict):
    name = params["task"] or run.tasks[min(params["stage"], len(run.tasks) - 1)].name
    by_name = {t.name: t for t in [*run.tasks, *run.sources]}
    if name not in by_name:
        raise ForgetlabError(f"task {name!r} is not a task of this run ({', '.join(by_name)})")
    return by_name[name]


def _own_task_only(model, groups: dict, task: str) -> dict:
    """Drop other tasks' heads: the loss of `task` does not depend on them (their Hessian
    block is zero), and a group made only of them has no eigenvalue to report."""
    own = f"heads.{model.head_name(task)}."
    kept = {
        name: [(n, p) for n, p in named if not n.startswith("heads.") or n.startswith(own)]
        for name, named in groups.items()
    }
    return {name: named for name, named in kept.items() if named}


def check(run: OpenRun, seed: int, params: dict) -> None:
    if params["method"] not in METHODS:
        raise ForgetlabError(f"method must be one of {', '.join(METHODS)}")
    if params["examples"] < 1 or params["iters"] < 1:
        raise ForgetlabError("examples and iters must be >= 1")
    _task(run, params)
    run.require_checkpoints(seed, [params["stage"]], "the Hessian")


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    return eigenvalues(run, run.model_at(seed, params["stage"], eager=True), seed, params)


def eigenvalues(run: OpenRun, model, seed: int, params: dict) -> dict:
    """`compute` on a model given (built with eager attention), e.g. one trained a few steps
    further than any saved stage: params' `stage` only picks the task whose loss is used."""
    task = _task(run, params)
    batches = run.probe_batches(task, params["examples"], params["batch_size"], "train", seed)
    loss = KINDS[task.kind].loss
    groups = _own_task_only(model, parameter_groups(model, params["group"]), task.name)
    results = []
    for name, named in groups.items():
        eig = largest_eigenvalue(
            model,
            lambda m, b: loss(m, task.name, b),
            batches,
            [p for _, p in named],
            method=params["method"],
            iters=params["iters"],
            tol=params["tol"],
            seed=seed,
        )
        results.append(
            {"name": name, "n_params": sum(p.numel() for _, p in named), **eig.to_dict()}
        )
        results[-1]["lambda_max"] = results[-1].pop("value")
        results[-1]["lambda_min"] = results[-1].pop("min_value", None)
    return {
        "seed": seed,
        "stage": params["stage"],
        "task": task.name,
        "group": params["group"],
        "method": params["method"],
        "n_examples": sum(len(b["labels"]) for b in batches),
        "results": results,
    }


def format_text(r: dict) -> list[str]:
    lines = [
        f"Largest Hessian eigenvalue ({r['method']}, stage {r['stage']}, task {r['task']}, "
        f"{r['n_examples']} examples, group {r['group']}):"
    ]
    for x in r["results"]:
        low = "" if x.get("lambda_min") is None else f"  λ_min {x['lambda_min']:.4g}"
        state = "converged" if x["converged"] else "NOT converged"
        lines.append(
            f"  {x['name']:<48} λ_max {x['lambda_max']:.4g}{low}  "
            f"({x['n_params']} params, {x['iterations']} iters, {state})"
        )
    return lines


def figure(data: dict, about: FigureContext) -> AnalysisFigure:
    return AnalysisFigure(
        f"Largest Hessian eigenvalue per module of run {about.run_name} ({about.stem})",
        f"Largest Hessian eigenvalue λ_max per module (hatched: not converged; tick: λ_min) from "
        f"{data.get('method')} iterations, and their convergence (analyses/{about.stem}.json).",
        draw(data),
    )


def draw(hessian: dict) -> bytes:
    """λ_max per module (hatched: not converged), λ_min where given, and the convergence."""
    results = hessian["results"]
    if not results:
        raise ValueError("no results")
    names = [literal(r["name"]) for r in results]
    fig = new_figure(figsize=(10, 1.6 + 0.32 * len(results)), layout="constrained")
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
    fig.suptitle(literal(title), fontsize=10)
    return png(fig)
