"""Summarise: a seed's metrics.json from its score matrix (continual-learning metrics,
learned flags, probe summaries), and the run's metrics.json over every seed (mean ± std ±
95% CI). Pure functions of the rows: nothing here trains or reads a file."""

from __future__ import annotations

import dataclasses

import numpy as np

from forgetlab.config import Config
from forgetlab.metrics import (
    aggregate_metrics,
    continual_metrics,
    learning_flags,
    matrix_csv_text,
    probe_is_source,
)
from forgetlab.recipe.guard import crossings
from forgetlab.recipe.prepare import PreparedTask
from forgetlab.version import __version__

# Scores that are fractions in [0, 1] (a matrix of only these is range-checked).
BOUNDED_METRICS = ("accuracy", "exact_match", "pass@1")


def _without_per_example(row: list[dict]) -> list[dict]:
    return [{k: v for k, v in cell.items() if k != "per_example"} for cell in row]


def seed_metrics(
    config: Config, tasks: list[PreparedTask], state: dict, probes: list[PreparedTask] = ()
) -> dict:
    """metrics.json of one seed: the score matrix (accuracy for classification), CL metrics,
    learning flags, and the probes' scores after every stage."""
    T = len(tasks)
    rows = state["rows"]
    R = [[cell["score"] for cell in row[:T]] for row in rows]
    majority = [t.majority for t in tasks]
    n_eval = [len(t.eval) for t in tasks]
    out = {
        "version": __version__,
        "seed": state["seed"],
        "method": config.method["name"],
        "model": config.model.name,
        "heads": config.heads,
        "tasks": [t.name for t in tasks],
        "eval_splits": [t.data.eval_split for t in tasks],
        "row_labels": ["base"] + [f"after {t.name}" for t in tasks[: len(rows) - 1]],
        # R[stage][task]: each task's score (higher is better): accuracy for classification
        # and multiple choice, −NLL per token for instruction and text tasks (see `metrics`)
        "accuracy_matrix": R,
        "metrics": [rows[0][j].get("metric", "accuracy") for j in range(T)],
        "scores": [_without_per_example(row[:T]) for row in rows],
        "majority_baseline": majority,
        "n_eval": n_eval,
        "stages": state["stages"],
        # eval.every: {stage, step, total_steps, scores (tasks then probes)} during training
        "curves": state.get("curves", []),
        "complete": len(rows) == T + 1,
        "trainable_parameters": state.get("trainable_parameters"),
        "total_parameters": state.get("total_parameters"),
        "timing": timing(state),
    }
    if probes:
        out.update(probe_summary(probes, rows, T))
    if "guard" in state:
        # every check of the forgetting budget, and the stages it ended (recipe/guard.py)
        out["guard"] = state["guard"]
        out["guard_crossings"] = crossings(state["guard"])
    if out["complete"]:
        bounded = all(m in BOUNDED_METRICS for m in out["metrics"])
        out.update(continual_metrics(np.array(R), bounded=bounded))
        pairs = [
            (rows[0][j]["per_example"], rows[j + 1][j]["per_example"])
            if "per_example" in rows[0][j]
            else None
            for j in range(T)
        ]
        out["learning"] = learning_flags(
            R, majority, n_eval, alpha=config.eval.alpha, per_example=pairs
        )
    return out


def timing(state: dict) -> dict:
    """Seconds spent training and evaluating (base row, curve points, every stage's row), and
    evaluation's share of training time."""
    train_s = sum(s.get("train_s", s.get("wall_s", 0.0)) for s in state["stages"])
    eval_s = state.get("base_eval_s", 0.0) + sum(s.get("eval_s", 0.0) for s in state["stages"])
    return {"train_s": train_s, "eval_s": eval_s, "eval_share": eval_s / max(train_s, 1e-9)}


def seed_matrix_csv(metrics: dict) -> str:
    """accuracy_matrix.csv of one seed; the baseline rows let `forgetlab metrics` recompute
    the learned flags from the CSV."""
    majority = metrics["majority_baseline"]
    return matrix_csv_text(
        metrics["tasks"],
        metrics["accuracy_matrix"],
        metrics["row_labels"],
        # loss-based scores have no floor: their learned test needs the per-example losses
        majority_baseline=None if None in majority else majority,
        n_eval=metrics["n_eval"],
        bounded=all(m in BOUNDED_METRICS for m in metrics["metrics"]),
    )


def probe_summary(probes: list[PreparedTask], rows: list[list[dict]], T: int) -> dict:
    """The source side: each probe's score after every stage, its floor (chance), and whether
    the base model was above it at all — only a probe the base model passes can show
    forgetting."""
    P = [[cell["score"] for cell in row[T:]] for row in rows]
    base = rows[0][T:]
    source = [probe_is_source(c) for c in base]
    changes = [P[-1][k] - P[0][k] for k in range(len(probes))]
    used = [c for c, keep in zip(changes, source) if keep]
    return {
        "probes": [t.name for t in probes],
        "probe_metrics": [c.get("metric") for c in base],
        "probe_matrix": P,
        "probe_baseline": [t.majority for t in probes],
        "probe_scores": [_without_per_example(row[T:]) for row in rows],
        # base above chance (one-sided exact binomial, MC probes); None: no chance level
        "probe_base_above_chance": [
            (c["p_value"] < 0.05) if "p_value" in c else None for c in base
        ],
        "probe_change": changes,
        # the probes that count as "what the model could do before": MC probes the base model
        # passes above chance, every perplexity probe, generation probes it scores above 0
        "probe_source": source,
        # source loss = −mean change of those probes' scores (NLL rise, accuracy drop)
        "source_loss": -float(np.mean(used)) if used else None,
    }


def summarize(config: Config, tasks: list[PreparedTask], per_seed: dict[int, dict]) -> dict:
    """The run-level metrics.json: per-seed results and their mean ± std ± 95% CI."""
    complete = [m for m in per_seed.values() if m.get("complete")]
    matrices = np.array([m["accuracy_matrix"] for m in complete])
    learned = np.array([[f["learned"] for f in m["learning"]] for m in complete])
    return {
        "version": __version__,
        "name": config.name,
        "method": config.method["name"],
        "method_config": config.method,
        "regularizer": config.regularizer,
        "strategy": config.strategy,
        "model": config.model.name,
        "heads": config.heads,
        "lr": config.training.lr,
        "tasks": [t.name for t in tasks],
        "eval_splits": [t.data.eval_split for t in tasks],
        "seeds": sorted(per_seed),
        "majority_baseline": [t.majority for t in tasks],
        "n_eval": [len(t.eval) for t in tasks],
        "accuracy_matrix": matrices.mean(0).tolist(),
        "accuracy_matrix_std": matrices.std(0, ddof=1).tolist() if len(complete) > 1 else None,
        "metrics": complete[0].get("metrics") if complete else None,
        # per task: in how many seeds R[j][j] was significantly above the majority baseline
        "learned_seeds": learned.sum(0).astype(int).tolist(),
        "aggregate": aggregate_metrics(complete),
        **_probe_means(complete),
        **_guard_summary(config, per_seed),
        "per_seed": {str(s): m for s, m in per_seed.items()},
    }


def _probe_means(complete: list[dict]) -> dict:
    """The probes' score matrix averaged over seeds (their per-seed detail stays per seed)."""
    if not complete or "probes" not in complete[0]:
        return {}
    first = complete[0]
    P = np.array([m["probe_matrix"] for m in complete])
    return {
        "probes": first["probes"],
        "probe_metrics": first["probe_metrics"],
        "probe_baseline": first["probe_baseline"],
        "probe_base_above_chance": first["probe_base_above_chance"],
        "probe_matrix": P.mean(0).tolist(),
        "probe_change": (P[:, -1] - P[:, 0]).mean(0).tolist(),
        "probe_source": first["probe_source"],
    }


def _guard_summary(config: Config, per_seed: dict[int, dict]) -> dict:
    """The forgetting budget and the stages it ended, per seed: where, and the loss that
    crossed (each seed's metrics hold every check)."""
    if config.guard is None:
        return {}
    return {
        "guard": dataclasses.asdict(config.guard),
        "guard_crossings": [
            {"seed": s, **c} for s, m in per_seed.items() for c in m.get("guard_crossings", [])
        ],
    }
