"""The largest Hessian eigenvalue of the training loss, over a parameter group, at init or
after any saved stage: Lanczos (or power iteration) on Hessian-vector products.

λ_max bounds the stable learning rate of gradient descent (lr < 2/λ_max), which is why it
predicts how the best learning rate shifts between LoRA variants (study 4). The loss is the
mean over `examples` training examples of the task trained at that stage (stage 0: the first
task), dropout off; attention runs eagerly because fused kernels have no double backward.
"""

from __future__ import annotations

from forgetlab.analyses.hessian import largest_eigenvalue, parameter_groups
from forgetlab.analyses.runs import OpenRun
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS

NAME = "hessian"
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


def cache_name(params: dict) -> str:
    group = "".join(c if c.isalnum() else "_" for c in params["group"])[:40]
    return f"hessian-stage{params['stage']}-{group}"


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
    task = _task(run, params)
    model = run.model_at(seed, params["stage"], eager=True)
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
