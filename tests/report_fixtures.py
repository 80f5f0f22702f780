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


# --------------------------------------------------------------------------------------------
# A causal-LM run: −NLL scores, probes (one at chance, one −NLL), curves, diversity.json
# --------------------------------------------------------------------------------------------

LM_TASKS = ["gsm8k", "tinyshakespeare"]
LM_PROBES = ["bb_strategyqa", "arc_easy", "agnews_text"]
LM_PROBE_METRICS = ["accuracy", "accuracy", "neg_nll"]
LM_PROBE_CHANCE = [0.5, 0.25, None]
LM_PROBE_ABOVE = [False, True, None]  # bb_strategyqa: the base model is at chance
# Per seed: (task matrix (T+1)×T of −NLL, probe matrix (T+1)×P). Full FT gains more on the
# tasks and loses more on the probes; LoRA gains less and keeps more.
LM_MATRICES = {
    "full": {
        1: (
            [[-2.0, -3.0], [-1.5, -2.9], [-1.8, -2.2]],
            [[0.50, 0.40, -2.5], [0.52, 0.35, -2.7], [0.47, 0.30, -2.9]],
        ),
        2: (
            [[-2.0, -3.0], [-1.4, -2.95], [-1.9, -2.1]],
            [[0.50, 0.40, -2.5], [0.49, 0.36, -2.8], [0.50, 0.28, -3.0]],
        ),
    },
    "lora": {
        1: (
            [[-2.0, -3.0], [-1.8, -2.95], [-1.85, -2.6]],
            [[0.50, 0.40, -2.5], [0.50, 0.39, -2.55], [0.51, 0.38, -2.6]],
        ),
    },
}
LM_STEPS = [10, 20]  # optimizer steps per stage
CURVE_EVERY = 5


def _lm_curves(rows: list[list[float]], seed: int) -> list[dict]:
    """eval.every = 5: points inside each stage (not at its end, which is the matrix row),
    moving from row k−1 towards row k."""
    curves = []
    for k, total in enumerate(LM_STEPS, start=1):
        for step in range(CURVE_EVERY, total, CURVE_EVERY):
            f = step / total
            scores = [
                round(a + f * (b - a) + 0.01 * math.sin(step + seed + i), 4)
                for i, (a, b) in enumerate(zip(rows[k - 1], rows[k]))
            ]
            curves.append({"stage": k, "step": step, "total_steps": total, "scores": scores})
    return curves


def _lm_seed(seed: int, method: str, R: list, P: list, curves: bool) -> dict:
    cont = continual_metrics(R, bounded=False)
    rows = [r + p for r, p in zip(R, P)]
    return {
        "version": forgetlab.__version__,
        "seed": seed,
        "method": method,
        "model": "tiny-llama",
        "heads": "per_task",
        "tasks": LM_TASKS,
        "row_labels": ["base"] + [f"after {t}" for t in LM_TASKS],
        "accuracy_matrix": R,
        "metrics": ["neg_nll"] * len(LM_TASKS),
        "scores": [[{"score": v, "metric": "neg_nll", "nll": -v, "n": 8} for v in r] for r in R],
        "majority_baseline": [None] * len(LM_TASKS),
        "n_eval": [8, 57],
        "stages": [
            {
                "task": t,
                "steps": steps,
                "examples": 8 * steps,
                "tokens": 512 * steps,
                "first_loss": 3.0,
                "final_loss": 2.0,
                "loss_curve": _loss_curve(steps, 3.0 - 0.3 * i, 0.0, seed),
            }
            for i, (t, steps) in enumerate(zip(LM_TASKS, LM_STEPS))
        ],
        "curves": _lm_curves(rows, seed) if curves else [],
        "complete": True,
        "probes": LM_PROBES,
        "probe_metrics": LM_PROBE_METRICS,
        "probe_matrix": P,
        "probe_baseline": LM_PROBE_CHANCE,
        "probe_base_above_chance": LM_PROBE_ABOVE,
        "probe_change": [P[-1][k] - P[0][k] for k in range(len(LM_PROBES))],
        **cont,
        "learning": [
            {"task": j + 1, "learned": True, "test": "one-sided paired t-test", "p_value": 0.001}
            for j in range(len(LM_TASKS))
        ],
    }


def _mean(matrices: list[list[list[float]]]) -> list[list[float]]:
    return [[sum(col) / len(col) for col in zip(*rows)] for rows in zip(*matrices)]


DIVERSITY = {
    "analysis": "diversity",
    "seed": 1,
    "task": "gsm8k",
    "n_prompts": 16,
    "k": 8,
    "temperature": 1.0,
    "rows": [
        {"stage": 0, "label": "base", "distinct_1": 0.62, "distinct_2": 0.85,
         "self_bleu": 24.0, "distinct_answers": 6.5},
        {"stage": 2, "label": "after tinyshakespeare", "distinct_1": 0.41, "distinct_2": 0.6,
         "self_bleu": 48.0, "distinct_answers": 3.0},
    ],
}  # fmt: skip


def write_lm_run(
    run_dir: Path, name: str, method: str = "full", curves: bool = True, diversity: bool = True
) -> Path:
    """A synthetic causal-LM run directory (the metrics.json keys a decoder run writes).
    The full run also writes `probe_source` (as the runner now does); LoRA leaves it out, as
    older runs did, so the report's own rule is used."""
    chosen = LM_MATRICES[method]
    per_seed = {s: _lm_seed(s, method, R, P, curves) for s, (R, P) in chosen.items()}
    seeds = sorted(per_seed)
    R = _mean([per_seed[s]["accuracy_matrix"] for s in seeds])
    P = _mean([per_seed[s]["probe_matrix"] for s in seeds])
    summary = {
        "version": forgetlab.__version__,
        "name": name,
        "method": method,
        "method_config": {"name": method},
        "regularizer": None,
        "model": "tiny-llama",
        "heads": "per_task",
        "lr": 1e-3,
        "tasks": LM_TASKS,
        "eval_splits": ["gsm8k/test.jsonl", "tinyshakespeare/input.txt"],
        "seeds": seeds,
        "majority_baseline": [None] * len(LM_TASKS),
        "n_eval": [8, 57],
        "accuracy_matrix": R,
        "accuracy_matrix_std": None,
        "metrics": ["neg_nll"] * len(LM_TASKS),
        "learned_seeds": [len(seeds)] * len(LM_TASKS),
        "aggregate": aggregate_metrics([per_seed[s] for s in seeds]),
        "probes": LM_PROBES,
        "probe_metrics": LM_PROBE_METRICS,
        "probe_baseline": LM_PROBE_CHANCE,
        "probe_base_above_chance": LM_PROBE_ABOVE,
        "probe_matrix": P,
        "probe_change": [P[-1][k] - P[0][k] for k in range(len(LM_PROBES))],
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }
    if method == "full":
        summary["probe_source"] = [False, True, True]
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"name": name, "model": {"name": "tiny-llama", "type": "causal"}, "seeds": seeds}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    if diversity:
        (run_dir / "analyses").mkdir(exist_ok=True)
        (run_dir / "analyses" / "diversity.json").write_text(json.dumps(DIVERSITY))
    return run_dir
