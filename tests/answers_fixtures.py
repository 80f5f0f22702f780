"""Synthetic finished run directories for the answers tests: the real metrics.json and
config.yaml shapes, no training, each seed's learning and forgetting given by the test.

A seed with (learning L, forgetting F) on two tasks gets the accuracy matrix
    base      [0.50, 0.50]
    after 1   [L,    0.50]
    after 2   [L−F,  L   ]
so that initial_acc = L and avg_forgetting = F; the other per-seed metrics come from
forgetlab.metrics as in a real run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import forgetlab
from forgetlab.atomic import atomic_write_json
from forgetlab.metrics import aggregate_metrics, continual_metrics

TASKS = ["rte", "sst2"]
MAJORITY = [0.52, 0.51]


def seed_matrix(learning: float, forgetting: float) -> list[list[float]]:
    return [[0.5, 0.5], [learning, 0.5], [learning - forgetting, learning]]


def write_run(
    root: Path,
    name: str,
    method: str,
    seeds: dict[int, tuple[float, float]],
    lr: float = 1e-3,
    method_config: dict[str, Any] | None = None,
    regularizer: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    tasks: list[str] | None = None,
    source_loss: dict[int, float] | None = None,
    config: bool = True,
) -> Path:
    """A finished run at root/name; `seeds` maps seed -> (learning, forgetting)."""
    tasks = tasks or TASKS
    run = root / name
    run.mkdir(parents=True)
    per_seed = {}
    for seed, (learn, forget) in seeds.items():
        R = seed_matrix(learn, forget)
        per_seed[seed] = {
            "version": forgetlab.__version__,
            "seed": seed,
            "method": method,
            "tasks": tasks,
            "accuracy_matrix": R,
            "majority_baseline": MAJORITY,
            "complete": True,
            "source_loss": (source_loss or {}).get(seed),
            **{k: v for k, v in continual_metrics(R).items() if k != "per_task"},
        }
    ordered = [per_seed[s] for s in seeds]
    mean = [
        [sum(m["accuracy_matrix"][i][j] for m in ordered) / len(ordered) for j in range(2)]
        for i in range(3)
    ]
    method_block = {"name": method, **(method_config or {})}
    summary = {
        "version": forgetlab.__version__,
        "name": name,
        "method": method,
        "method_config": method_block,
        "regularizer": regularizer,
        "model": "packaged:minilm",
        "lr": lr,
        "tasks": tasks,
        "seeds": list(seeds),
        "majority_baseline": MAJORITY,
        "accuracy_matrix": mean,
        "learned_seeds": [len(seeds)] * len(tasks),
        "aggregate": aggregate_metrics(ordered),
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }
    atomic_write_json(run / "metrics.json", summary)
    if config:
        resolved = {
            "name": name,
            "tasks": [{"name": t} for t in tasks],
            "model": {"name": "packaged:minilm", "max_length": 48},
            "method": method_block,
            "regularizer": regularizer,
            "training": {"lr": lr, "epochs": 2.0, "batch_size": 16, **(training or {})},
            "output": {"dir": str(run)},
            "seeds": list(seeds),
        }
        (run / "config.yaml").write_text(yaml.safe_dump(resolved), encoding="utf-8")
    return run


def same_seeds(learning: float, forgetting: float, n: int = 3) -> dict[int, tuple[float, float]]:
    """n seeds with the same values (a point without spread)."""
    return {s: (learning, forgetting) for s in range(1, n + 1)}
