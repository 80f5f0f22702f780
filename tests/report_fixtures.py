"""Synthetic run directories for the report tests: the real metrics.json format, no training.

Accuracy matrices and analysis values are hand-written; the derived fields (forgetting, the
learned test, seed aggregates) come from forgetlab.metrics so that they match what a real
run writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

import forgetlab
from forgetlab.metrics import aggregate_metrics, continual_metrics, learning_flags

TASKS = ["rte", "sst2", "mrpc"]
MAJORITY = [0.52, 0.51, 0.68]
N_EVAL = [200, 200, 200]

# Per seed: (T+1)×T matrices, row 0 = base model. Full FT learns most and forgets most;
# LoRA learns a little less and keeps more.
MATRICES = {
    "full": {
        1: [[0.50, 0.49, 0.66], [0.70, 0.60, 0.67], [0.58, 0.91, 0.70], [0.55, 0.85, 0.84]],
        2: [[0.50, 0.49, 0.66], [0.68, 0.62, 0.68], [0.60, 0.90, 0.69], [0.57, 0.86, 0.82]],
    },
    "lora": {
        1: [[0.50, 0.49, 0.66], [0.64, 0.55, 0.67], [0.62, 0.86, 0.69], [0.61, 0.85, 0.78]],
        2: [[0.50, 0.49, 0.66], [0.62, 0.54, 0.66], [0.61, 0.88, 0.68], [0.60, 0.86, 0.80]],
    },
    "freeze": {1: [[0.50, 0.49, 0.66], [0.51, 0.49, 0.66], [0.51, 0.52, 0.66], [0.51, 0.52, 0.67]]},
    "single": {1: [[0.50], [0.66]]},
}


def _loss_curve(steps: int, start: float, penalty: float, seed: int) -> list[list[float]]:
    return [
        [s, round(start * math.exp(-s / steps) + 0.05 * math.sin(s + seed), 4), penalty * s / steps]
        for s in range(1, steps + 1)
    ]


def _seed_metrics(seed: int, method: str, R: list[list[float]], tasks: list[str]) -> dict:
    T = len(tasks)
    penalty = 0.02 if method == "full" else 0.0
    cont = continual_metrics(R)
    return {
        "version": forgetlab.__version__,
        "seed": seed,
        "method": method,
        "model": "packaged:minilm",
        "heads": "per_task",
        "tasks": tasks,
        "row_labels": ["base"] + [f"after {t}" for t in tasks],
        "accuracy_matrix": R,
        "scores": [
            [{"accuracy": v, "mcc": v - 0.5, "n": N_EVAL[j]} for j, v in enumerate(r)] for r in R
        ],
        "majority_baseline": MAJORITY[:T],
        "n_eval": N_EVAL[:T],
        "stages": [
            {
                "task": t,
                "steps": 12,
                "examples": 192,
                "first_loss": 0.7,
                "final_loss": 0.3,
                "loss_curve": _loss_curve(12, 0.7 - 0.05 * i, penalty, seed),
            }
            for i, t in enumerate(tasks)
        ],
        "complete": True,
        "trainable_parameters": 75268 if method == "lora" else 22788484,
        "total_parameters": 22788484,
        **{k: v for k, v in cont.items()},
        "learning": learning_flags(R, MAJORITY[:T], N_EVAL[:T]),
    }


def _summary(name: str, method: str, matrices: dict[int, list[list[float]]], tasks: list[str]):
    per_seed = {s: _seed_metrics(s, method, R, tasks) for s, R in matrices.items()}
    stacked = [per_seed[s]["accuracy_matrix"] for s in sorted(per_seed)]
    learned = [
        sum(m["learning"][j]["learned"] for m in per_seed.values()) for j in range(len(tasks))
    ]
    mean = [[sum(col) / len(col) for col in zip(*rows)] for rows in zip(*stacked)]
    std = None
    if len(stacked) > 1:
        std = [
            [
                math.sqrt(sum((x - mu) ** 2 for x in col) / (len(col) - 1))
                for col, mu in zip(zip(*rows), mrow)
            ]
            for rows, mrow in zip(zip(*stacked), mean)
        ]
    return {
        "version": forgetlab.__version__,
        "name": name,
        "method": method,
        "method_config": {"name": method},
        "regularizer": {"name": "ewc", "lambda": 100.0} if method == "full" else None,
        "model": "packaged:minilm",
        "heads": "per_task",
        "lr": 1e-4 if method == "full" else 2e-3,
        "tasks": tasks,
        "eval_splits": [f"glue/{t}/dev.tsv" for t in tasks],
        "seeds": sorted(per_seed),
        "majority_baseline": MAJORITY[: len(tasks)],
        "n_eval": N_EVAL[: len(tasks)],
        "accuracy_matrix": mean,
        "accuracy_matrix_std": std,
        "learned_seeds": learned,
        "aggregate": aggregate_metrics([per_seed[s] for s in sorted(per_seed)]),
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }


LAYERS = ["embeddings"] + [f"layer {i}" for i in range(1, 7)]
MATRIX_NAMES = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.0.attention.self.value",
    "encoder.layer.5.attention.self.query",
    "encoder.layer.5.output.dense",
]


def _cka(tasks: list[str], drift: float) -> dict:
    # 1 = unchanged; later layers and later stages drift more.
    cka = [
        [round(max(0.0, 1.0 - drift * (s + 1) * (layer / 6) ** 2), 3) for layer in range(7)]
        for s in range(len(tasks))
    ]
    return {
        "analysis": "cka",
        "version": forgetlab.__version__,
        "params": {
            "examples_per_task": 64,
            "pooling": "mean",
            "max_tokens": 2048,
            "batch_size": 32,
        },
        "seed": 1,
        "pooling": "mean",
        "n_examples": 64,
        "probe_tasks": tasks,
        "layers": LAYERS,
        "stages": [f"after {t}" for t in tasks],
        "cka": cka,
        "cka_debiased": [[round(v - 0.02, 3) for v in row] for row in cka],
    }


def _similarity(tasks: list[str]) -> dict:
    return {
        "analysis": "similarity",
        "version": forgetlab.__version__,
        "params": {"examples_per_task": 64, "batch_size": 32},
        "seed": 1,
        "tasks": tasks,
        "layer": "last",
        "representation": [[1.0, 0.62, 0.71], [0.62, 1.0, 0.55], [0.71, 0.55, 1.0]],
        "gradient_cosine": [[1.0, -0.12, 0.31], [-0.12, 1.0, 0.05], [0.31, 0.05, 1.0]],
        "interference": [[0.19, 0.11, 0.015], [-0.1, 0.295, 0.02], [-0.03, -0.05, 0.135]],
        "forgetting": [0.13, 0.05, None],
    }


def _spectrum(tasks: list[str], rank90: int, knee: int) -> dict:
    def matrix(name: str, k: int) -> dict:
        # A power-law decay; `knee` > 0 drops everything after the first `knee` values to a
        # small floor, as an adapter of rank `knee` would.
        values = [
            round(10.0 / (1 + i) ** (0.3 + 0.1 * k) * (1 if not knee or i < knee else 0.03), 5)
            for i in range(48)
        ]
        return {
            "name": name,
            "shape": [384, 384],
            "frobenius": round(math.sqrt(sum(v * v for v in values)), 4),
            "spectral_norm": values[0],
            "stable_rank": round(sum(v * v for v in values) / values[0] ** 2, 3),
            "rank90": rank90 + k,
            "energy": 0.9,
            "random_rank90": 30,
            "numerical_rank": 48,
            "max_rank": 384,
            "singular_values": values,
        }

    return {
        "analysis": "spectrum",
        "version": forgetlab.__version__,
        "params": {"energy": 0.9},
        "seed": 1,
        "energy": 0.9,
        "stages": [
            {
                "stage": i + 1,
                "task": t,
                "n_unchanged": 2,
                "median_rank90": rank90 + 1.5,
                "median_random_rank90": 30.0,
                "matrices": [matrix(n, k) for k, n in enumerate(MATRIX_NAMES)],
            }
            for i, t in enumerate(tasks)
        ],
    }


def _hessian(stage: int, task: str, group: str, scale: float) -> dict:
    results = [
        {
            "name": name,
            "n_params": 147456,
            "lambda_max": scale * (k + 1),
            "lambda_min": -0.1 * scale if k % 2 == 0 else None,
            "history": [scale * (k + 1) * (1 - 0.5**i) for i in range(1, 9)],
            "converged": k != 3,
        }
        for k, name in enumerate(MATRIX_NAMES)
    ]
    return {
        "analysis": "hessian",
        "version": forgetlab.__version__,
        "params": {"stage": stage, "group": group, "method": "lanczos"},
        "seed": 1,
        "stage": stage,
        "task": task,
        "group": group,
        "method": "lanczos",
        "n_examples": 32,
        "results": results,
    }


ALL_ANALYSES = ("cka", "similarity", "spectrum", "hessian")


def write_run(
    run_dir: Path,
    name: str,
    method: str = "lora",
    analyses: tuple[str, ...] = (),
    matrices: str | None = None,
) -> Path:
    """Write a synthetic run directory (config.yaml, metrics.json, analyses/*.json)."""
    chosen = MATRICES[matrices or method]
    tasks = TASKS[: len(next(iter(chosen.values()))[0])]
    summary = _summary(name, method, chosen, tasks)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "tasks": [{"name": t, "type": "registry"} for t in tasks],
        "model": {"name": "packaged:minilm", "max_length": 64},
        "method": {"name": method},
        "training": {"lr": summary["lr"], "epochs": 2.0, "batch_size": 16},
        "seeds": summary["seeds"],
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    files = {
        "cka": {"cka.json": _cka(tasks, 0.25 if method == "full" else 0.08)},
        "similarity": {"similarity.json": _similarity(tasks)},
        "spectrum": {
            "spectrum.json": _spectrum(tasks, 20, 0) if method == "full" else _spectrum(tasks, 4, 8)
        },
        "hessian": {
            "hessian-stage3-encoder.json": _hessian(3, tasks[-1], "encoder", 12.0),
            "hessian-stage1-head.json": _hessian(1, tasks[0], "head", 3.0),
        },
    }
    if analyses:
        (run_dir / "analyses").mkdir(exist_ok=True)
    for kind in analyses:
        for file_name, data in files[kind].items():
            (run_dir / "analyses" / file_name).write_text(json.dumps(data))
    return run_dir


XSS_NAME = "<script>alert(1)</script>"


def write_runs(root: Path) -> list[Path]:
    """Four runs: full FT and LoRA with every analysis, a frozen one, a single-task XSS one."""
    return [
        write_run(root / "full", "full-ft", "full", ALL_ANALYSES),
        write_run(root / "lora", "lora-r8", "lora", ("cka", "spectrum")),
        write_run(root / "freeze", "frozen", "freeze"),
        write_run(root / "xss", XSS_NAME, "lora", matrices="single"),
    ]
