"""Representation drift: linear CKA between the base model and the model after each stage,
layer by layer, on a fixed probe set drawn from every task's held-out split.

CKA = 1 means the layer's representation is unchanged up to rotation and scale; the reference
study saw full fine-tuning destabilise the last layers most, which the layer × stage map shows.
"""

from __future__ import annotations

from forgetlab.analyses.cka import linear_cka
from forgetlab.analyses.features import POOLINGS, layer_features, layer_names
from forgetlab.analyses.runs import OpenRun
from forgetlab.errors import ForgetlabError

NAME = "cka"
DEFAULTS = {"examples_per_task": 64, "pooling": "mean", "max_tokens": 2048, "batch_size": 32}


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
